package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

// TestDemo runs the demo's main logic in iptables mode (as `sudo make demo` does) and
// checks its table against what the example Services must do, so the demo cannot rot
// silently.
func TestDemo(t *testing.T) {
	bed.RequireRoot(t)
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	rep := run(t, bed.API(t), config{
		Mode:      "iptables",
		Manifests: filepath.Join(root, "manifests", "examples"),
		Requests:  n,
		Progress:  t.Logf,
	})
	var out strings.Builder
	rep.print(&out)
	t.Logf("demo output:\n%s", out.String())

	const toolbox, client = "203.0.113.3", "192.0.2.101"
	tests := []struct {
		from, to string
		pods     []string // every one answers at least once; nobody else does
		one      bool     // exactly one of pods answers all requests
		source   string   // the source the pods saw; "" when nothing may answer
	}{
		{"toolbox", "198.51.100.10:80", []string{"web-1", "web-2"}, false, toolbox},
		// eTP applies to external traffic only; web-local has one endpoint anyway.
		{"toolbox", "198.51.100.11:80", []string{"web-1"}, false, toolbox},
		{"client1", "192.0.2.11:30080", []string{"web-1"}, false, client},
		{"client1", "192.0.2.12:30080", nil, false, ""},
		{"toolbox", "198.51.100.12:80", []string{"web-1", "web-2"}, true, toolbox},
	}
	if len(rep.Rows) != len(tests) {
		t.Errorf("table has %d rows, want %d", len(rep.Rows), len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.from+"->"+tt.to, func(t *testing.T) {
			r := findRow(rep, tt.from, tt.to)
			if r == nil {
				t.Fatalf("no row from %s to %s", tt.from, tt.to)
			}
			c := r.Counts
			answered := 0
			for pod, k := range c.ByPod {
				answered += k
				if !contains(tt.pods, pod) {
					t.Errorf("answered by %s (%v), want only %v", pod, c, tt.pods)
				}
			}
			switch {
			case tt.pods == nil:
				if answered != 0 {
					t.Errorf("answers %v, want none", c)
				}
			case tt.one:
				if len(c.ByPod) != 1 || answered != n {
					t.Errorf("answers %v, want all %d from one pod", c, n)
				}
			default:
				if answered != n {
					t.Errorf("answers %v, want %d", c, n)
				}
				for _, pod := range tt.pods {
					if c.ByPod[pod] == 0 {
						t.Errorf("%s never answered: %v", pod, c)
					}
				}
			}
			if tt.source != "" && (len(c.Sources) != 1 || c.Sources[tt.source] != answered) {
				t.Errorf("sources %v, want all %s", c.Sources, tt.source)
			}
			if !strings.Contains(out.String(), tt.to) {
				t.Errorf("printed table lacks %s", tt.to)
			}
		})
	}
	wantChecks := map[string]int{"192.0.2.11:30081": 200, "192.0.2.12:30081": 503}
	for _, h := range rep.Checks {
		addr := strings.TrimSuffix(strings.TrimPrefix(h.URL, "http://"), "/")
		if want, ok := wantChecks[addr]; !ok || h.Code != want {
			t.Errorf("health check %s = %d %q, want %d", addr, h.Code, h.Body, want)
		}
		delete(wantChecks, addr)
	}
	if len(wantChecks) != 0 {
		t.Errorf("health checks not asked: %v", wantChecks)
	}
	for _, h := range rep.Healthz {
		if h.Code != 200 || !strings.Contains(h.Body, "lastUpdated") || h.Mode != "iptables" {
			t.Errorf("%s healthz = %d %q with /proxyMode %q, want 200 with lastUpdated in iptables mode", h.What, h.Code, h.Body, h.Mode)
		}
	}
	if ps := rep.problems(); len(ps) != 0 {
		t.Errorf("the demo reports problems: %v", ps)
	}
}

func findRow(rep *report, from, to string) *row {
	for i := range rep.Rows {
		if rep.Rows[i].From == from && rep.Rows[i].To == to {
			return &rep.Rows[i]
		}
	}
	return nil
}
