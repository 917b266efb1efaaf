package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var client = &http.Client{
	Timeout: 5 * time.Second,
	// Report redirects instead of following them.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// serve runs s on a loopback port until the test ends and returns its base URL.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve() after cancel = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return "http://" + l.Addr().String()
}

func fetch(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, string(body)
}

func TestServerMetricsScrape(t *testing.T) {
	// Vectors show up once a child exists; these are what a first sync sets.
	SyncProxyRulesLatency.WithLabelValues("IPv4").Observe(0.02)
	ProxyHealthzTotal.WithLabelValues("200").Inc()
	IPTablesRulesTotal.WithLabelValues("IPv4", "nat").Set(12)

	base := serve(t, NewServer("127.0.0.1:0", "iptables", nil, false, nil))
	resp, body := fetch(t, base+"/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	want := map[string]dto.MetricType{
		"kubeproxy_sync_proxy_rules_duration_seconds":         dto.MetricType_HISTOGRAM,
		"kubeproxy_proxy_healthz_total":                       dto.MetricType_COUNTER,
		"kubeproxy_sync_proxy_rules_iptables_total":           dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending": dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_service_changes_total":    dto.MetricType_COUNTER,
		"go_goroutines":              dto.MetricType_GAUGE,
		"process_start_time_seconds": dto.MetricType_GAUGE,
	}
	for name, typ := range want {
		mf, ok := families[name]
		if !ok {
			t.Errorf("scrape lacks %s", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s is %v, want %v", name, mf.GetType(), typ)
		}
	}
	var labels []string
	for _, l := range families["kubeproxy_sync_proxy_rules_iptables_total"].GetMetric()[0].GetLabel() {
		labels = append(labels, l.GetName()+"="+l.GetValue())
	}
	if got := strings.Join(labels, ","); got != "ip_family=IPv4,table=nat" {
		t.Errorf("iptables_total labels %s", got)
	}
}

func TestServerRoutes(t *testing.T) {
	health := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"healthy":false}`)
	})
	type config struct {
		Mode        string `json:"mode"`
		BindAddress string `json:"bindAddress"`
	}
	configz := func() any { return config{Mode: "ipvs", BindAddress: "0.0.0.0"} }

	tests := []struct {
		name        string
		server      *Server
		path        string
		wantCode    int
		wantBody    string
		wantType    string
		wantHeaders map[string]string
	}{
		{
			name: "proxyMode", server: NewServer("x", "ipvs", nil, false, nil), path: "/proxyMode",
			wantCode: 200, wantBody: "ipvs", wantType: "text/plain; charset=utf-8",
		},
		{
			name: "healthz from the proxy health server", server: NewServer("x", "iptables", health, false, nil), path: "/healthz",
			wantCode: 503, wantBody: `{"healthy":false}`,
		},
		{
			name: "plain healthz without one", server: NewServer("x", "iptables", nil, false, nil), path: "/healthz",
			wantCode: 200, wantBody: "ok", wantType: "text/plain; charset=utf-8",
		},
		{
			name: "configz", server: NewServer("x", "ipvs", nil, false, configz), path: "/configz",
			wantCode: 200, wantBody: `{"kubeproxy.config.k8s.io":{"mode":"ipvs","bindAddress":"0.0.0.0"}}`, wantType: "application/json",
		},
		{
			name: "configz without a config", server: NewServer("x", "ipvs", nil, false, nil), path: "/configz",
			wantCode: 200, wantBody: `{}`, wantType: "application/json",
		},
		{
			name: "pprof index when profiling", server: NewServer("x", "ipvs", nil, true, nil), path: "/debug/pprof/",
			wantCode: 200,
		},
		{
			name: "pprof redirect when profiling", server: NewServer("x", "ipvs", nil, true, nil), path: "/debug/pprof",
			wantCode: 302,
		},
		{
			name: "no pprof without profiling", server: NewServer("x", "ipvs", nil, false, nil), path: "/debug/pprof/",
			wantCode: 404,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := serve(t, tc.server)
			resp, body := fetch(t, base+tc.path)
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if tc.wantBody != "" && body != tc.wantBody {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			if tc.wantType != "" {
				if got := resp.Header.Get("Content-Type"); got != tc.wantType {
					t.Errorf("Content-Type %q, want %q", got, tc.wantType)
				}
				if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("X-Content-Type-Options %q, want nosniff", got)
				}
			}
		})
	}
}

func TestServerRun(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := NewServer("", "iptables", nil, false, nil).Run(ctx); err != nil {
		t.Errorf("Run() with no address = %v, want nil", err)
	}
	err = NewServer(busy.Addr().String(), "iptables", nil, false, nil).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Run() on a busy port = %v, want address already in use", err)
	}
	if ctx.Err() != nil {
		t.Error("Run blocked until the context expired")
	}

	// A real bind: Run serves until cancelled.
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer("127.0.0.1:0", "iptables", nil, false, nil).Run(runCtx) }()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
