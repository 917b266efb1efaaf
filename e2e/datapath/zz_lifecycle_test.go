package datapath

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/vishvananda/netlink"
)

// Lifecycle scenarios: a refused iptables-restore, a proxy restart and `--cleanup`.
// They restart or stop the shared proxies, so this file sorts last (files init in name
// order) and each scenario leaves the proxies running as it found them.

func init() {
	// The wrappers stand in for the iptables tools; IPVS mode programs the kernel
	// over netlink.
	register("RestoreFailureKeepsTraffic", testRestoreFailureKeepsTraffic, "iptables")
	register("RestartKeepsTraffic", testRestartKeepsTraffic)
	register("Cleanup", testCleanup)
}

// lifecycleRetryPeriod is the sync period (= retry period after a failed sync) of the
// proxy whose restores are made to fail.
const lifecycleRetryPeriod = 5 * time.Second

// lifecycleWrappers writes, into dir, wrappers for every iptables-restore variant
// present: while flag exists they read their input, say what iptables-restore says
// when a commit fails, and exit 1; otherwise they exec the real tool. Every call is
// logged to dir/calls.log.
func lifecycleWrappers(t *testing.T, dir, flag string) {
	t.Helper()
	n := 0
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{"nft", "legacy"} {
			name := fam + "-" + backend + "-restore"
			real, err := exec.LookPath(name)
			if err != nil {
				if real, err = exec.LookPath("/usr/sbin/" + name); err != nil {
					continue
				}
			}
			script := fmt.Sprintf(`#!/bin/sh
echo "%[1]s $*" >> %[2]s/calls.log
if [ -e %[3]s ]; then
	cat >/dev/null
	echo "%[1]s: line 3 failed" >&2
	exit 1
fi
exec %[4]s "$@"
`, name, dir, flag, real)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no iptables-*-restore tool found to wrap")
	}
}

func testRestoreFailureKeepsTraffic(t *testing.T, e *Env) {
	c := e.C
	node1 := c.Node("node1")
	a := c.AddPod(t, c.Node("node2"), "restorefail-a")
	b := c.AddPod(t, c.Node("node2"), "restorefail-b")
	client := c.AddPod(t, node1, "restorefail-client")

	dir := t.TempDir()
	flag := filepath.Join(dir, "fail")
	lifecycleWrappers(t, dir, flag)
	p := e.Proxies["node1"]
	epRestartWith(t, p, []string{"PATH=" + dir + ":" + os.Getenv("PATH") + ":/usr/sbin:/sbin"},
		[]string{fmt.Sprintf("--iptables-sync-period=%v", lifecycleRetryPeriod)})
	if calls, err := os.ReadFile(filepath.Join(dir, "calls.log")); err != nil || len(calls) == 0 {
		t.Fatalf("the proxy did not run the wrapped iptables-restore (calls.log: %q, %v)", calls, err)
	}
	t.Cleanup(func() { os.Remove(flag) })

	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "restorefail", "TCP", ip, nil, epEndpoint(a))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), a)

	metrics, err := p.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	const failures = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
	base, _ := bed.MetricValue(metrics, failures, `ip_family="IPv4"`)

	// Restores now fail: the endpoint change cannot be programmed on node1.
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.API.Apply(t, epSlice(e, "restorefail", "TCP", epEndpoint(b)))
	p.WaitMetric(t, failures, func(v float64) bool { return v > base }, `ip_family="IPv4"`)
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "while restores fail", counts, epRequests, a)
	// The kernel still holds the old rules, and so does the trace.
	e.assertTrace(t, node1, podPacket(client, target), counts, 8080, a, b)
	save, err := node1.IPTablesSave(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(epLinesWith(save, a.IP.String())) == 0 || len(epLinesWith(save, b.IP.String())) != 0 {
		t.Errorf("while restores fail, node1's rules should still be the old ones (to %s, not %s):\n%s", a.IP, b.IP, save)
	}

	// Restores work again: the retry applies the change.
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	// The retry is due a retry period after the failure; it is a full sync, which takes
	// a few hundred milliseconds on a loaded machine.
	bound := lifecycleRetryPeriod + epChangeBound(e) + time.Second
	took := epWaitExact(t, client.NS, target, bound, b)
	t.Logf("change applied %v after restores work again (retry period %v)", took, lifecycleRetryPeriod)
	counts = client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "after the retry", counts, epRequests, b)
	e.assertTrace(t, node1, podPacket(client, target), counts, 8080, a, b)
}

// lifecycleLoad sends one HTTP request every 50 ms (20 req/s) from ns to target until
// stopped (at most max requests) and counts the outcomes.
type lifecycleLoad struct {
	mu     sync.Mutex
	counts bed.Counts
	sent   int
	stop   chan struct{}
	done   chan struct{}
}

