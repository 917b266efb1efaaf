package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// TestNetlinkFailureHealthz is TestRestoreFailureHealthz for IPVS mode, with a fault the
// real kernel makes: IPVS refuses (EINVAL) a real server whose address the local routing
// table calls neither local nor unicast. The test adds a broadcast route for a third
// pod's address to the node's local table and a Service whose only endpoint is that pod
// (unreachable and blackhole routes, in either table, do not make IPVS refuse: tried in
// the VM's 6.1 kernel). While the kernel refuses it, the other Service keeps its virtual
// server and carries traffic, the failed netlink calls are counted, and /healthz turns
// 503 once the change has waited 2 × sync period; when the route is removed, the real
// server is added and /healthz is 200.
func TestNetlinkFailureHealthz(t *testing.T) {
	onlyMode(t, "ipvs", "iptables mode writes no netlink objects per endpoint; TestRestoreFailureHealthz is its counterpart")
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	pod3 := e.c.AddPod(t, e.node, "pod3")
	svc, slice := e.web("web", "198.51.100.20", 0, e.pods...)
	api.Apply(t, svc, slice)
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{Args: proxyArgs(syncPeriodArg())})
	p.WaitHealthy(t)
	pid := p.PID()
	target := addr("198.51.100.20", 80)
	e.waitAnswer(t, target, answerTimeout)
	const kernelErrors = "svcproxy_ipvs_kernel_errors_total"
	v4 := `ip_family="IPv4"`
	before := metric(t, p, kernelErrors, v4)

	l := startLoad(t, e.client.NS, target)
	heal := broadcastRoute(t, e.node, pod3.IP.String())
	changed := time.Now()
	svc2, slice2 := e.web("web2", "198.51.100.21", 0, pod3)
	api.Apply(t, svc2, slice2)

	p.WaitMetric(t, kernelErrors, func(v float64) bool { return v > before }, v4)
	waitUnhealthy(t, p, changed, "the kernel refuses the real server")
	servers := bed.ExecInNS(t, e.node.NS, "ipvsadm", "-Sn")
	if strings.Contains(servers, "-r "+pod3.IP.String()+":") {
		t.Errorf("pod3 is a real server although the kernel should refuse it:\n%s", servers)
	}
	for _, pod := range e.pods {
		if !strings.Contains(servers, "-a -t "+target+" -r "+pod.IP.String()+":8080") {
			t.Errorf("web lost real server %s after the failed syncs:\n%s", pod.Name, servers)
		}
	}
	requireSameProcess(t, p, pid)

	heal()
	healed := metric(t, p, kernelErrors, v4)
	expectOnly(t, e, addr("198.51.100.21", 80), pod3)
	waitHealthyAgain(t, p, "after the broadcast route is removed")
	l.Stop(t)
	requireSameProcess(t, p, pid)
	// At most the sync already running when the route was removed may still fail.
	if after := metric(t, p, kernelErrors, v4); after > healed+1 {
		t.Errorf("netlink errors went on after the route was back: %v → %v", healed, after)
	}
}

// broadcastRoute adds a local-table broadcast route for ip on the node's link to it and
// returns the function that removes it (also run at cleanup).
func broadcastRoute(t *testing.T, n *bed.Node, ip string) (heal func()) {
	t.Helper()
	route := strings.Fields(bed.ExecInNS(t, n.NS, "ip", "-o", "route", "show", ip+"/32"))
	if len(route) < 3 || route[1] != "dev" {
		t.Fatalf("route to %s in %s: %q, want \"%s dev ...\"", ip, n.Short, route, ip)
	}
	args := []string{"broadcast", ip, "dev", route[2], "table", "local"}
	bed.ExecInNS(t, n.NS, "ip", append([]string{"route", "add"}, args...)...)
	done := false
	heal = func() {
		if !done {
			done = true
			bed.ExecInNS(t, n.NS, "ip", append([]string{"route", "del"}, args...)...)
		}
	}
	t.Cleanup(heal)
	return heal
}
