package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// pollInterval bounds how often the kernel is asked whether a rule is in.
const pollInterval = 50 * time.Millisecond

// present asks the kernel (not the proxy) whether mk is in the node: in IPVS mode the
// real server under its virtual server, else its nat chain. On legacy it reads
// iptables-save, which takes no xtables lock: `iptables -S` would hold the lock while it
// reads the whole table and make the proxy's own calls wait.
func (h *Harness) present(m *meter, backend string, mk mark) bool {
	if h.cfg.Mode == "ipvs" {
		out, err := execIn(m.ns, 30*time.Second, "", "ipvsadm", "-Ln", "-t", mk.vip)
		return err == nil && strings.Contains(out, "-> "+mk.ep+" ")
	}
	chain := mk.chain()
	if backend == "legacy" {
		out, err := execIn(m.ns, time.Minute, "", iptablesTool(backend, "iptables-save"), "-t", "nat")
		return err == nil && strings.Contains(out, "\n:"+chain+" ")
	}
	_, err := execIn(m.ns, 30*time.Second, "", iptablesTool(backend, "iptables"), "-t", "nat", "-S", chain)
	return err == nil
}

// waitMark polls until mk is in the kernel or timeout; it returns when it was seen. The
// pause between polls is at least as long as the last poll took, so polling a large
// ruleset uses at most about half a core.
func (h *Harness) waitMark(m *meter, backend string, mk mark, timeout time.Duration, superseded func() bool) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		start := time.Now()
		if h.present(m, backend, mk) {
			return time.Now(), true
		}
		if superseded != nil && superseded() {
			return time.Time{}, false
		}
		time.Sleep(max(pollInterval, time.Since(start)))
	}
	return time.Time{}, false
}

