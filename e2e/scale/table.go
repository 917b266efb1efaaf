package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// row is one line of the table: a figure per run, or false when a run has none.
type row struct {
	label string
	value func(r Result) (float64, bool)
	unit  string // "s", "ms", "MB", "MiB", "" (plain)
}

func dur(d time.Duration) (float64, bool) { return d.Seconds(), d > 0 }

var rows = []row{
	{"cold start → last Service answers", func(r Result) (float64, bool) { return dur(r.ColdStart) }, "s"},
	{"CPU until then: proxy + children", func(r Result) (float64, bool) { return r.ColdCPU + r.ColdChild, r.ColdStart > 0 }, "s"},
	{"… of which children (iptables-restore, …)", func(r Result) (float64, bool) { return r.ColdChild, r.ColdStart > 0 }, "s"},
	{"nat rules after cold start", func(r Result) (float64, bool) { return float64(r.NATRules), r.NATRules > 0 }, ""},
	{"IPVS virtual servers after cold start", func(r Result) (float64, bool) { return float64(r.VirtualServers), r.VirtualServers > 0 }, ""},
	{"kernel calls until cold start done", func(r Result) (float64, bool) { return r.ColdCalls, r.ColdCalls > 0 }, ""},
	{"full sync (metric mean)", func(r Result) (float64, bool) { return r.FullSync, r.FullSync > 0 }, "s"},
	{"bytes to iptables-restore, full sync", func(r Result) (float64, bool) { return r.FullBytes / 1e6, r.BytesOK }, "MB"},
	{"one endpoint added → in kernel, median", func(r Result) (float64, bool) { return dur(percentile(r.AddLatencies, 0.5)) }, "ms"},
	{"one endpoint added → in kernel, p95", func(r Result) (float64, bool) { return dur(percentile(r.AddLatencies, 0.95)) }, "ms"},
	{"partial sync (metric mean)", func(r Result) (float64, bool) { return r.PartSync, r.PartSync > 0 }, "ms"},
	{"bytes to iptables-restore, one-endpoint sync", func(r Result) (float64, bool) { return r.PartBytes / 1e3, r.PartBytes > 0 }, "kB"},
	{"kernel calls of a one-endpoint sync, median", func(r Result) (float64, bool) { return median(r.AddCalls) }, ""},
	{"churn: updates sent per second", func(r Result) (float64, bool) { return r.churnRate(), r.ChurnSent > 0 }, ""},
	{"churn: sync lag median (sampled)", func(r Result) (float64, bool) { return dur(percentile(r.ChurnLags, 0.5)) }, "ms"},
	{"churn: sync lag p95 (sampled)", func(r Result) (float64, bool) { return dur(percentile(r.ChurnLags, 0.95)) }, "ms"},
	{"churn: sync lag max (sampled)", func(r Result) (float64, bool) { return dur(percentile(r.ChurnLags, 1)) }, "ms"},
	{"churn: network programming p50 (metric)", func(r Result) (float64, bool) { return r.NPL50, r.NPLOK }, "s"},
	{"churn: network programming p95 (metric)", func(r Result) (float64, bool) { return r.NPL95, r.NPLOK }, "s"},
	{"churn: CPU proxy + children", func(r Result) (float64, bool) { return r.ChurnCPU + r.ChurnKids, r.ChurnSent > 0 }, "s"},
	{"peak RSS (VmHWM)", func(r Result) (float64, bool) { return float64(r.PeakRSS) / (1 << 20), r.PeakRSS > 0 }, "MiB"},
	{"CPU whole run: proxy", func(r Result) (float64, bool) { return r.CPU, r.PeakRSS > 0 }, "s"},
	{"CPU whole run: children", func(r Result) (float64, bool) { return r.ChildCPU, r.PeakRSS > 0 }, "s"},
	{"iptables-restore floor, one transaction", floorValue(func(r Result) floorResult { return r.FloorOne }), "s"},
	{"iptables-restore floor, 100-service blocks", floorValue(func(r Result) floorResult { return r.FloorFed }), "s"},
}

func (r Result) churnRate() float64 {
	return float64(r.ChurnSent) / r.churnDuration().Seconds()
}

// churnDuration is filled in by Table from the config.
var churnDurationForTable time.Duration

func (r Result) churnDuration() time.Duration { return max(churnDurationForTable, time.Second) }

func floorValue(get func(Result) floorResult) func(Result) (float64, bool) {
	return func(r Result) (float64, bool) {
		f := get(r)
		if f.TimedOut {
			return -f.Wall.Seconds(), true // negative: "more than"
		}
		return f.Wall.Seconds(), f.Wall > 0 && f.Err == nil
	}
}

// Table prints one column per backend: the median over runs and [min–max].
func Table(cfg Config, results []Result) string {
	churnDurationForTable = cfg.ChurnDuration
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d Services × %d endpoints, mode %s, %d run(s) per backend, churn %d/s for %v\n\n",
		cfg.Services, cfg.Endpoints, cfg.Mode, cfg.Runs, cfg.ChurnRate, cfg.ChurnDuration)
	b.WriteString("| figure |")
	for _, be := range cfg.Backends {
		fmt.Fprintf(&b, " %s |", backendLabel(be))
	}
	b.WriteString("\n|---|")
	for range cfg.Backends {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, rw := range rows {
		if !anyValue(rw, results) {
			continue // a figure of the other mode
		}
		fmt.Fprintf(&b, "| %s |", rw.label)
		for _, be := range cfg.Backends {
			var vs []float64
			for _, r := range results {
				if r.Backend == be {
					if v, ok := rw.value(r); ok {
						vs = append(vs, v)
					}
				}
			}
			fmt.Fprintf(&b, " %s |", cell(vs, rw.unit))
		}
		b.WriteString("\n")
	}
	for _, r := range results {
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "\n- %s run %d: %s", backendLabel(r.Backend), r.Run, e)
		}
	}
	b.WriteString("\n")
	for _, r := range results {
		b.WriteString(curveTable(r))
	}
	return b.String()
}

func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2], true
}

func anyValue(rw row, results []Result) bool {
	for _, r := range results {
		if _, ok := rw.value(r); ok {
			return true
		}
	}
	return false
}

func backendLabel(b string) string {
	if b == "" {
		return "default backend"
	}
	return b
}

// cell is "median [min–max] unit"; a negative value is a time bound that was hit.
func cell(vs []float64, unit string) string {
	if len(vs) == 0 {
		return "–"
	}
	bound := false
	for i, v := range vs {
		if v < 0 {
			bound, vs[i] = true, -v
		}
	}
	sort.Float64s(vs)
	scale := 1.0
	if unit == "ms" {
		scale = 1000
	}
	f := func(v float64) string {
		v *= scale
		switch {
		case v >= 100:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.2f", v)
		}
	}
	med := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + med) / 2
	}
	s := f(med)
	if len(vs) > 1 {
		s += " [" + f(vs[0]) + "–" + f(vs[len(vs)-1]) + "]"
	}
	if bound {
		s = "> " + s
	}
	if unit != "" {
		s += " " + unit
	}
	return s
}
