package datapath

import (
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"k8s.io/apimachinery/pkg/runtime"
)

// Topology scenarios: which endpoints a pod may reach depending on where it runs —
// internalTrafficPolicy Local, zone hints, and an IPv6 service with IPv6 pods.

func init() {
	register("InternalTrafficPolicyLocal", testInternalTrafficPolicyLocal)
	register("TopologyZone", testTopologyZone)
	register("DualStackIPv6", testDualStackIPv6)
}

// topoFromEachNode checks, for a client pod on each node, that the service at target is
// answered only by that node's endpoint.
func topoFromEachNode(t *testing.T, e *Env, what, target string, clients, want []*bed.Pod) {
	t.Helper()
	for i, client := range clients {
		epWaitFirst(t, what+": first answer from "+client.Node.Short, epFirstAnswerTimeout,
			epHTTP(client.NS, target), want[i])
		counts := client.NS.CountAnswers(target, epRequests)
		epAssertOnly(t, what+" from "+client.Node.Short, counts, epRequests, want[i])
		// Local and same-zone traffic from a pod is not masqueraded.
		if counts.Sources[client.IP.String()] != counts.ByPod[want[i].Name] {
			t.Errorf("%s from %s: sources %v, want the client pod's own %s", what, client.Node.Short, counts.Sources, client.IP)
		}
		e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, want...)
	}
}

func testInternalTrafficPolicyLocal(t *testing.T, e *Env) {
	c := e.C
	n1, n2 := c.Node("node1"), c.Node("node2")
	a := c.AddPod(t, n1, "itplocal-a")
	b := c.AddPod(t, n2, "itplocal-b")
	clients := []*bed.Pod{c.AddPod(t, n1, "itplocal-client1"), c.AddPod(t, n2, "itplocal-client2")}
	ip := e.ClusterIP()
	epApply(t, e, epService(e, "itplocal", "TCP", ip, []bed.ServiceOption{bed.InternalLocal()},
		epEndpoint(a), epEndpoint(b))...)
	topoFromEachNode(t, e, "iTP=Local", epAddr(ip, 80), clients, []*bed.Pod{a, b})
}

func testTopologyZone(t *testing.T, e *Env) {
	c := e.C
	n1, n2 := c.Node("node1"), c.Node("node2")
	if n1.Zone != "a" || n2.Zone != "b" {
		t.Fatalf("the shared Env must put node1 in zone a and node2 in zone b, got %q and %q", n1.Zone, n2.Zone)
	}
	// Two endpoints per zone, so a zone-a client still has a choice to make; the other
	// zone's endpoints must never be chosen.
	za := []*bed.Pod{c.AddPod(t, n1, "topozone-a1"), c.AddPod(t, n1, "topozone-a2")}
	zb := []*bed.Pod{c.AddPod(t, n2, "topozone-b1"), c.AddPod(t, n2, "topozone-b2")}
	client := c.AddPod(t, n1, "topozone-client")
	var eps []bed.SliceOption
	for _, p := range za {
		eps = append(eps, epEndpoint(p, bed.Zone("a"), bed.Hints("a")))
	}
	for _, p := range zb {
		eps = append(eps, epEndpoint(p, bed.Zone("b"), bed.Hints("b")))
	}
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "topozone", "TCP", ip,
		[]bed.ServiceOption{bed.TrafficDistribution("PreferClose")}, eps...)...)

	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), za...)
	counts := client.NS.CountAnswers(target, 2*epRequests)
	epAssertOnly(t, "zone-a client", counts, 2*epRequests, za...)
	all := append(append([]*bed.Pod{}, za...), zb...)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, all...)

	// Without hints on every endpoint the hints are ignored: all four serve.
	eps[3] = epEndpoint(zb[1], bed.Zone("b"))
	epUpdate(t, e, epSlice(e, "topozone", "TCP", eps...))
	epWaitExact(t, client.NS, target, epChangeBound(e), all...)
	counts = client.NS.CountAnswers(target, 2*epRequests)
	epAssertOnly(t, "hints incomplete", counts, 2*epRequests, all...)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, all...)
}

func testDualStackIPv6(t *testing.T, e *Env) {
	c := e.C
	a := c.AddPod(t, c.Node("node1"), "ipv6-a")
	b := c.AddPod(t, c.Node("node2"), "ipv6-b")
	client := c.AddPod(t, c.Node("node1"), "ipv6-client")
	if a.IPv6 == nil || client.IPv6 == nil {
		t.Fatal("the shared Env must be built with IPv6 (pods have no IPv6 address)")
	}
	ip := e.ClusterIPv6()
	target := epAddr(ip, 80)
	ep := func(p *bed.Pod) bed.SliceOption { return bed.Endpoint(p.IPv6.String(), bed.OnNode(p.Node.Name)) }
	topoIPv6Apply(t, e,
		bed.Service(c.Key("ipv6"), bed.ClusterIP(ip), bed.Port("p", 80, "TCP", 8080)),
		bed.EndpointSlice(c.Key("ipv6-1"), "ipv6", bed.SlicePort("p", 8080, "TCP"), ep(a), ep(b)))

	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), a, b)
	counts := client.NS.CountAnswers(target, 2*epRequests)
	epAssertOnly(t, "IPv6 ClusterIP", counts, 2*epRequests, a, b)
	if counts.Sources[client.IPv6.String()] != 2*epRequests {
		t.Errorf("IPv6 pods saw sources %v, want only the client's %s", counts.Sources, client.IPv6)
	}
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, a, b)

	// The IPv6 rules exist only in the IPv6 family of the data plane.
	for _, n := range c.Nodes {
		if left, err := epKernelMentions(e, n, ip); err != nil || left == "" {
			t.Errorf("%s: no IPv6 data-plane state for %s (err %v)", n.Short, ip, err)
		}
	}
}

// topoIPv6Apply applies the IPv6 service, explaining the one setup mistake that makes
// the apiserver refuse it: the shared apiserver accepts IPv6 ClusterIPs only when
// TestMain starts it with bed.DualStack() (service families are fixed by its flags; a
// ServiceCIDR object cannot add a family).
func topoIPv6Apply(t *testing.T, e *Env, objs ...runtime.Object) {
	t.Helper()
	if err := bed.Apply(e.API.Client, objs[0]); err != nil {
		if strings.Contains(err.Error(), "not configured on this cluster") {
			t.Fatalf("the shared apiserver has no IPv6 service range; TestMain in framework_test.go must call "+
				"bed.Main(m, bed.DualStack()): %v", err)
		}
		t.Fatalf("apply IPv6 service: %v", err)
	}
	epApply(t, e, objs...)
}
