package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// commandTB lets a command use the test bed, whose helpers take a testing.TB. It
// implements the methods the bed calls; the nil embedded interface makes any other
// method panic loudly instead of doing something quietly wrong.
//
// Fatal ends the run with a panic that runTB recovers; cleanups run in reverse order at
// the end, on failure, and on SIGINT/SIGTERM.
type commandTB struct {
	testing.TB

	mu          sync.Mutex
	cleanMu     sync.Mutex // held while cleanups run: a second caller waits for them
	cleanups    []func()
	closed      bool // cleanups ran or are running: later ones run at once
	failed      bool
	interrupted bool
	onInterrupt []func() // run first when an interrupt tears down
	tearingDown chan struct{}
	teardownOne sync.Once
	tempRoot    string
}

// fatalPanic is what FailNow panics with; runTB turns it into a failed run.
type fatalPanic struct{}

// interruptGrace is how long an interrupt waits for the run to stop at its next
// checkpoint before tearing down under its feet (a step may block, e.g. a VM boot).
const interruptGrace = 20 * time.Second

func newCommandTB() *commandTB { return &commandTB{tearingDown: make(chan struct{})} }

// OnInterrupt registers fn to run before the cleanups of an interrupted run. Ctrl-C
// in a terminal signals the whole process group, etcd too, and an apiserver without
// its etcd hangs every request for its full timeout: stopping it first makes the
// cleanups' API calls fail fast.
func (t *commandTB) OnInterrupt(fn func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.onInterrupt = append(t.onInterrupt, fn)
}

// Helper is the checkpoint of an interrupted run: every bed helper calls it before it
// creates anything, so the run stops there and tears down what it made so far.
func (t *commandTB) Helper()           { t.checkpoint() }
func (t *commandTB) Name() string      { return "svcproxy-demo" }
func (t *commandTB) Log(args ...any)   { t.Logf("%s", fmt.Sprint(args...)) }
func (t *commandTB) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *commandTB) Fatal(args ...any) { t.Fatalf("%s", fmt.Sprint(args...)) }
func (t *commandTB) Skip(args ...any)  { t.Fatalf("cannot run: %s", fmt.Sprint(args...)) }
func (t *commandTB) Skipf(format string, args ...any) {
	t.Fatalf("cannot run: "+format, args...)
}
func (t *commandTB) SkipNow()      { t.Fatalf("cannot run") }
func (t *commandTB) Skipped() bool { return false }

func (t *commandTB) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: %s\n", strings.TrimRight(fmt.Sprintf(format, args...), "\n"))
}

func (t *commandTB) Errorf(format string, args ...any) {
	t.Logf("error: "+format, args...)
	t.Fail()
}

func (t *commandTB) Fatalf(format string, args ...any) {
	t.Logf("error: "+format, args...)
	t.FailNow()
}

func (t *commandTB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}

func (t *commandTB) FailNow() {
	t.Fail()
	panic(fatalPanic{})
}

func (t *commandTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// checkpoint ends an interrupted run (not its cleanups, which call helpers too).
func (t *commandTB) checkpoint() {
	t.mu.Lock()
	stop := t.interrupted && !t.closed
	t.mu.Unlock()
	if stop {
		panic(fatalPanic{}) // not a failure: no proxy logs dumped at teardown
	}
}

func (t *commandTB) interrupt() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.interrupted = true
}

// Cleanup registers fn, then is a checkpoint: whether fn guards something made before
// or after this call, it is registered before the run stops.
func (t *commandTB) Cleanup(fn func()) {
	t.mu.Lock()
	closed := t.closed
	if !closed {
		t.cleanups = append(t.cleanups, fn)
	}
	t.mu.Unlock()
	if closed {
		fn() // torn down already (an interrupt that did not wait): release at once
		return
	}
	t.checkpoint()
}

// TempDir returns a fresh directory under one root that the last cleanup removes.
func (t *commandTB) TempDir() string {
	t.mu.Lock()
	root := t.tempRoot
	t.mu.Unlock()
	if root == "" {
		var err error
		if root, err = os.MkdirTemp("", "svp-demo-"); err != nil {
			t.Fatalf("temp dir: %v", err)
		}
		t.mu.Lock()
		t.tempRoot = root
		// Prepended: runs last, after everything that may still write there.
		t.cleanups = append([]func(){func() { os.RemoveAll(root) }}, t.cleanups...)
		t.mu.Unlock()
	}
	dir, err := os.MkdirTemp(root, "")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	return dir
}

// runCleanups runs every registered cleanup once, newest first; a failing cleanup does
// not stop the others.
func (t *commandTB) runCleanups() {
	t.teardownOne.Do(func() { close(t.tearingDown) })
	t.cleanMu.Lock()
	defer t.cleanMu.Unlock()
	t.mu.Lock()
	fns := t.cleanups
	if t.interrupted {
		fns = append(fns, t.onInterrupt...)
		t.onInterrupt = nil
	}
	t.cleanups = nil
	t.closed = true
	t.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(fatalPanic); !ok {
						t.Logf("error: cleanup panicked: %v", r)
					}
				}
			}()
			fns[i]()
		}()
	}
}

// runTB runs fn with a commandTB and tears everything down afterwards, also when fn
// fails. On SIGINT/SIGTERM the run stops at its next checkpoint and tears down; if it
// does not get there within interruptGrace, the teardown starts anyway. It returns
// whether fn succeeded and whether it was interrupted.
func runTB(fn func(t *commandTB)) (ok, interrupted bool) {
	t := newCommandTB()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	finished := make(chan struct{})
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\ndemo: %v: tearing down (again to exit at once)\n", s)
			t.interrupt()
			go func() { <-sig; os.Exit(130) }()
			select {
			case <-t.tearingDown:
			case <-time.After(interruptGrace):
				fmt.Fprintf(os.Stderr, "demo: the current step does not stop; tearing down under it\n")
				t.runCleanups()
				os.Exit(130)
			}
		case <-finished:
		}
	}()
	defer func() {
		r := recover()
		if _, isFatal := r.(fatalPanic); r != nil && !isFatal {
			t.Logf("error: panic: %v\n%s", r, debug.Stack())
			t.Fail()
		}
		t.runCleanups()
		close(finished)
		signal.Stop(sig)
		t.mu.Lock()
		ok, interrupted = !t.failed, t.interrupted
		t.mu.Unlock()
	}()
	fn(t)
	return true, false
}