func lifecycleStartLoad(ns *bed.Namespace, target string, max int) *lifecycleLoad {
	l := &lifecycleLoad{counts: bed.Counts{ByPod: map[string]int{}, Sources: map[string]int{}},
		stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < max; i++ {
			a, err := ns.HTTPGet(target, bed.RequestTimeout)
			l.mu.Lock()
			l.sent++
			if err != nil {
				l.counts.Failures++
				l.counts.Errors = append(l.counts.Errors, time.Now().Format("15:04:05.000")+" "+err.Error())
			} else {
				l.counts.ByPod[a.Pod]++
				l.counts.Sources[a.SourceIP()]++
			}
			l.mu.Unlock()
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

// Stop ends the load and returns what it saw.
func (l *lifecycleLoad) Stop() (bed.Counts, int) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts, l.sent
}

func testRestartKeepsTraffic(t *testing.T, e *Env) {
	c := e.C
	node1 := c.Node("node1")
	a := c.AddPod(t, node1, "restart-a")
	b := c.AddPod(t, c.Node("node2"), "restart-b")
	client := c.AddPod(t, node1, "restart-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "restart", "TCP", ip, nil, epEndpoint(a), epEndpoint(b))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), a, b)

	// 20 s at 20 req/s at most; the restart takes a few seconds.
	load := lifecycleStartLoad(client.NS, target, 400)
	t.Cleanup(func() { load.Stop() })
	time.Sleep(time.Second)
	p := e.Proxies[node1.Short]
	restarted := time.Now()
	epRestart(t, p)
	t.Logf("proxy on %s restarted and synced in %v", node1.Short, time.Since(restarted).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	counts, sent := load.Stop()
	t.Logf("%d requests during the restart: %v", sent, counts)
	if counts.Failures != 0 {
		t.Errorf("%d of %d requests failed while the proxy restarted: %v", counts.Failures, sent, counts.Errors)
	}
	if sent < 60 || counts.ByPod[a.Name] == 0 || counts.ByPod[b.Name] == 0 {
		t.Errorf("load too small or one-sided to show anything: %d requests, %v", sent, counts)
	}
	// The restarted proxy programmed the same service again.
	e.assertTrace(t, node1, podPacket(client, target), counts, 8080, a, b)
}

func testCleanup(t *testing.T, e *Env) {
	c := e.C
	pod := c.AddPod(t, c.Node("node2"), "cleanup-a")
	client := c.AddPod(t, c.Node("node1"), "cleanup-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "cleanup", "TCP", ip, nil, epEndpoint(pod))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), pod)

	t.Cleanup(func() {
		for _, p := range e.Proxies {
			if !p.Running() {
				epRestart(t, p)
			}
		}
	})
	for _, p := range e.Proxies {
		p.Stop(t)
	}
	for _, n := range c.Nodes {
		out, err := n.NS.Exec(e.Proxies[n.Short].Binary, "--cleanup", "--v=2")
		if err != nil {
			t.Fatalf("svcproxy --cleanup in %s: %v", n.Short, err)
		}
		t.Logf("%s: svcproxy --cleanup:\n%s", n.Short, lifecycleTail(out, 10))
		for _, left := range lifecycleLeftovers(t, e, n) {
			t.Errorf("%s after --cleanup: %s", n.Short, left)
		}
	}
	// With the rules gone, the ClusterIP is just an unrouted address.
	for i := 0; i < 3; i++ {
		if r := client.NS.TCPConnect(target, time.Second); r.Outcome == bed.Connected {
			t.Errorf("connect %d to %s after --cleanup: connected, want nothing to serve it", i+1, target)
		}
	}

	// The proxies come back and program everything again.
	for _, p := range e.Proxies {
		epRestart(t, p)
	}
	epWaitFirst(t, "answer via "+target+" after the restart", epFirstAnswerTimeout, epHTTP(client.NS, target), pod)
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "after cleanup and restart", counts, epRequests, pod)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, pod)
}

// lifecycleLeftovers lists what svcproxy left in node: KUBE-* in any iptables backend
// and family; in IPVS mode also KUBE-* ipsets, virtual servers and kube-ipvs0.
func lifecycleLeftovers(t *testing.T, e *Env, n *bed.Node) []string {
	t.Helper()
	left := lifecycleIPTables(t, n, func(string) bool { return true })
	if e.Mode != "ipvs" {
		return left
	}
	return append(left, lifecycleIPVS(t, n)...)
}

// lifecycleIPTables lists the iptables lines of node that mention KUBE- and that match
// reports, in any backend and family.
func lifecycleIPTables(t *testing.T, n *bed.Node, reports func(line string) bool) []string {
	t.Helper()
	// kubelet's anti-martian KUBE-FIREWALL (which svcproxy copies, as kube-proxy does)
	// guards route_localnet=1; kube-proxy's cleanup leaves it, and so may svcproxy's
	// while route_localnet stays on.
	localnet, err := n.NS.ReadSysctl("net.ipv4.conf.all.route_localnet")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, tool := range []string{"iptables-save", "ip6tables-save", "iptables-nft-save", "ip6tables-nft-save",
		"iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				continue
			}
			tool = "/usr/sbin/" + tool
		}
		out := bed.ExecInNS(t, n.NS, tool)
		for _, line := range strings.Split(out, "\n") {
			switch {
			case !strings.Contains(line, "KUBE-") || !reports(line):
			case localnet == "1" && strings.Count(line, "KUBE-") == strings.Count(line, "KUBE-FIREWALL"):
				t.Logf("%s: %s: kept with route_localnet=1: %s", n.Short, filepath.Base(tool), line)
			default:
				left = append(left, filepath.Base(tool)+": "+line)
			}
		}
	}
	return left
}

// lifecycleIPVS lists what IPVS mode leaves in node: KUBE-* ipsets, virtual servers
// and kube-ipvs0.
func lifecycleIPVS(t *testing.T, n *bed.Node) []string {
	t.Helper()
	var left []string
	for _, line := range strings.Split(bed.ExecInNS(t, n.NS, "ipset", "list", "-n"), "\n") {
		if strings.HasPrefix(line, "KUBE-") {
			left = append(left, "ipset "+line)
		}
	}
	for _, line := range strings.Split(bed.ExecInNS(t, n.NS, "ipvsadm", "-Ln"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP" || f[0] == "FWM") {
			left = append(left, "IPVS service "+line)
		}
	}
	h, err := n.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var notFound netlink.LinkNotFoundError
	if _, err := h.LinkByName("kube-ipvs0"); err == nil {
		left = append(left, "link kube-ipvs0")
	} else if !errors.As(err, &notFound) {
		t.Fatalf("look up kube-ipvs0 in %s: %v", n.Short, err)
	}
	return left
}

func lifecycleTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
