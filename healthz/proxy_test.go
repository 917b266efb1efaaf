package healthz

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/metrics"
)

const timeout = 60 * time.Second

var (
	start     = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	v4        = v1.IPv4Protocol
	v6        = v1.IPv6Protocol
	dual      = []v1.IPFamily{v4, v6}
	readyNode = &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}
)

// step is one thing that happens to a ProxyHealthServer in a test.
type step func(hs *ProxyHealthServer, clk *testingclock.FakeClock)

func queued(f v1.IPFamily) step {
	return func(hs *ProxyHealthServer, _ *testingclock.FakeClock) { hs.QueuedUpdate(f) }
}

func updated(f v1.IPFamily) step {
	return func(hs *ProxyHealthServer, _ *testingclock.FakeClock) { hs.Updated(f) }
}

func wait(d time.Duration) step {
	return func(_ *ProxyHealthServer, clk *testingclock.FakeClock) { clk.Step(d) }
}

func node(n *v1.Node) step {
	return func(hs *ProxyHealthServer, _ *testingclock.FakeClock) { hs.SyncNode(n) }
}

func taintedNode() *v1.Node {
	n := readyNode.DeepCopy()
	n.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	return n
}

func deletingNode() *v1.Node {
	n := readyNode.DeepCopy()
	n.DeletionTimestamp = &metav1.Time{Time: start}
	return n
}

func newTestServer(families []v1.IPFamily) (*ProxyHealthServer, *testingclock.FakeClock) {
	clk := testingclock.NewFakeClock(start)
	return NewProxyHealthServer("127.0.0.1:0", timeout, families, clk), clk
}

func get(h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestProxyHealthTransitions(t *testing.T) {
	tests := []struct {
		name        string
		families    []v1.IPFamily
		steps       []step
		wantHealthz int
		wantLivez   int
		// wantFamilies is the healthy flag of each family in status.
		wantFamilies map[v1.IPFamily]bool
	}{
		{
			name: "fresh start is healthy", families: dual,
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true, v6: true},
		},
		{
			name: "queued shorter than the timeout is healthy", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), queued(v4), wait(timeout - time.Second)},
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "queued for the timeout is unhealthy", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), queued(v4), wait(timeout)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "the oldest queued time counts", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), queued(v4), wait(timeout / 2), queued(v4), wait(timeout / 2)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "updated recovers", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), queued(v4), wait(2 * timeout), updated(v4)},
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "a queue after recovery starts a new wait", families: []v1.IPFamily{v4},
			steps:       []step{queued(v4), wait(2 * timeout), updated(v4), queued(v4), wait(timeout - time.Second)},
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "one stale family makes the whole unhealthy", families: dual,
			steps:       []step{updated(v4), updated(v6), queued(v6), queued(v4), wait(timeout), updated(v4)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: true, v6: false},
		},
		{
			name: "a family that never synced turns unhealthy", families: dual,
			steps:       []step{updated(v4), queued(v6), wait(timeout)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: true, v6: false},
		},
		{
			name: "a family not configured is tracked once reported", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), updated(v6), queued(v6), wait(timeout)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: true, v6: false},
		},
		{
			name: "eligible node", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(readyNode)},
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "node tainted for deletion fails healthz only", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(taintedNode())},
			wantHealthz: 503, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "node being deleted fails healthz only", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(deletingNode())},
			wantHealthz: 503, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "node gone fails healthz only", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(nil)},
			wantHealthz: 503, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "node eligible again", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(taintedNode()), node(readyNode)},
			wantHealthz: 200, wantLivez: 200, wantFamilies: map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "stale and ineligible", families: []v1.IPFamily{v4},
			steps:       []step{updated(v4), node(taintedNode()), queued(v4), wait(timeout)},
			wantHealthz: 503, wantLivez: 503, wantFamilies: map[v1.IPFamily]bool{v4: false},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs, clk := newTestServer(tc.families)
			for _, s := range tc.steps {
				s(hs, clk)
			}
			for path, want := range map[string]int{"/healthz": tc.wantHealthz, "/livez": tc.wantLivez} {
				rec := get(hs.Handler(), path)
				if rec.Code != want {
					t.Errorf("%s: status %d, want %d; body %s", path, rec.Code, want, rec.Body)
				}
				var body ProxyHealth
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("%s: decode %q: %v", path, rec.Body, err)
				}
				if body.Healthy != (tc.wantLivez == 200) {
					t.Errorf("%s: healthy %v, want %v", path, body.Healthy, tc.wantLivez == 200)
				}
				if len(body.Status) != len(tc.wantFamilies) {
					t.Errorf("%s: status %v, want families %v", path, body.Status, tc.wantFamilies)
				}
				for f, healthy := range tc.wantFamilies {
					if got, ok := body.Status[f]; !ok || got.Healthy != healthy {
						t.Errorf("%s: status[%s] = %+v (present %v), want healthy %v", path, f, got, ok, healthy)
					}
				}
			}
			if got := hs.IsHealthy(); got != (tc.wantLivez == 200) {
				t.Errorf("IsHealthy() = %v, want %v", got, tc.wantLivez == 200)
			}
		})
	}
}

