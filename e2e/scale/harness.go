package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// Config shapes one harness invocation.
type Config struct {
	Services, Endpoints int
	Mode                string   // --proxy-mode
	ProxyBinary         string   // any kube-proxy-compatible binary
	Backends            []string // SVCPROXY_IPTABLES_BACKEND values ("" leaves it unset)
	Runs                int
	Adds                int           // single-endpoint additions per run
	ChurnRate           int           // endpoint updates per second
	ChurnDuration       time.Duration // 0 skips the churn phase
	Workers             int           // concurrent apiserver writers
	ColdTimeout         time.Duration
	FloorTimeout        time.Duration // 0 skips the iptables-restore floor
	ProfileDir          string        // CPU profiles of the cold start and churn when set
	CurveStep           time.Duration // when set: VmRSS, CPU and lag per window of the churn
	ExtraArgs           []string
	OnResult            func(all []Result) // after each run, e.g. to write the table so far
	Logf                func(format string, args ...any)
}

// Result is one run of one backend.
type Result struct {
	Backend              string
	Run                  int
	ColdStart            time.Duration
	ColdCPU, ColdChild   float64 // proxy / children CPU seconds until cold start done
	AddLatencies         []time.Duration
	ChurnLags            []time.Duration
	ChurnSent            int
	ChurnSuperseded      int
	Curve                []curvePoint // per CurveStep of the churn
	NPL50, NPL95         float64      // network programming latency over the churn (metric)
	NPLOK                bool
	ChurnCPU, ChurnKids  float64
	PeakRSS              uint64
	CPU, ChildCPU        float64
	FullBytes, PartBytes float64
	BytesOK              bool
	FullSync, PartSync   float64   // mean seconds (metrics), 0 when unknown
	NATRules             int       // lines in iptables-save -t nat after the cold start
	VirtualServers       int       // IPVS mode: virtual servers after the cold start
	ColdCalls            float64   // IPVS mode: kernel calls until the cold start was done
	AddCalls             []float64 // IPVS mode: kernel calls of each single add's sync
	FloorOne, FloorFed   floorResult
	Errors               []string
}

