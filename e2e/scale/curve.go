package main

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// curvePoint is one window of a long churn: what the proxy held and how far behind it
// was, so a 10-minute run shows whether memory or lag grows with time.
type curvePoint struct {
	End      time.Duration // since the churn began
	RSS      uint64        // VmRSS at the end of the window, bytes
	Heap     float64       // the Go heap in use then (go_memstats_heap_inuse_bytes), bytes
	CPU      float64       // proxy + children CPU seconds in the window
	Sent     int           // updates sent in the window
	Lags     []time.Duration
	Unseen   int // sampled updates superseded before they were seen
	duration time.Duration
}

// curve records lag samples as they come and closes a window every step.
type curve struct {
	mu     sync.Mutex
	lags   []time.Duration
	unseen int
	points []curvePoint
}

func (c *curve) lag(d time.Duration, seen bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seen {
		c.lags = append(c.lags, d)
	} else {
		c.unseen++
	}
}

// sample closes a window every step until stop: VmRSS and CPU of pid, the heap in use
// that heap reports (0 when unknown), updates sent.
func (c *curve) sample(pid int, heap func() float64, step time.Duration, sent *atomic.Int64, stop <-chan struct{}) {
	start := time.Now()
	last, _ := readProc(pid)
	lastSent, lastAt := int64(0), start
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ps, err := readProc(pid)
		if err != nil {
			return
		}
		h := heap()
		now, n := time.Now(), sent.Load()
		c.mu.Lock()
		c.points = append(c.points, curvePoint{
			End: now.Sub(start), RSS: ps.RSS, Heap: h, Sent: int(n - lastSent), Lags: c.lags, Unseen: c.unseen,
			CPU: ps.CPU + ps.ChildCPU - last.CPU - last.ChildCPU, duration: now.Sub(lastAt),
		})
		c.lags, c.unseen = nil, 0
		c.mu.Unlock()
		last, lastSent, lastAt = ps, n, now
	}
}

func (c *curve) result() []curvePoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.points
}

// curveTable prints one row per window of one run.
func curveTable(r Result) string {
	if len(r.Curve) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s run %d over the churn:\n\n", backendLabel(r.Backend), r.Run)
	b.WriteString("| until | updates/s | VmRSS | Go heap in use | CPU (proxy + children) | lag median | lag p95 | lag max | samples (superseded) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range r.Curve {
		secs := max(p.duration.Seconds(), 0.001)
		fmt.Fprintf(&b, "| %v | %.0f | %.0f MiB | %.0f MiB | %.0f %% | %v | %v | %v | %d (%d) |\n",
			p.End.Round(time.Second), float64(p.Sent)/secs, float64(p.RSS)/(1<<20), p.Heap/(1<<20), 100*p.CPU/secs,
			percentile(p.Lags, 0.5).Round(time.Millisecond), percentile(p.Lags, 0.95).Round(time.Millisecond),
			percentile(p.Lags, 1).Round(time.Millisecond), len(p.Lags), p.Unseen)
	}
	return b.String()
}
