// Package sysctl reads and writes kernel parameters under /proc/sys.
//
// Names use slashes, as in "net/ipv4/ip_forward". Keys under net/ belong to
// the network namespace of the thread or process that opens them.
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

var (
	// ErrReadOnly: /proc/sys is mounted read-only (as in many containers),
	// the key is read-only, or we lack the privilege to write it.
	ErrReadOnly = errors.New("sysctl is read-only")
	// ErrNotExist: the kernel has no such key (module not loaded, feature
	// compiled out, or a typo).
	ErrNotExist = errors.New("sysctl does not exist")
)

// Setter gets and sets sysctls. Errors wrap ErrReadOnly or ErrNotExist when
// that is the cause, so callers can log and carry on.
type Setter interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// Proc is the real Setter over a procfs sysctl tree.
type Proc struct {
	root string
}

// New returns the Setter on /proc/sys.
func New() *Proc { return &Proc{root: "/proc/sys"} }

// NewAt returns a Setter rooted elsewhere, e.g. a copy of the tree in tests.
func NewAt(root string) *Proc { return &Proc{root: root} }

func (p *Proc) path(name string) (string, error) {
	clean := filepath.Clean("/" + name)
	if name == "" || clean != "/"+strings.Trim(name, "/") || clean == "/" {
		return "", fmt.Errorf("sysctl %q: invalid name", name)
	}
	return filepath.Join(p.root, clean), nil
}

// Get returns the value without the trailing newline.
func (p *Proc) Get(name string) (string, error) {
	path, err := p.path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("get sysctl %s: %w", name, classify(err))
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// Set writes value. It never creates a key.
func (p *Proc) Set(name, value string) error {
	path, err := p.path(name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, classify(err))
	}
	_, werr := f.WriteString(value + "\n")
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, classify(err))
	}
	return nil
}

// classify adds the sentinel matching err's errno, keeping err itself.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: %w", ErrNotExist, err)
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: %w", ErrReadOnly, err)
	}
	return err
}

// EnsureValue sets name to value unless it already has it, and reports
// whether it wrote, so the caller can log the change in its own words.
func EnsureValue(s Setter, name, value string) (bool, error) {
	cur, err := s.Get(name)
	if err != nil {
		return false, err
	}
	if strings.TrimSpace(cur) == value {
		return false, nil
	}
	if err := s.Set(name, value); err != nil {
		return false, err
	}
	return true, nil
}

// SetIfLower raises an integer sysctl to value and never lowers it, because
// an administrator may have set it higher on purpose (nf_conntrack_max).
func SetIfLower(s Setter, name string, value int) error {
	cur, err := s.Get(name)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(cur))
	if err != nil {
		return fmt.Errorf("sysctl %s: value %q is not an integer: %w", name, cur, err)
	}
	if n >= value {
		klog.V(2).InfoS("Sysctl already high enough", "name", name, "value", n, "want", value)
		return nil
	}
	if err := s.Set(name, strconv.Itoa(value)); err != nil {
		return err
	}
	klog.InfoS("Raised sysctl", "name", name, "old", n, "value", value)
	return nil
}
