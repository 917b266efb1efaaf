package datapath

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/svcproxy/svcproxy/e2e/bed"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	dto "github.com/prometheus/client_model/go"
)

// Health scenarios: the proxy's own /healthz, /livez, /metrics and /proxyMode as
// kube-proxy serves them, and a real load balancer (HAProxy) steering by the
// healthCheckNodePort of an externalTrafficPolicy=Local service.

func init() {
	register("HealthzAndMetrics", testHealthzAndMetrics)
	register("LoadBalancerHAProxy", testLoadBalancerHAProxy)
}

// healthResponse is one HTTP answer with its headers.
type healthResponse struct {
	code   int
	header http.Header
	body   string
}

// healthGet GETs url from inside ns.
func healthGet(ns *bed.Namespace, url string) (healthResponse, error) {
	tr := &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return healthResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return healthResponse{code: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

// healthMetrics fetches and parses p's /metrics.
func healthMetrics(t *testing.T, p *bed.Proxy) map[string]*dto.MetricFamily {
	t.Helper()
	r, err := healthGet(p.Node.NS, "http://"+p.MetricsAddr+"/metrics")
	if err != nil || r.code != http.StatusOK {
		t.Fatalf("%s /metrics: %d %v", p.Node.Short, r.code, err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("%s /metrics does not parse: %v", p.Node.Short, err)
	}
	return fams
}

// healthSample finds the sample of family name whose labels include want (k=v pairs);
// nil when there is none.
func healthSample(fams map[string]*dto.MetricFamily, name string, want ...string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			match = match && labels[k] == v
		}
		if match {
			return m
		}
	}
	return nil
}

// healthValue is a sample's value: gauge, counter or histogram count.
func healthValue(m *dto.Metric) float64 {
	switch {
	case m == nil:
		return 0
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// healthCheckEndpoint GETs /healthz or /livez on p's healthz address and checks
// kube-proxy's answer: 200, JSON with nosniff, healthy, every family fresh.
func healthCheckEndpoint(t *testing.T, p *bed.Proxy, path string, since time.Time) {
	t.Helper()
	url := "http://" + p.HealthzAddr + path
	r, err := healthGet(p.Node.NS, url)
	if err != nil {
		t.Fatalf("%s %s: %v", p.Node.Short, path, err)
	}
	what := p.Node.Short + " " + path
	if r.code != http.StatusOK {
		t.Errorf("%s: status %d, want 200: %s", what, r.code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	if v := r.header.Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, v)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.body), &raw); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v: %s", what, err, r.body)
	}
	keys := []string{"lastUpdated", "currentTime", "healthy", "status"}
	if path == "/healthz" {
		keys = append(keys, "nodeEligible")
	} else if _, ok := raw["nodeEligible"]; ok {
		t.Errorf("%s: has nodeEligible, which kube-proxy's /livez omits: %s", what, r.body)
	}
	for _, k := range keys {
		if _, ok := raw[k]; !ok {
			t.Errorf("%s: no %q in %s", what, k, r.body)
		}
	}
	var body struct {
		LastUpdated  time.Time `json:"lastUpdated"`
		CurrentTime  time.Time `json:"currentTime"`
		NodeEligible *bool     `json:"nodeEligible"`
		Healthy      bool      `json:"healthy"`
		Status       map[string]struct {
			LastUpdated time.Time `json:"lastUpdated"`
			Healthy     bool      `json:"healthy"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil {
		t.Fatalf("%s: %v: %s", what, err, r.body)
	}
	if !body.Healthy || (path == "/healthz" && (body.NodeEligible == nil || !*body.NodeEligible)) {
		t.Errorf("%s: want healthy and (on /healthz) nodeEligible: %s", what, r.body)
	}
	// Healthy answers carry lastUpdated = now, for compatibility.
	if d := body.CurrentTime.Sub(body.LastUpdated); d < 0 || d > time.Second {
		t.Errorf("%s: lastUpdated %v is not currentTime %v: %s", what, body.LastUpdated, body.CurrentTime, r.body)
	}
	for _, fam := range []string{"IPv4", "IPv6"} {
		st, ok := body.Status[fam]
		if !ok || !st.Healthy || st.LastUpdated.Before(since) {
			t.Errorf("%s: status[%s] = %+v (present %v), want healthy and updated after %v: %s",
				what, fam, st, ok, since.Format(time.RFC3339Nano), r.body)
		}
	}
}

func testHealthzAndMetrics(t *testing.T, e *Env) {
	c := e.C
	pod := c.AddPod(t, c.Node("node2"), "health-a")
	before := map[string]map[string]*dto.MetricFamily{}
	for name, p := range e.Proxies {
		// /healthz says 200 before the first sync; a change arriving before it is folded
		// into that (full) sync and never queued, leaving no partial sync to measure.
		epProxySynced(t, p, time.Unix(0, 0))
		before[name] = healthMetrics(t, p)
	}

	// A UDP service (conntrack cleanup runs when it gets endpoints), its slice carrying
	// the trigger time the network programming latency is measured from, and an
	// iTP=Local service with no endpoint on node1.
	since := time.Now()
	udpIP, localIP := e.ClusterIP(), e.ClusterIP()
	udp := epService(e, "health-udp", "UDP", udpIP, nil, epEndpoint(pod))
	udp[1].(*discovery.EndpointSlice).Annotations = map[string]string{
		v1.EndpointsLastChangeTriggerTime: since.UTC().Format(time.RFC3339Nano),
	}
	local := epService(e, "health-local", "TCP", localIP, []bed.ServiceOption{bed.InternalLocal()}, epEndpoint(pod))
	epApply(t, e, append(udp, local...)...)
	epWaitFirst(t, "UDP service answers", epFirstAnswerTimeout, func() (bed.Answer, error) {
		return c.Node("node1").NS.UDPRequest(epAddr(udpIP, 80), bed.RequestTimeout)
	}, pod)

	for _, name := range []string{"node1", "node2"} {
		p := e.Proxies[name]
		healthWaitChangeSynced(t, p, before[name])
		healthCheckEndpoint(t, p, "/healthz", since)
		healthCheckEndpoint(t, p, "/livez", since)
		healthCheckMetricsPort(t, e, p)
		healthCheckMetrics(t, e, p, before[name], healthMetrics(t, p), since)
	}
}

// healthWaitChangeSynced waits (bounded) until p synced both services: Programmed may
// have seen a sync that started after the first object arrived but before the last.
// The slice with a trigger time adds a network programming sample; the iTP=Local service
// with no endpoint on node1 counts in node1's no_local_endpoints.
func healthWaitChangeSynced(t *testing.T, p *bed.Proxy, before map[string]*dto.MetricFamily) {
	t.Helper()
	const npl = "kubeproxy_network_programming_duration_seconds"
	was := healthValue(healthSample(before, npl, "ip_family=IPv4"))
	bed.Eventually(t, epFirstAnswerTimeout, p.Node.Short+" synced the health services", func() (bool, string) {
		now := healthMetrics(t, p)
		n := healthValue(healthSample(now, npl, "ip_family=IPv4"))
		noLocal := healthValue(healthSample(now, "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
			"ip_family=IPv4", "traffic_policy=internal"))
		return n > was && (p.Node.Short != "node1" || noLocal >= 1),
			fmt.Sprintf("%s count %v (before %v), internal no-local-endpoints %v", npl, n, was, noLocal)
	})
}

// healthCheckMetricsPort checks /proxyMode and /healthz on the metrics address.
func healthCheckMetricsPort(t *testing.T, e *Env, p *bed.Proxy) {
	t.Helper()
	r, err := healthGet(p.Node.NS, "http://"+p.MetricsAddr+"/proxyMode")
	if err != nil || r.code != http.StatusOK || r.body != e.Mode {
		t.Errorf("%s /proxyMode: %d %q (%v), want 200 %q", p.Node.Short, r.code, r.body, err, e.Mode)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("%s /proxyMode: Content-Type %q, want text/plain", p.Node.Short, ct)
	}
	r, err = healthGet(p.Node.NS, "http://"+p.MetricsAddr+"/healthz")
	if err != nil || r.code != http.StatusOK {
		t.Errorf("%s metrics port /healthz: %d (%v): %s", p.Node.Short, r.code, err, r.body)
	}
	r, err = healthGet(p.Node.NS, "http://"+p.MetricsAddr+"/metrics")
	if ct := r.header.Get("Content-Type"); err != nil || !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("%s /metrics: Content-Type %q (%v), want the text exposition format", p.Node.Short, ct, err)
	}
}

// healthCheckMetrics checks that every kube-proxy metric a sync produces has a sample
// with a sane value after the change made at since.
func healthCheckMetrics(t *testing.T, e *Env, p *bed.Proxy, before, after map[string]*dto.MetricFamily, since time.Time) {
	t.Helper()
	now := time.Now()
	node := p.Node.Short
	sample := func(name string, labels ...string) *dto.Metric {
		m := healthSample(after, "kubeproxy_"+name, labels...)
		if m == nil {
			t.Errorf("%s: no sample of kubeproxy_%s%v", node, name, labels)
		}
		return m
	}
	grew := func(name string, labels ...string) {
		if m := sample(name, labels...); m != nil {
			b := healthValue(healthSample(before, "kubeproxy_"+name, labels...))
			if a := healthValue(m); a <= b {
				t.Errorf("%s: kubeproxy_%s%v = %v, want more than before the change (%v)", node, name, labels, a, b)
			}
		}
	}
	inRange := func(name string, lo, hi float64, labels ...string) {
		if m := sample(name, labels...); m != nil {
			if v := healthValue(m); v < lo || v > hi {
				t.Errorf("%s: kubeproxy_%s%v = %v, want within [%v, %v]", node, name, labels, v, lo, hi)
			}
		}
	}
	histogramSane := func(name string, maxMean float64, labels ...string) {
		if m := sample(name, labels...); m != nil && m.Histogram != nil {
			h := m.Histogram
			if h.GetSampleCount() == 0 || h.GetSampleSum() < 0 || h.GetSampleSum()/float64(h.GetSampleCount()) > maxMean {
				t.Errorf("%s: kubeproxy_%s%v: count %d sum %v, want samples with a mean in [0, %v] s",
					node, name, labels, h.GetSampleCount(), h.GetSampleSum(), maxMean)
			}
		}
	}
	sec := func(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

	for _, fam := range []string{"IPv4", "IPv6"} {
		f := "ip_family=" + fam
		grew("sync_proxy_rules_duration_seconds", f)
		// Durations are only checked for being recorded: how long a sync takes
		// is a benchmark figure (BENCHMARKS.md), not something a test asserts.
		histogramSane("sync_proxy_rules_duration_seconds", math.Inf(1), f)
		histogramSane("sync_full_proxy_rules_duration_seconds", math.Inf(1), f)
		inRange("sync_proxy_rules_last_timestamp_seconds", sec(since), sec(now), f)
		inRange("sync_proxy_rules_no_local_endpoints_total", 0, 1e6, f, "traffic_policy=external")
		if e.Mode == "iptables" {
			for _, table := range []string{"nat", "filter"} {
				inRange("sync_proxy_rules_iptables_total", 1, 1e6, f, "table="+table)
				inRange("sync_proxy_rules_iptables_last", 1, 1e6, f, "table="+table)
			}
		}
	}
	// Only IPv4 saw changes: an IPv4-only Service queues nothing for IPv6 (as upstream,
	// whose IPv6 change tracker drops it).
	v4 := "ip_family=IPv4"
	inRange("sync_proxy_rules_last_queued_timestamp_seconds", sec(since), sec(now), v4)
	if e.Mode == "iptables" {
		histogramSane("sync_partial_proxy_rules_duration_seconds", math.Inf(1), v4)
	}
	grew("network_programming_duration_seconds", v4)
	if m := healthSample(after, "kubeproxy_network_programming_duration_seconds", v4); m != nil && m.Histogram != nil {
		b := healthSample(before, "kubeproxy_network_programming_duration_seconds", v4)
		n := float64(m.Histogram.GetSampleCount()) - healthValue(b)
		sum := m.Histogram.GetSampleSum()
		if b != nil && b.Histogram != nil {
			sum -= b.Histogram.GetSampleSum()
		}
		if n > 0 && (sum < 0 || sum/n > now.Sub(since).Seconds()+1) {
			t.Errorf("%s: network programming latency of the change: %v s over %v samples, want at most %v s each",
				node, sum, n, now.Sub(since).Seconds())
		}
	}
	grew("conntrack_reconciler_sync_duration_seconds", v4)
	inRange("conntrack_reconciler_deleted_entries_total", 0, 1e9, v4)
	grew("sync_proxy_rules_endpoint_changes_total")
	grew("sync_proxy_rules_service_changes_total")
	inRange("sync_proxy_rules_endpoint_changes_pending", 0, 1e6)
	inRange("sync_proxy_rules_service_changes_pending", 0, 1e6)
	// node1 has no local endpoint for the iTP=Local service.
	lo := 0.0
	if node == "node1" {
		lo = 1
	}
	inRange("sync_proxy_rules_no_local_endpoints_total", lo, 1e6, v4, "traffic_policy=internal")
	grew("proxy_healthz_total", "code=200")
	grew("proxy_livez_total", "code=200")
}

const (
	// healthHAProxyPort is where HAProxy listens inside the client namespace.
	healthHAProxyPort = 18080
	// healthHAProxyInter is HAProxy's check interval and healthHAProxyChecks its
	// rise and fall counts.
	healthHAProxyInter  = 300 * time.Millisecond
	healthHAProxyChecks = 2
)

func testLoadBalancerHAProxy(t *testing.T, e *Env) {
	c := e.C
	node1, node2 := c.Node("node1"), c.Node("node2")
	a := c.AddPod(t, node2, "haproxy-a")
	b := c.AddPod(t, node1, "haproxy-b")
	client := c.Clients[1]
	np, hc := e.NodePort(), e.NodePort()
	objs := []runtime.Object{
		bed.Service(c.Key("haproxy"), bed.ClusterIP(e.ClusterIP()), bed.Port("p", 80, "TCP", 8080),
			bed.LoadBalancer(), bed.NodePort(np), bed.ExternalLocal(hc)),
		epSlice(e, "haproxy", "TCP", epEndpoint(a)),
	}
	epApply(t, e, objs...)

	lb := healthStartHAProxy(t, client.NS, []*bed.Node{node1, node2}, np, hc)
	lb.waitStates(t, 10*time.Second, map[string]string{node1.Short: "DOWN", node2.Short: "UP"})
	healthThroughLB(t, e, client, node2, np, a)

	// Move the endpoint to node1: once the proxies have synced, HAProxy must follow
	// within its checks (rise/fall checks, one interval each, plus one in flight).
	epUpdate(t, e, epSlice(e, "haproxy", "TCP", epEndpoint(b)))
	programmed := time.Now()
	follow := epChangeBound(e) + (healthHAProxyChecks+1)*healthHAProxyInter + time.Second
	lb.waitStates(t, follow, map[string]string{node1.Short: "UP", node2.Short: "DOWN"})
	t.Logf("HAProxy followed the endpoint to node1 %v after Programmed (bound %v)",
		time.Since(programmed).Round(time.Millisecond), follow)
	healthThroughLB(t, e, client, node1, np, b)
}

// healthThroughLB sends a bounded loop of requests through HAProxy: all must succeed,
// all from pod, with the client's own address kept (eTP=Local); the trace of the
// NodePort on node (HAProxy's only UP server) must agree.
func healthThroughLB(t *testing.T, e *Env, client *bed.Client, node *bed.Node, nodePort int32, pod *bed.Pod) {
	t.Helper()
	const n = 50
	counts := client.NS.CountAnswers(fmt.Sprintf("127.0.0.1:%d", healthHAProxyPort), n)
	t.Logf("through HAProxy: %v sources %v", counts, counts.Sources)
	if counts.Failures != 0 || counts.ByPod[pod.Name] != n {
		t.Errorf("through HAProxy: %v, want all %d answered by %s", counts, n, pod.Name)
	}
	if counts.Sources[client.IP.String()] != counts.ByPod[pod.Name] {
		t.Errorf("through HAProxy with eTP=Local: pods saw sources %v, want the client's %s", counts.Sources, client.IP)
	}
	e.assertTrace(t, node, externalPacket(client, epAddr(node.IP.String(), nodePort)), counts, 8080, pod)
}

// healthHAProxy is an HAProxy process in a client namespace.
type healthHAProxy struct {
	cmd    *exec.Cmd
	socket string // stats socket
	log    string
	exited chan struct{}
}

// healthStartHAProxy runs HAProxy in ns with one server per node (the NodePort on the
// node IP), checked with `option httpchk` against each node's healthCheckNodePort. It is
// stopped (by PID) when the test ends.
func healthStartHAProxy(t *testing.T, ns *bed.Namespace, nodes []*bed.Node, nodePort, hcPort int32) *healthHAProxy {
	t.Helper()
	bin := "/usr/sbin/haproxy"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("HAProxy missing (hack/install-deps.sh installs it): %v", err)
	}
	dir := t.TempDir()
	h := &healthHAProxy{socket: filepath.Join(dir, "stats.sock"), log: filepath.Join(dir, "haproxy.log"), exited: make(chan struct{})}
	var servers strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&servers, "    server %s %s check port %d\n", n.Short, epAddr(n.IP.String(), nodePort), hcPort)
	}
	cfg := fmt.Sprintf(`global
    stats socket %[1]s mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 1s
frontend fe
    bind 127.0.0.1:%[2]d
    default_backend nodes
backend nodes
    option httpchk GET /
    default-server inter %[3]dms fastinter %[3]dms downinter %[3]dms rise %[4]d fall %[4]d
%[5]s`, h.socket, healthHAProxyPort, healthHAProxyInter.Milliseconds(), healthHAProxyChecks, servers.String())
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	h.cmd = exec.Command(bin, "-db", "-f", cfgPath)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ns.Start(h.cmd); err != nil {
		t.Fatalf("start haproxy in %s: %v", ns.Name, err)
	}
	go func() { _ = h.cmd.Wait(); close(h.exited) }()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(5 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			t.Logf("haproxy log:\n%s", b)
		}
	})
	return h
}

// states reads each server's status (UP, DOWN, "UP 1/2", ...) from the stats socket.
func (h *healthHAProxy) states() (map[string]string, error) {
	select {
	case <-h.exited:
		b, _ := os.ReadFile(h.log)
		return nil, fmt.Errorf("haproxy exited: %s", b)
	default:
	}
	conn, err := net.DialTimeout("unix", h.socket, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "show stat\n"); err != nil {
		return nil, err
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "# ") {
		return nil, fmt.Errorf("unexpected show stat output %q", out)
	}
	cols := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := func(name string) int {
		for i, c := range cols {
			if c == name {
				return i
			}
		}
		return -1
	}
	px, sv, st := col("pxname"), col("svname"), col("status")
	states := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) > st && f[px] == "nodes" && f[sv] != "BACKEND" {
			states[f[sv]] = f[st]
		}
	}
	return states, nil
}

// waitStates waits (bounded) until every named server has exactly the wanted status.
func (h *healthHAProxy) waitStates(t *testing.T, bound time.Duration, want map[string]string) {
	t.Helper()
	bed.Eventually(t, bound, fmt.Sprintf("HAProxy servers %v", want), func() (bool, string) {
		got, err := h.states()
		if err != nil {
			return false, err.Error()
		}
		for name, st := range want {
			if got[name] != st {
				return false, fmt.Sprintf("states %v", got)
			}
		}
		return true, ""
	})
}
