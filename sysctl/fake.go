package sysctl

import (
	"fmt"
	"sync"
)

// Fake is an in-memory Setter. Like the kernel it refuses to create keys:
// only keys it was given exist.
type Fake struct {
	mu       sync.Mutex
	values   map[string]string
	readOnly map[string]bool
	allRO    bool
	writes   []string
}

// NewFake returns a Fake holding a copy of values.
func NewFake(values map[string]string) *Fake {
	f := &Fake{values: map[string]string{}, readOnly: map[string]bool{}}
	for k, v := range values {
		f.values[k] = v
	}
	return f
}

// SetReadOnly makes Set of name fail with ErrReadOnly; name "" makes the
// whole tree read-only, like a read-only /proc/sys mount.
func (f *Fake) SetReadOnly(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "" {
		f.allRO = true
		return
	}
	f.readOnly[name] = true
}

func (f *Fake) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	if !ok {
		return "", fmt.Errorf("get sysctl %s: %w", name, ErrNotExist)
	}
	return v, nil
}

func (f *Fake) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.values[name]; !ok {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, ErrNotExist)
	}
	if f.allRO || f.readOnly[name] {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, ErrReadOnly)
	}
	f.values[name] = value
	f.writes = append(f.writes, name+"="+value)
	return nil
}

// Writes lists the successful Sets, "name=value", in order.
func (f *Fake) Writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.writes...)
}
