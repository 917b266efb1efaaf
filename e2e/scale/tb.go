package main

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// runTB lets the bed's testing.TB helpers run outside `go test`. Fatal panics with
// errFatal, which run turns back into an error; cleanups run (last first) in finish.
// Methods the bed does not call are left to the nil embedded TB and would panic.
type runTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	logf     func(format string, args ...any)
}

type errFatal struct{ msg string }

func newRunTB(logf func(string, ...any)) *runTB { return &runTB{logf: logf} }

// run calls fn and turns a Fatal inside it into an error.
func (t *runTB) run(fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(errFatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s", f.msg)
		}
	}()
	fn()
	return nil
}

// finish runs the registered cleanups once, last registered first.
func (t *runTB) finish() {
	t.mu.Lock()
	cs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.logf("cleanup: %v", r)
				}
			}()
			cs[i]()
		}()
	}
}

func (t *runTB) Helper()      {}
func (t *runTB) Name() string { return "scale" }

func (t *runTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *runTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *runTB) fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *runTB) Log(args ...any)                 { t.logf("%s", fmt.Sprint(args...)) }
func (t *runTB) Logf(format string, args ...any) { t.logf(format, args...) }
func (t *runTB) Error(args ...any)               { t.fail(); t.Log(args...) }
func (t *runTB) Errorf(format string, args ...any) {
	t.fail()
	t.logf(format, args...)
}
func (t *runTB) Fatal(args ...any) { t.fail(); panic(errFatal{fmt.Sprint(args...)}) }
func (t *runTB) Fatalf(format string, args ...any) {
	t.fail()
	panic(errFatal{fmt.Sprintf(format, args...)})
}
func (t *runTB) Skip(args ...any) { panic(errFatal{"skipped: " + fmt.Sprint(args...)}) }
func (t *runTB) Skipf(format string, args ...any) {
	panic(errFatal{"skipped: " + fmt.Sprintf(format, args...)})
}

func (t *runTB) TempDir() string {
	d, err := os.MkdirTemp("", "svp-scale-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (t *runTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	t.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}
