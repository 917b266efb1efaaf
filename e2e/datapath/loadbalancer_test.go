package datapath

import (
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// External-address scenarios: LoadBalancer ingress IPs (with source ranges, with ipMode
// Proxy) and externalIPs, reached by clients that route 203.0.113.192/26 via node1.

func init() {
	register("LoadBalancerSourceRanges", testLoadBalancerSourceRanges)
	register("LoadBalancerIPModeProxy", testLoadBalancerIPModeProxy)
	register("ExternalIP", testExternalIP)
}

// lbRequests is the size of the counted loops from clients.
const lbRequests = 50

// lbAssertServed checks a counted loop: every request answered by one of pods.
func lbAssertServed(t *testing.T, what string, c bed.Counts, pods ...*bed.Pod) {
	t.Helper()
	t.Logf("%s: %v sources %v", what, c, c.Sources)
	if c.Failures != 0 {
		t.Errorf("%s: %d of %d requests failed: %v", what, c.Failures, lbRequests, c)
	}
	for name := range c.ByPod {
		if svcPodIndex(name, pods) < 0 {
			t.Errorf("%s: unexpected pod %q answered: %v", what, name, c)
		}
	}
}

func testLoadBalancerSourceRanges(t *testing.T, e *Env) {
	c := e.C
	if len(c.Clients) < 2 {
		t.Fatalf("needs two clients, the shared cluster has %d", len(c.Clients))
	}
	allowed, denied := c.Clients[0], c.Clients[1]
	a := c.AddPod(t, c.Node("node1"), "lbranges-a")
	b := c.AddPod(t, c.Node("node2"), "lbranges-b")
	lbIP := e.ExternalIP()
	svcApply(t, e,
		bed.Service(c.Key("lbranges"), bed.ClusterIP(e.ClusterIP()), bed.Port("p", 80, "TCP", 8080),
			bed.LoadBalancer(lbIP), bed.NoNodePorts(), bed.SourceRanges(allowed.IP.String()+"/32")),
		bed.EndpointSlice(c.Key("lbranges-1"), "lbranges", bed.SlicePort("p", 8080, "TCP"),
			svcEndpoint(a), svcEndpoint(b)))

	target := svcAddr(lbIP, 80)
	svcWaitHTTP(t, allowed.NS, target, a, b)
	counts := allowed.NS.CountAnswers(target, lbRequests)
	lbAssertServed(t, allowed.Name+" (in range)", counts, a, b)
	// The clients route the external range via node1.
	e.assertTrace(t, c.Node("node1"), externalPacket(allowed, target), counts, 8080, a, b)
	svcAssertNoAnswer(t, denied.Name+" (outside the source ranges) → "+target, func(wait time.Duration) (bed.Answer, error) {
		return denied.NS.HTTPGet(target, wait)
	})
	e.assertTraceRefused(t, c.Node("node1"), externalPacket(denied, target), denied.NS, target)
}

func testLoadBalancerIPModeProxy(t *testing.T, e *Env) {
	c := e.C
	a := c.AddPod(t, c.Node("node2"), "lbproxy-a")
	podClient := c.AddPod(t, c.Node("node1"), "lbproxy-client")
	client := c.Clients[0]
	clusterIP, vipIP, proxyIP := e.ClusterIP(), e.ExternalIP(), e.ExternalIP()
	// A second ingress with the default ipMode (VIP) shows that LB IPs of this very
	// Service are programmed; only the Proxy-mode one must be left to the load balancer.
	svcApply(t, e,
		bed.Service(c.Key("lbproxy"), bed.ClusterIP(clusterIP), bed.Port("p", 80, "TCP", 8080),
			bed.LoadBalancer(vipIP), bed.LBIngressProxy(proxyIP), bed.NoNodePorts()),
		bed.EndpointSlice(c.Key("lbproxy-1"), "lbproxy", bed.SlicePort("p", 8080, "TCP"), svcEndpoint(a)))

	svcWaitHTTP(t, podClient.NS, svcAddr(clusterIP, 80), a)
	vipTarget := svcAddr(vipIP, 80)
	svcWaitHTTP(t, client.NS, vipTarget, a)
	counts := client.NS.CountAnswers(vipTarget, lbRequests)
	lbAssertServed(t, "VIP ingress", counts, a)
	e.assertTrace(t, c.Node("node1"), externalPacket(client, vipTarget), counts, 8080, a)

	for _, n := range c.Nodes {
		state, what := lbKernelState(t, e, n)
		if !lbMentions(state, vipIP) {
			t.Errorf("%s %s has nothing for the VIP ingress %s (the check cannot see LB IPs):\n%s", n.Short, what, vipIP, state)
		}
		if lbMentions(state, proxyIP) {
			t.Errorf("%s %s has an entry for ipMode=Proxy ingress %s:\n%s", n.Short, what, proxyIP, lbLinesWith(state, proxyIP))
		}
	}
	proxyTarget := svcAddr(proxyIP, 80)
	svcAssertNoAnswer(t, "client → ipMode=Proxy ingress "+proxyTarget, func(wait time.Duration) (bed.Answer, error) {
		return client.NS.HTTPGet(proxyTarget, wait)
	})
	// Left to the load balancer: svcproxy does not touch the packet.
	e.assertTraceNoAnswer(t, c.Node("node1"), externalPacket(client, proxyTarget), "ACCEPT")
}

func testExternalIP(t *testing.T, e *Env) {
	c := e.C
	a := c.AddPod(t, c.Node("node1"), "extip-a")
	b := c.AddPod(t, c.Node("node2"), "extip-b")
	client := c.Clients[0]
	extIP := e.ExternalIP()
	svcApply(t, e,
		bed.Service(c.Key("extip"), bed.ClusterIP(e.ClusterIP()), bed.Port("p", 80, "TCP", 8080), bed.ExternalIPs(extIP)),
		bed.EndpointSlice(c.Key("extip-1"), "extip", bed.SlicePort("p", 8080, "TCP"), svcEndpoint(a), svcEndpoint(b)))

	target := svcAddr(extIP, 80)
	svcWaitHTTP(t, client.NS, target, a, b)
	counts := client.NS.CountAnswers(target, lbRequests)
	lbAssertServed(t, "external IP", counts, a, b)
	e.assertTrace(t, c.Node("node1"), externalPacket(client, target), counts, 8080, a, b)
}

// lbKernelState is the node's service state as text: iptables-save in iptables mode,
// the IPVS table (`ipvsadm -Ln`) and kube-ipvs0's addresses in ipvs mode.
func lbKernelState(t *testing.T, e *Env, n *bed.Node) (state, what string) {
	t.Helper()
	switch e.Mode {
	case "iptables":
		out, err := n.IPTablesSave(false)
		if err != nil {
			t.Fatalf("%s: %v", n.Short, err)
		}
		return out, "iptables-save"
	case "ipvs":
		// The virtual servers, and the addresses bound to kube-ipvs0 for them.
		out := bed.ExecInNS(t, n.NS, "ipvsadm", "-Ln")
		addrs, err := n.NS.Exec("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
		if err != nil {
			t.Fatalf("%s: %v", n.Short, err)
		}
		return out + addrs, "ipvsadm -Ln + kube-ipvs0 addresses"
	default:
		t.Fatalf("no kernel state check for mode %q", e.Mode)
		return "", ""
	}
}

// lbMentions reports whether any field of text is ip, ip/32 or ip:port, so that
// 203.0.113.20 does not match 203.0.113.201.
func lbMentions(text, ip string) bool {
	return lbLinesWith(text, ip) != ""
}

// lbLinesWith returns the lines of text that mention ip (see lbMentions).
func lbLinesWith(text, ip string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' }) {
			if f == ip || f == ip+"/32" || strings.HasPrefix(f, ip+":") {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
