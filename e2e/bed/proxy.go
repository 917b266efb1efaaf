package bed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var proxyBuild struct {
	sync.Mutex
	dir, bin string
	err      error
}

// ProxyBinary returns the svcproxy binary: $SVCPROXY_BIN when set, else one built once per
// test binary with `go build -o <tmp>/svcproxy ./cmd/svcproxy` at the repository root.
func ProxyBinary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("SVCPROXY_BIN"); b != "" {
		return b
	}
	proxyBuild.Lock()
	defer proxyBuild.Unlock()
	if proxyBuild.bin == "" && proxyBuild.err == nil {
		proxyBuild.bin, proxyBuild.err = buildProxy()
	}
	if proxyBuild.err != nil {
		t.Fatalf("bed: %v", proxyBuild.err)
	}
	return proxyBuild.bin
}

func buildProxy() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "svp-bin-")
	if err != nil {
		return "", err
	}
	proxyBuild.dir = dir
	bin := filepath.Join(dir, "svcproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/svcproxy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build svcproxy: %w\n%s", err, out)
	}
	return bin, nil
}

func removeProxyBuild() {
	proxyBuild.Lock()
	defer proxyBuild.Unlock()
	if proxyBuild.dir != "" {
		os.RemoveAll(proxyBuild.dir)
		proxyBuild.dir, proxyBuild.bin = "", ""
	}
}

// ProxySpec says how to run a proxy in a node namespace.
type ProxySpec struct {
	Binary string   // svcproxy binary; ProxyBinary(t) when empty
	Args   []string // appended after the defaults (a repeated flag overrides a default)
	Env    []string // added to the environment
}

// Proxy is a proxy process running inside a node namespace.
type Proxy struct {
	Node        *Node
	Binary      string
	Args        []string // the full command line after the binary
	Env         []string
	LogPath     string
	HealthzAddr string // nodeIP:10256
	MetricsAddr string // nodeIP:10249
	proc        *process
	starts      int
}

// StartProxy starts svcproxy in node's namespace against the cluster's apiserver, as user
// system:kube-proxy, with extra flags appended to the defaults.
func (c *Cluster) StartProxy(t testing.TB, node *Node, extraArgs ...string) *Proxy {
	t.Helper()
	return c.StartProxyWith(t, node, ProxySpec{Args: extraArgs})
}

// StartProxyWith is StartProxy with a chosen binary and environment.
func (c *Cluster) StartProxyWith(t testing.TB, node *Node, spec ProxySpec) *Proxy {
	t.Helper()
	if c.API == nil {
		t.Fatal("bed: StartProxy needs a cluster created with ClusterOptions.API")
	}
	if spec.Binary == "" {
		spec.Binary = ProxyBinary(t)
	}
	p := &Proxy{
		Node:        node,
		Binary:      spec.Binary,
		Env:         spec.Env,
		LogPath:     filepath.Join(t.TempDir(), node.Short+"-svcproxy.log"),
		HealthzAddr: node.IP.String() + ":10256",
		MetricsAddr: node.IP.String() + ":10249",
	}
	clusterCIDRs := "203.0.113.0/25"
	if c.opts.IPv6 {
		clusterCIDRs += ",2001:db8:1::/64"
	}
	p.Args = append([]string{
		"--kubeconfig=" + c.API.Kubeconfig(t, c.API.ProxyToken),
		"--hostname-override=" + node.Name,
		"--healthz-bind-address=" + p.HealthzAddr,
		"--metrics-bind-address=" + p.MetricsAddr,
		// nf_conntrack_max is not writable inside a namespace.
		"--conntrack-max-per-core=0",
		"--cluster-cidr=" + clusterCIDRs,
		"--v=2",
	}, spec.Args...)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("bed: %s log (%s):\n%s", p.Node.Short, p.LogPath, tailFile(p.LogPath, 300))
		}
	})
	if err := p.start(); err != nil {
		t.Fatalf("bed: %v", err)
	}
	return p
}