// TestProxyHealthBody pins the exact bytes and headers kube-proxy sends.
func TestProxyHealthBody(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		steps    []step
		wantCode int
		wantBody string
	}{
		{
			name: "healthz healthy reports now as lastUpdated", path: "/healthz",
			steps:    []step{updated(v4), updated(v6), wait(3 * time.Second)},
			wantCode: 200,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:08Z","currentTime":"2026-01-02T03:04:08Z","nodeEligible":true,"healthy":true,` +
				`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true}}}`,
		},
		{
			name: "healthz unhealthy reports the real last update", path: "/healthz",
			steps:    []step{updated(v4), wait(time.Second), updated(v6), queued(v6), wait(timeout)},
			wantCode: 503,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:05:06Z","nodeEligible":true,"healthy":false,` +
				`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:06Z","healthy":false}}}`,
		},
		{
			name: "healthz on an ineligible node", path: "/healthz",
			steps:    []step{updated(v4), updated(v6), node(taintedNode())},
			wantCode: 503,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:05Z","currentTime":"2026-01-02T03:04:05Z","nodeEligible":false,"healthy":true,` +
				`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true}}}`,
		},
		{
			name: "livez omits nodeEligible", path: "/livez",
			steps:    []step{updated(v4), updated(v6), node(taintedNode()), wait(time.Second)},
			wantCode: 200,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:06Z","healthy":true,` +
				`"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true}}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs, clk := newTestServer(dual)
			for _, s := range tc.steps {
				s(hs, clk)
			}
			rec := get(hs.Handler(), tc.path)
			if rec.Code != tc.wantCode {
				t.Errorf("status %d, want %d", rec.Code, tc.wantCode)
			}
			if got := rec.Body.String(); got != tc.wantBody {
				t.Errorf("body\n got %s\nwant %s", got, tc.wantBody)
			}
			wantHeaders := map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
			for k, v := range wantHeaders {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func counterValue(t *testing.T, vec *prometheus.CounterVec, code string) float64 {
	t.Helper()
	var m dto.Metric
	if err := vec.WithLabelValues(code).Write(&m); err != nil {
		t.Fatalf("read counter: %v", err)
	}
	return m.GetCounter().GetValue()
}

func TestProxyHealthCountsResponses(t *testing.T) {
	hs, clk := newTestServer([]v1.IPFamily{v4})
	hs.Updated(v4)
	hs.SyncNode(taintedNode())
	before := map[string]float64{
		"healthz 200": counterValue(t, metrics.ProxyHealthzTotal, "200"),
		"healthz 503": counterValue(t, metrics.ProxyHealthzTotal, "503"),
		"livez 200":   counterValue(t, metrics.ProxyLivezTotal, "200"),
		"livez 503":   counterValue(t, metrics.ProxyLivezTotal, "503"),
	}
	get(hs.Handler(), "/healthz") // 503: node ineligible
	get(hs.Handler(), "/livez")   // 200
	hs.SyncNode(readyNode)
	get(hs.HealthzHandler(), "/healthz") // 200
	hs.QueuedUpdate(v4)
	clk.Step(timeout)
	get(hs.Handler(), "/livez") // 503
	get(hs.Handler(), "/livez") // 503

	want := map[string]float64{"healthz 200": 1, "healthz 503": 1, "livez 200": 1, "livez 503": 2}
	after := map[string]float64{
		"healthz 200": counterValue(t, metrics.ProxyHealthzTotal, "200"),
		"healthz 503": counterValue(t, metrics.ProxyHealthzTotal, "503"),
		"livez 200":   counterValue(t, metrics.ProxyLivezTotal, "200"),
		"livez 503":   counterValue(t, metrics.ProxyLivezTotal, "503"),
	}
	for k, w := range want {
		if got := after[k] - before[k]; got != w {
			t.Errorf("%s counted %v times, want %v", k, got, w)
		}
	}
}

func TestProxyHealthRun(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name    string
		addr    string
		wantErr string
	}{
		{name: "empty address disables", addr: ""},
		{name: "port 0 disables", addr: "127.0.0.1:0"},
		{name: "bind failure is returned", addr: busy.Addr().String(), wantErr: "address already in use"},
		{name: "address without port", addr: "127.0.0.1", wantErr: "missing port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := NewProxyHealthServer(tc.addr, timeout, dual, testingclock.NewFakeClock(start))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := hs.Run(ctx)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Run() = %v, want nil", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Run() = %v, want error containing %q", err, tc.wantErr)
			}
			if ctx.Err() != nil {
				t.Fatal("Run blocked until the context expired")
			}
		})
	}
}

func TestProxyHealthServeLoopback(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := newTestServer(dual)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ctx, l) }()

	client := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/healthz", "/livez"} {
		resp, err := client.Get("http://" + l.Addr().String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", path, resp.StatusCode)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve() after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := client.Get("http://" + l.Addr().String() + "/healthz"); err == nil {
		t.Error("server still answers after cancel")
	}
}
