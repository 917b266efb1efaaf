package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// harness drives a Runner with a fake clock. fn records the time of each
// call and runs the scripted step (clock advance, error, nested Run).
type harness struct {
	t     *testing.T
	clock *clocktesting.FakeClock
	r     *Runner
	calls chan time.Time
	waits chan time.Duration

	mu     sync.Mutex
	script []step
}

type step struct {
	takes time.Duration
	err   error
	runMe bool
}

func newHarness(t *testing.T, minI, retryI, maxI time.Duration, script ...step) *harness {
	h := &harness{
		t:      t,
		clock:  clocktesting.NewFakeClock(t0),
		calls:  make(chan time.Time, 100),
		waits:  make(chan time.Duration, 100),
		script: script,
	}
	h.r = New("test", h.fn, minI, retryI, maxI, h.clock)
	h.r.waiting = func(d time.Duration) { h.waits <- d }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.r.Loop(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("Loop did not return after cancel")
		}
	})
	return h
}

func (h *harness) fn() error {
	h.calls <- h.clock.Now()
	h.mu.Lock()
	var s step
	if len(h.script) > 0 {
		s, h.script = h.script[0], h.script[1:]
	}
	h.mu.Unlock()
	h.clock.Step(s.takes)
	if s.runMe {
		h.r.Run()
	}
	return s.err
}

// expectWait waits until the loop is idle and checks how long it will sleep.
func (h *harness) expectWait(want time.Duration) {
	h.t.Helper()
	select {
	case got := <-h.waits:
		if got != want {
			h.t.Fatalf("loop waits %v, want %v", got, want)
		}
	case <-time.After(10 * time.Second):
		h.t.Fatalf("loop never went idle (want wait %v)", want)
	}
}

// expectCall checks that exactly one call happened, at time at.
func (h *harness) expectCall(at time.Time) {
	h.t.Helper()
	select {
	case got := <-h.calls:
		if !got.Equal(at) {
			h.t.Fatalf("call at %v, want at %v", got.Sub(t0), at.Sub(t0))
		}
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no call, want one at %v", at.Sub(t0))
	}
}

// expectNoCall is only meaningful while the loop is idle (after expectWait).
func (h *harness) expectNoCall() {
	h.t.Helper()
	if n := len(h.calls); n != 0 {
		h.t.Fatalf("%d unexpected calls", n)
	}
}

func TestFirstRequestRunsAtOnce(t *testing.T) {
	h := newHarness(t, 10*time.Second, time.Second, time.Hour)
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(time.Hour)
	h.expectNoCall()
}

func TestCoalescing(t *testing.T) {
	h := newHarness(t, 10*time.Second, time.Second, time.Hour)
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(time.Hour)

	h.r.Run()
	h.r.Run()
	h.r.Run()
	h.expectWait(10 * time.Second) // one wake for three requests
	h.clock.Step(9 * time.Second)
	h.expectNoCall()
	h.clock.Step(time.Second)
	h.expectCall(t0.Add(10 * time.Second))
	h.expectWait(time.Hour)
	h.expectNoCall()
	if n := len(h.waits); n != 0 {
		t.Fatalf("%d extra wake-ups", n)
	}
}

func TestMinIntervalCountsFromEndOfRun(t *testing.T) {
	h := newHarness(t, 10*time.Second, time.Second, time.Hour, step{takes: 3 * time.Second})
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(time.Hour) // the run ended at t0+3s
	h.clock.Step(4 * time.Second)
	h.r.Run()
	h.expectWait(6 * time.Second)
	h.clock.Step(6 * time.Second)
	h.expectCall(t0.Add(13 * time.Second))
	h.expectWait(time.Hour)
}

func TestRequestDuringRunIsKept(t *testing.T) {
	h := newHarness(t, 5*time.Second, time.Second, time.Hour, step{runMe: true})
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(5 * time.Second)
	h.clock.Step(5 * time.Second)
	h.expectCall(t0.Add(5 * time.Second))
	h.expectWait(time.Hour)
}

func TestRetryAfterFailure(t *testing.T) {
	h := newHarness(t, time.Second, 5*time.Second, time.Hour,
		step{err: errors.New("boom")}, step{err: errors.New("boom again")}, step{})
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(5 * time.Second)
	h.clock.Step(5 * time.Second)
	h.expectCall(t0.Add(5 * time.Second))
	h.expectWait(5 * time.Second)
	h.clock.Step(5 * time.Second)
	h.expectCall(t0.Add(10 * time.Second))
	h.expectWait(time.Hour) // success: no more retries
	h.expectNoCall()
}

func TestRetryHonoursMinInterval(t *testing.T) {
	h := newHarness(t, 10*time.Second, 2*time.Second, time.Hour, step{err: errors.New("boom")})
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(10 * time.Second)
	h.clock.Step(10 * time.Second)
	h.expectCall(t0.Add(10 * time.Second))
}

func TestMaxInterval(t *testing.T) {
	h := newHarness(t, time.Second, time.Second, 30*time.Second)
	h.expectWait(30 * time.Second)
	h.clock.Step(29 * time.Second)
	h.expectNoCall()
	h.clock.Step(time.Second)
	h.expectCall(t0.Add(30 * time.Second))
	h.expectWait(30 * time.Second)
	h.clock.Step(30 * time.Second)
	h.expectCall(t0.Add(60 * time.Second))
	h.expectWait(30 * time.Second)
}

func TestZeroMinInterval(t *testing.T) {
	h := newHarness(t, 0, time.Second, time.Hour)
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(time.Hour)
	h.r.Run()
	h.expectCall(t0)
	h.expectWait(time.Hour)
}