func (p *Proxy) start() error {
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open proxy log: %w", err)
	}
	defer f.Close()
	p.starts++
	fmt.Fprintf(f, "=== bed: start #%d: %s %s\n", p.starts, p.Binary, strings.Join(p.Args, " "))
	cmd := exec.Command(p.Binary, p.Args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = append(os.Environ(), p.Env...)
	p.proc, err = startProcess(cmd, p.Node.NS.Start)
	if err != nil {
		return fmt.Errorf("start proxy in %s: %w", p.Node.Name, err)
	}
	return nil
}

// stop sends SIGTERM and, after 15 s, SIGKILL.
func (p *Proxy) stop() {
	if p.proc != nil {
		p.proc.stop(15 * time.Second)
	}
}

// Stop stops the proxy (SIGTERM, then SIGKILL after a bound).
func (p *Proxy) Stop(t testing.TB) {
	t.Helper()
	p.stop()
}

// Restart stops the proxy and starts it again with the same command line.
func (p *Proxy) Restart(t testing.TB) {
	t.Helper()
	p.stop()
	if err := p.start(); err != nil {
		t.Fatalf("bed: restart: %v", err)
	}
}

// Running reports whether the process is still alive.
func (p *Proxy) Running() bool { return p.proc != nil && p.proc.running() }

// PID is the process id of the current run.
func (p *Proxy) PID() int { return p.proc.cmd.Process.Pid }

// Log returns the log so far.
func (p *Proxy) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// HealthzStatus is the decoded /healthz answer.
type HealthzStatus struct {
	Code         int
	LastUpdated  time.Time
	NodeEligible *bool
	Body         string
}

// Healthz fetches http://HealthzAddr/healthz from inside the node namespace.
func (p *Proxy) Healthz() (HealthzStatus, error) {
	code, body, err := p.Node.NS.httpGetRaw("http://"+p.HealthzAddr+"/healthz", 2*time.Second)
	if err != nil {
		return HealthzStatus{}, err
	}
	h := HealthzStatus{Code: code, Body: body}
	var raw struct {
		LastUpdated  string `json:"lastUpdated"`
		NodeEligible *bool  `json:"nodeEligible"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		return h, fmt.Errorf("decode healthz %q: %w", body, err)
	}
	h.NodeEligible = raw.NodeEligible
	h.LastUpdated, err = parseHealthzTime(raw.LastUpdated)
	return h, err
}

// parseHealthzTime accepts RFC 3339 and Go's time.Time.String form (kube-proxy prints the
// latter, possibly with a monotonic "m=+…" suffix).
func parseHealthzTime(s string) (time.Time, error) {
	if i := strings.Index(s, " m="); i >= 0 {
		s = s[:i]
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999 -0700 MST"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("unknown healthz time %q", s)
}

// Metrics fetches http://MetricsAddr/metrics from inside the node namespace.
func (p *Proxy) Metrics() (string, error) {
	code, body, err := p.Node.NS.httpGetRaw("http://"+p.MetricsAddr+"/metrics", 5*time.Second)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return body, fmt.Errorf("metrics: status %d", code)
	}
	return body, nil
}

// MetricValue sums the samples of metric name whose labels contain every given
// `key="value"` pair; ok is false when no sample matched.
func MetricValue(text, name string, labels ...string) (sum float64, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		series, value := line[:sp], line[sp+1:]
		metric, lbls, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(lbls, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		sum += v
		ok = true
	}
	return sum, ok
}

// httpGetRaw GETs a URL from inside the namespace.
func (n *Namespace) httpGetRaw(url string, timeout time.Duration) (int, string, error) {
	tr := &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	return resp.StatusCode, readAllLimited(resp.Body, 4<<20), nil
}

// HTTPGetURL GETs any URL from inside the namespace and returns status and body (for
// healthCheckNodePorts, /proxyMode, ...).
func (n *Namespace) HTTPGetURL(url string, timeout time.Duration) (int, string, error) {
	return n.httpGetRaw(url, timeout)
}