func (r *Result) errorf(format string, args ...any) {
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// Harness holds what all runs share: the apiserver and the objects in it.
type Harness struct {
	cfg  Config
	api  *bed.APIServer
	objs *objects
}

// NewHarness creates every Service and EndpointSlice in api, through a client with a
// raised rate limit.
func NewHarness(ctx context.Context, api *bed.APIServer, cfg Config) (*Harness, error) {
	rc := *api.Config
	rc.QPS, rc.Burst = 5000, 5000
	client, err := kubernetes.NewForConfig(&rc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	h := &Harness{cfg: cfg, api: api, objs: &objects{client: client, namespace: "scale",
		n: cfg.Services, m: cfg.Endpoints, probeIP: "203.0.113.2"}}
	start := time.Now()
	if err := h.objs.create(ctx, cfg.Workers); err != nil {
		return nil, err
	}
	cfg.Logf("created %d services and endpointslices (%d endpoints each) in %v", cfg.Services, cfg.Endpoints, time.Since(start).Round(time.Millisecond))
	return h, nil
}

// Run does one cold start, the single-endpoint additions, the churn and the restore
// floor for one backend, in a fresh node namespace torn down at the end.
func (h *Harness) Run(tb testing.TB, backend string, run int) (res Result) {
	res = Result{Backend: backend, Run: run}
	cfg := h.cfg
	ctx := context.Background()
	c := bed.NewCluster(tb, bed.ClusterOptions{Nodes: 1, Clients: 1, API: h.api})
	node, client := c.Nodes[0], c.Clients[0]
	pod := c.AddPod(tb, node, "echo", targetPort)
	if pod.IP.String() != h.objs.probeIP {
		tb.Fatalf("echo pod has %s, the probe service points at %s", pod.IP, h.objs.probeIP)
	}
	if err := client.RouteVia(ServiceCIDR, node); err != nil {
		tb.Fatalf("route service CIDR: %v", err)
	}
	spec := bed.ProxySpec{Binary: cfg.ProxyBinary, Args: append([]string{
		"--proxy-mode=" + cfg.Mode, "--profiling=true", "--metrics-bind-address=127.0.0.1:10249",
	}, cfg.ExtraArgs...)}
	if backend != "" {
		spec.Env = append(spec.Env, "SVCPROXY_IPTABLES_BACKEND="+backend)
	}
	p := c.StartProxyWith(tb, node, spec)
	started := time.Now()
	pid := p.PID()
	m := &meter{ns: node.NS, pid: pid}
	if cfg.ProfileDir != "" {
		go m.profile(filepath.Join(cfg.ProfileDir, fmt.Sprintf("cold-%s-%d.pprof", backend, run)), 30*time.Second)
	}

	// Cold start: the probe service answers from the client, then its rules are saved.
	target := fmt.Sprintf("%s:%d", h.objs.clusterIP(h.objs.probe()), svcPort)
	deadline := started.Add(cfg.ColdTimeout)
	for {
		if !p.Running() {
			tb.Fatalf("proxy exited during cold start:\n%s", tail(p.Log(), 3000))
		}
		if a, err := client.NS.HTTPGet(target, 500*time.Millisecond); err == nil && a.Pod == "echo" {
			// IPVS mode programs virtual servers one by one, not in one transaction:
			// the probe's may come before others, so the cold start ends when all are in.
			if cfg.Mode != "ipvs" || h.allVirtualServers(node.NS, deadline) {
				res.ColdStart = time.Since(started)
			}
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not answer within %v", target, cfg.ColdTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ps, err := readProc(pid); err == nil {
		res.ColdCPU, res.ColdChild = ps.CPU, ps.ChildCPU
	}
	if res.ColdStart == 0 {
		tb.Fatalf("the kernel did not get all %d virtual servers within %v", cfg.Services, cfg.ColdTimeout)
	}
	cfg.Logf("[%s run %d] cold start %v", backend, run, res.ColdStart.Round(time.Millisecond))
	res.ColdCalls, _ = m.kernelCalls()
	dump, err := execIn(node.NS, 5*time.Minute, "", iptablesTool(backend, "iptables-save"))
	if err != nil {
		tb.Fatalf("iptables-save after cold start: %v", err)
	}
	res.NATRules = natRules(dump)
	if cfg.Mode == "ipvs" {
		h.checkIPVS(node.NS, &res)
	} else if !strings.Contains(dump, "-A "+svcChain(h.objs.portName(h.objs.probe()))+" ") ||
		!strings.Contains(dump, "-d "+h.objs.clusterIP(h.objs.probe())+"/32") {
		res.errorf("probe service answered but its rules are not in iptables-save")
	}
	if text, err := m.metrics(); err == nil {
		res.FullBytes, res.BytesOK = bed.MetricValue(text, "svcproxy_sync_proxy_rules_restore_bytes", ipv4)
		res.FullSync, _ = histMean(text, "kubeproxy_sync_full_proxy_rules_duration_seconds", ipv4)
	}

	h.singleAdds(tb, m, &res)
	if cfg.ChurnDuration > 0 {
		h.churn(tb, m, &res)
	}
	if ps, err := readProc(pid); err == nil {
		res.PeakRSS, res.CPU, res.ChildCPU = ps.PeakRSS, ps.CPU, ps.ChildCPU
	} else {
		res.errorf("read /proc of the proxy: %v", err)
	}
	if !p.Running() {
		res.errorf("proxy exited:\n%s", tail(p.Log(), 2000))
	}
	if text, err := m.metrics(); err == nil {
		if v, ok := bed.MetricValue(text, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"); ok && v > 0 {
			res.errorf("%v iptables-restore failures", v)
		}
	}
	p.Stop(tb)
	_ = ctx
	// IPVS mode restores only a few fixed rules: its floor is not the question.
	if cfg.FloorTimeout > 0 && cfg.Mode != "ipvs" {
		res.FloorOne = restoreFloor(backend, dump, cfg.FloorTimeout)
		if backend != "legacy" {
			res.FloorFed = restoreFloor(backend, splitLikeProxy(dump, 100), cfg.FloorTimeout)
		}
		cfg.Logf("[%s run %d] restore floor: one transaction %v (timed out %v), fed in blocks %v",
			backend, run, res.FloorOne.Wall.Round(time.Millisecond), res.FloorOne.TimedOut, res.FloorFed.Wall.Round(time.Millisecond))
		for _, f := range []floorResult{res.FloorOne, res.FloorFed} {
			if f.Err != nil {
				res.errorf("restore floor: %v", f.Err)
			}
		}
	}
	return res
}

// ipv4 selects the IPv4 series: the proxy also syncs an (empty) IPv6 family.
const ipv4 = `ip_family="IPv4"`

func natRules(dump string) int {
	in, n := false, 0
	for _, l := range strings.Split(dump, "\n") {
		switch {
		case l == "*nat":
			in = true
		case l == "COMMIT":
			in = false
		case in && strings.HasPrefix(l, "-A "):
			n++
		}
	}
	return n
}

// meter reads the proxy's metrics and profiles from inside the node namespace.
type meter struct {
	ns  *bed.Namespace
	pid int
}

func (m *meter) metrics() (string, error) {
	code, body, err := m.ns.HTTPGetURL("http://127.0.0.1:10249/metrics", 10*time.Second)
	if err == nil && code != 200 {
		err = fmt.Errorf("metrics: status %d", code)
	}
	return body, err
}

// kernelCalls returns the IPVS-mode kernel calls (IPv4, every operation) and syncs so
// far; both 0 when the proxy does not export them.
func (m *meter) kernelCalls() (calls, syncs float64) {
	text, err := m.metrics()
	if err != nil {
		return 0, 0
	}
	calls, _ = bed.MetricValue(text, "svcproxy_ipvs_kernel_calls_total", ipv4)
	syncs, _ = bed.MetricValue(text, "kubeproxy_sync_proxy_rules_duration_seconds_count", ipv4)
	return calls, syncs
}

// allVirtualServers polls the node's IPVS table until it holds a virtual server per
// Service or deadline passes; it reports whether it got there. The pause between polls
// is at least as long as the last poll took.
func (h *Harness) allVirtualServers(ns *bed.Namespace, deadline time.Time) bool {
	for time.Now().Before(deadline) {
		start := time.Now()
		if out, err := execIn(ns, 5*time.Minute, "", "ipvsadm", "-Ln"); err == nil && countVirtualServers(out) >= h.objs.n {
			return true
		}
		time.Sleep(max(pollInterval, time.Since(start)))
	}
	return false
}

func countVirtualServers(ipvsadm string) int {
	n := 0
	for _, l := range strings.Split(ipvsadm, "\n") {
		if strings.HasPrefix(l, "TCP ") || strings.HasPrefix(l, "UDP ") || strings.HasPrefix(l, "SCTP ") {
			n++
		}
	}
	return n
}

// checkIPVS counts the node's virtual servers and checks the probe service's is there.
func (h *Harness) checkIPVS(ns *bed.Namespace, res *Result) {
	out, err := execIn(ns, 5*time.Minute, "", "ipvsadm", "-Ln")
	if err != nil {
		res.errorf("ipvsadm -Ln after cold start: %v", err)
		return
	}
	probe := fmt.Sprintf("TCP  %s:%d", h.objs.clusterIP(h.objs.probe()), svcPort)
	res.VirtualServers = countVirtualServers(out)
	if !strings.Contains(out, probe) {
		res.errorf("probe service answered but %q is not in ipvsadm -Ln", probe)
	}
}

// profile saves a CPU profile of d (waiting up to 10 s for the metrics server).
func (m *meter) profile(path string, d time.Duration) {
	url := fmt.Sprintf("http://127.0.0.1:10249/debug/pprof/profile?seconds=%d", int(d.Seconds()))
	for range 100 {
		code, body, err := m.ns.HTTPGetURL(url, d+30*time.Second)
		if err == nil && code == 200 {
			_ = os.WriteFile(path, []byte(body), 0o644)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