// singleAdds adds one endpoint to one service at a time and times its arrival in the
// kernel.
func (h *Harness) singleAdds(tb testing.TB, m *meter, res *Result) {
	ctx := context.Background()
	others := max(1, h.objs.n-1)
	for r := range h.cfg.Adds {
		// Past the proxy's 1 s minimum sync period, so each change syncs at once.
		time.Sleep(1100 * time.Millisecond)
		i := (r*7919 + 1) % others
		calls0, syncs0 := m.kernelCalls()
		mk, sent, err := h.objs.addEndpoint(ctx, i)
		if err != nil {
			res.errorf("add endpoint: %v", err)
			continue
		}
		seen, ok := h.waitMark(m, res.Backend, mk, 5*time.Minute, nil)
		if !ok {
			res.errorf("endpoint added to %s not in the kernel after 5m", svcName(i))
			continue
		}
		res.AddLatencies = append(res.AddLatencies, seen.Sub(sent))
		if h.cfg.Mode == "ipvs" {
			// The sync's calls, when it was the only sync in between (a periodic full
			// resync may coincide): the counters move when the sync ends.
			for range 50 {
				if calls1, syncs1 := m.kernelCalls(); syncs1 > syncs0 {
					if syncs1 == syncs0+1 {
						res.AddCalls = append(res.AddCalls, calls1-calls0)
					}
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		if r == 0 {
			if text, err := m.metrics(); err == nil {
				res.PartBytes, _ = bed.MetricValue(text, "svcproxy_sync_proxy_rules_restore_bytes", ipv4)
			}
		}
	}
	if text, err := m.metrics(); err == nil {
		res.PartSync, _ = histMean(text, "kubeproxy_sync_partial_proxy_rules_duration_seconds", ipv4)
	}
	h.cfg.Logf("[%s run %d] single adds: median %v p95 %v", res.Backend, res.Run,
		percentile(res.AddLatencies, 0.5).Round(time.Millisecond), percentile(res.AddLatencies, 0.95).Round(time.Millisecond))
}

// churn sends ChurnRate endpoint replacements per second for ChurnDuration, samples one
// update at a time for its arrival in the kernel, and reads the proxy's CPU and
// network-programming histogram around it.
func (h *Harness) churn(tb testing.TB, m *meter, res *Result) {
	cfg := h.cfg
	ctx := context.Background()
	others := max(1, h.objs.n-1)
	before, _ := m.metrics()
	ps0, _ := readProc(m.pid)
	if cfg.ProfileDir != "" {
		go m.profile(filepath.Join(cfg.ProfileDir, fmt.Sprintf("churn-%s-%d.pprof", res.Backend, res.Run)), cfg.ChurnDuration)
	}

	type update struct {
		svc  int
		mark mark
		sent time.Time
	}
	var mu sync.Mutex
	var latest update
	lastWrite := map[int]time.Time{}
	var errs []string
	work := make(chan int, cfg.ChurnRate)
	var wg sync.WaitGroup
	for range min(16, cfg.Workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				i := k % others
				mk, sent, err := h.objs.replaceEndpoint(ctx, i, k/others)
				mu.Lock()
				if err != nil {
					errs = append(errs, err.Error())
				} else {
					latest = update{i, mk, sent}
					lastWrite[i] = sent
				}
				mu.Unlock()
			}
		}()
	}

	stop := make(chan struct{})
	var sent atomic.Int64
	var cv curve
	if cfg.CurveStep > 0 {
		heap := func() float64 {
			text, err := m.metrics()
			if err != nil {
				return 0
			}
			v, _ := bed.MetricValue(text, "go_memstats_heap_inuse_bytes")
			return v
		}
		go cv.sample(m.pid, heap, cfg.CurveStep, &sent, stop)
	}
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
			mu.Lock()
			u := latest
			mu.Unlock()
			if u.mark.ep == "" {
				continue
			}
			superseded := func() bool {
				mu.Lock()
				defer mu.Unlock()
				return lastWrite[u.svc].After(u.sent)
			}
			seen, ok := h.waitMark(m, res.Backend, u.mark, 5*time.Minute, superseded)
			if ok {
				res.ChurnLags = append(res.ChurnLags, seen.Sub(u.sent))
			} else {
				res.ChurnSuperseded++
			}
			cv.lag(seen.Sub(u.sent), ok)
		}
	}()

	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	perTick := max(1, cfg.ChurnRate/10)
	k := 0
	for time.Since(start) < cfg.ChurnDuration {
		<-tick.C
		for range perTick {
			select {
			case work <- k:
				k++
				sent.Store(int64(k))
			default: // the writers fall behind: the rate is not held, sent says so
			}
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	res.ChurnSent = k
	// Let the last sampled update land before the CPU and histogram are read.
	time.Sleep(2 * time.Second)
	close(stop)
	<-samplerDone
	res.Curve = cv.result()
	if ps1, err := readProc(m.pid); err == nil {
		res.ChurnCPU, res.ChurnKids = ps1.CPU-ps0.CPU, ps1.ChildCPU-ps0.ChildCPU
	}
	if after, err := m.metrics(); err == nil {
		name := "kubeproxy_network_programming_duration_seconds"
		hb, ha := parseHistogram(before, name), parseHistogram(after, name)
		res.NPL50, res.NPLOK = ha.quantile(hb, 0.5)
		res.NPL95, _ = ha.quantile(hb, 0.95)
	}
	for i, e := range errs {
		if i == 3 {
			res.errorf("... %d churn errors in all", len(errs))
			break
		}
		res.errorf("churn: %s", e)
	}
	h.cfg.Logf("[%s run %d] churn: %d updates in %v (%.0f/s), lag median %v p95 %v over %d samples, cpu %.2fs+%.2fs children",
		res.Backend, res.Run, k, cfg.ChurnDuration, float64(k)/cfg.ChurnDuration.Seconds(),
		percentile(res.ChurnLags, 0.5).Round(time.Millisecond), percentile(res.ChurnLags, 0.95).Round(time.Millisecond),
		len(res.ChurnLags), res.ChurnCPU, res.ChurnKids)
}
