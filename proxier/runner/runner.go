// Package runner runs a function on request, but never more often than a
// minimum interval allows, retrying failures and running at least every
// maximum interval: kube-proxy's bounded-frequency sync runner.
package runner

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Runner calls fn from Loop. Requests made with Run are coalesced: any number
// of them while fn is waiting to run lead to one call.
type Runner struct {
	name          string
	fn            func() error
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	clock         clock.Clock

	mu      sync.Mutex
	pending bool
	wake    chan struct{}

	// waiting, if set, is told how long Loop is about to wait; tests use it
	// to know the loop is idle before moving the fake clock.
	waiting func(time.Duration)
}

// New returns a Runner for fn. At least minInterval passes between the end
// of one call and the start of the next; after fn returns an error it is
// called again after retryInterval (but not before minInterval); and it is
// called at least every maxInterval (measured from the end of the last call).
func New(name string, fn func() error, minInterval, retryInterval, maxInterval time.Duration, clk clock.Clock) *Runner {
	return &Runner{
		name:          name,
		fn:            fn,
		minInterval:   minInterval,
		retryInterval: retryInterval,
		maxInterval:   maxInterval,
		clock:         clk,
		wake:          make(chan struct{}, 1),
	}
}

// Run requests a call of fn. It never blocks.
func (r *Runner) Run() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending {
		return
	}
	r.pending = true
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Loop calls fn as requested until ctx is done.
func (r *Runner) Loop(ctx context.Context) {
	klog.V(3).InfoS("Starting runner", "name", r.name, "minInterval", r.minInterval, "retryInterval", r.retryInterval, "maxInterval", r.maxInterval)
	var (
		lastEnd time.Time // zero until the first call: a first request runs at once
		retryAt time.Time // zero unless the last call failed
		loopAt  = r.clock.Now()
	)
	for ctx.Err() == nil {
		select {
		case <-r.wake: // consumed here; pending is what counts
		default:
		}
		now := r.clock.Now()
		due := r.nextRun(now, loopAt, lastEnd, retryAt)
		if !due.After(now) {
			r.mu.Lock()
			r.pending = false
			r.mu.Unlock()
			err := r.fn()
			lastEnd, retryAt = r.clock.Now(), time.Time{}
			if err != nil {
				retryAt = lastEnd.Add(r.retryInterval)
				klog.ErrorS(err, "Run failed, will retry", "name", r.name, "retryInterval", r.retryInterval)
			}
			continue
		}
		wait := due.Sub(now)
		timer := r.clock.NewTimer(wait)
		if r.waiting != nil {
			r.waiting(wait)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.wake:
		case <-timer.C():
		}
		timer.Stop()
	}
}

// nextRun is when fn should next start.
func (r *Runner) nextRun(now, loopAt, lastEnd, retryAt time.Time) time.Time {
	base := lastEnd
	if base.IsZero() {
		base = loopAt
	}
	due := base.Add(r.maxInterval)
	r.mu.Lock()
	pending := r.pending
	r.mu.Unlock()
	if pending {
		due = now
	}
	if !retryAt.IsZero() && retryAt.Before(due) {
		due = retryAt
	}
	if earliest := lastEnd.Add(r.minInterval); !lastEnd.IsZero() && due.Before(earliest) {
		due = earliest
	}
	return due
}
