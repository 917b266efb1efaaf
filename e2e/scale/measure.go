package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat's times (100 on every Linux we run on).
const clockTick = 100

// procStats are whole-process figures of a running proxy.
type procStats struct {
	CPU      float64 // utime+stime of the proxy, seconds
	ChildCPU float64 // cutime+cstime: its reaped children (iptables-restore, ...)
	PeakRSS  uint64  // VmHWM, bytes
	RSS      uint64  // VmRSS, bytes
}

func readProc(pid int) (procStats, error) {
	var s procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The command name may hold spaces; fields resume after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+1:])
	if len(f) < 15 {
		return s, fmt.Errorf("short stat of %d", pid)
	}
	ticks := func(k int) float64 { v, _ := strconv.ParseFloat(f[k], 64); return v / clockTick }
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
	s.CPU = ticks(11) + ticks(12)
	s.ChildCPU = ticks(13) + ticks(14)
	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read status of %d: %w", pid, err)
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		key, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch key {
		case "VmHWM":
			s.PeakRSS = kb * 1024
		case "VmRSS":
			s.RSS = kb * 1024
		}
	}
	return s, sc.Err()
}

// sepChain is kube-proxy's KUBE-SEP chain name for endpoint ip:port of a TCP service
// port "ns/name:port": base32(sha256(...)) cut to 16 characters. svcproxy uses the same.
func sepChain(svcPortName, ipPort string) string {
	sum := sha256.Sum256([]byte(svcPortName + "tcp" + ipPort))
	return "KUBE-SEP-" + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// svcChain is the KUBE-SVC chain of a TCP service port.
func svcChain(svcPortName string) string {
	sum := sha256.Sum256([]byte(svcPortName + "tcp"))
	return "KUBE-SVC-" + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// iptablesTool is the backend's tool (iptables-legacy-save, ...); "" is the default.
func iptablesTool(backend, tool string) string {
	if backend == "" {
		return tool
	}
	base, rest, _ := strings.Cut(tool, "-")
	if rest != "" {
		return base + "-" + backend + "-" + rest
	}
	return base + "-" + backend
}

// execIn runs a command inside ns, bounded by timeout, with stdin when not empty.
func execIn(ns *bed.Namespace, timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := ns.Start(cmd); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// histogram is the cumulative buckets of one Prometheus histogram (le → count).
type histogram map[float64]float64

// parseHistogram sums name's buckets over all label sets.
func parseHistogram(text, name string) histogram {
	h := histogram{}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"_bucket{") {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		leStr := line[i+4:]
		leStr = leStr[:strings.IndexByte(leStr, '"')]
		le, err1 := strconv.ParseFloat(leStr, 64)
		v, err2 := strconv.ParseFloat(line[j+1:], 64)
		if err1 == nil && err2 == nil {
			h[le] += v
		}
	}
	return h
}

// quantile estimates q of the observations in h minus base, interpolating linearly
// inside the bucket like PromQL's histogram_quantile; ok is false without observations.
func (h histogram) quantile(base histogram, q float64) (float64, bool) {
	var les []float64
	for le := range h {
		les = append(les, le)
	}
	sort.Float64s(les)
	if len(les) == 0 {
		return 0, false
	}
	total := h[les[len(les)-1]] - base[les[len(les)-1]]
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	prevLE, prevCount := 0.0, 0.0
	for _, le := range les {
		c := h[le] - base[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevLE, true
			}
			if c == prevCount {
				return le, true
			}
			return prevLE + (le-prevLE)*(rank-prevCount)/(c-prevCount), true
		}
		prevLE, prevCount = le, c
	}
	return prevLE, true
}

// histMean is sum/count of a histogram over the label sets matching labels, or false
// without samples.
func histMean(text, name string, labels ...string) (float64, bool) {
	s, ok1 := bed.MetricValue(text, name+"_sum", labels...)
	c, ok2 := bed.MetricValue(text, name+"_count", labels...)
	if !ok1 || !ok2 || c == 0 {
		return 0, false
	}
	return s / c, true
}

// percentile of sorted-or-not durations (nearest rank).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}
