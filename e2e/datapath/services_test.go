package datapath

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"k8s.io/apimachinery/pkg/runtime"
)

// ClusterIP scenarios: pod → ClusterIP over TCP, UDP and SCTP, named multi-port services
// and services without endpoints. The svc* helpers here are shared by the nodeports,
// loadbalancer and affinity files.

func init() {
	register("ClusterIPTCP", testClusterIPTCP)
	register("ClusterIPUDP", testClusterIPUDP)
	// The host kernel has no SCTP sockets (the scenario skips there); the VM kernel has.
	register("ClusterIPSCTP", testClusterIPSCTP)
	register("MultiPortNamed", testMultiPortNamed)
	register("NoEndpoints", testNoEndpoints)
}

const (
	// svcRequests is the size of the counted loops.
	svcRequests = 200
	// svcFirstAnswerTimeout bounds the wait for the first answer after Programmed: a sync
	// that ended just after `since` may have started before the objects arrived.
	svcFirstAnswerTimeout = 15 * time.Second
	// svcNoAnswerTries bounds "gets no answer" checks; each try waits svcNoAnswerWait.
	svcNoAnswerTries = 5
	svcNoAnswerWait  = time.Second
)

// svcApply writes objs (Services and EndpointSlices), deletes them when the test ends,
// and waits until every proxy finished a sync that ended after the write began.
func svcApply(t *testing.T, e *Env, objs ...runtime.Object) {
	t.Helper()
	t.Cleanup(func() {
		for i := len(objs) - 1; i >= 0; i-- {
			if err := bed.Delete(e.API.Client, objs[i]); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	svcUpdate(t, e, objs...)
}

// svcUpdate writes objs that a previous svcApply owns and waits for the proxies' sync.
func svcUpdate(t *testing.T, e *Env, objs ...runtime.Object) {
	t.Helper()
	since := time.Now()
	e.API.Apply(t, objs...)
	e.Programmed(t, since)
}

// svcEndpoint is a ready endpoint for pod, on the pod's node.
func svcEndpoint(p *bed.Pod, opts ...bed.EndpointOption) bed.SliceOption {
	return bed.Endpoint(p.IP.String(), append([]bed.EndpointOption{bed.OnNode(p.Node.Name)}, opts...)...)
}

// svcAddr joins ip and port.
func svcAddr(ip string, port int32) string {
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// svcWaitAnswer polls ask until it answers from one of pods (bounded) and returns it.
func svcWaitAnswer(t *testing.T, what string, ask func() (bed.Answer, error), pods ...*bed.Pod) bed.Answer {
	t.Helper()
	var got bed.Answer
	bed.Eventually(t, svcFirstAnswerTimeout, what, func() (bool, string) {
		a, err := ask()
		if err != nil {
			return false, err.Error()
		}
		if svcPodIndex(a.Pod, pods) < 0 {
			return false, fmt.Sprintf("answered by %q, not one of %v", a.Pod, svcPodNames(pods))
		}
		got = a
		return true, ""
	})
	return got
}

// svcWaitHTTP waits for the first HTTP answer from one of pods through target.
func svcWaitHTTP(t *testing.T, from *bed.Namespace, target string, pods ...*bed.Pod) bed.Answer {
	t.Helper()
	return svcWaitAnswer(t, "first answer via "+target, func() (bed.Answer, error) {
		return from.HTTPGet(target, bed.RequestTimeout)
	}, pods...)
}

// svcAssertSpread checks a counted loop of total requests: no failure, only pods
// answered, and each of them took at least 20% of the requests.
func svcAssertSpread(t *testing.T, c bed.Counts, total int, pods ...*bed.Pod) {
	t.Helper()
	t.Logf("%d requests: %v sources %v", total, c, c.Sources)
	if c.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v", c.Failures, total, c)
	}
	for name := range c.ByPod {
		if svcPodIndex(name, pods) < 0 {
			t.Errorf("unexpected pod %q answered: %v", name, c)
		}
	}
	for _, p := range pods {
		if n := c.ByPod[p.Name]; n*5 < total {
			t.Errorf("pod %s answered %d of %d (< 20%%): %v", p.Name, n, total, c)
		}
	}
}

// svcAssertAllFrom checks that every answer saw source ip.
func svcAssertAllFrom(t *testing.T, c bed.Counts, ip string) {
	t.Helper()
	for src, n := range c.Sources {
		if src != ip {
			t.Errorf("pods saw source %s %d times, want only %s (sources %v)", src, n, ip, c.Sources)
		}
	}
}

// svcAssertNoAnswer makes bounded attempts that must all fail to get an answer.
func svcAssertNoAnswer(t *testing.T, what string, ask func(time.Duration) (bed.Answer, error)) {
	t.Helper()
	for i := 0; i < svcNoAnswerTries; i++ {
		if a, err := ask(svcNoAnswerWait); err == nil {
			t.Errorf("%s: try %d answered by %s (source %s), want no answer", what, i+1, a.Pod, a.Source)
			return
		}
	}
}

func svcPodIndex(name string, pods []*bed.Pod) int {
	for i, p := range pods {
		if p.Name == name {
			return i
		}
	}
	return -1
}

func svcPodNames(pods []*bed.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	return names
}

// svcTwoEndpointService builds a ClusterIP service `name` for port 80/protocol → 8080
// with endpoints a and b.
func svcTwoEndpointService(e *Env, name, protocol, ip string, a, b *bed.Pod) []runtime.Object {
	c := e.C
	return []runtime.Object{
		bed.Service(c.Key(name), bed.ClusterIP(ip), bed.Port("p", 80, protocol, 8080)),
		bed.EndpointSlice(c.Key(name+"-1"), name, bed.SlicePort("p", 8080, protocol),
			svcEndpoint(a), svcEndpoint(b)),
	}
}

// svcThreePods adds endpoint pods on node1 and node2 and a client pod on node1.
func svcThreePods(t *testing.T, e *Env, prefix string) (a, b, client *bed.Pod) {
	c := e.C
	a = c.AddPod(t, c.Node("node1"), prefix+"-a")
	b = c.AddPod(t, c.Node("node2"), prefix+"-b")
	client = c.AddPod(t, c.Node("node1"), prefix+"-client")
	return a, b, client
}

func testClusterIPTCP(t *testing.T, e *Env) {
	a, b, client := svcThreePods(t, e, "ciptcp")
	ip := e.ClusterIP()
	svcApply(t, e, svcTwoEndpointService(e, "ciptcp", "TCP", ip, a, b)...)
	target := svcAddr(ip, 80)
	svcWaitHTTP(t, client.NS, target, a, b)

	c := client.NS.CountAnswers(target, svcRequests)
	svcAssertSpread(t, c, svcRequests, a, b)
	// Pod → ClusterIP from inside the cluster CIDR is not masqueraded.
	svcAssertAllFrom(t, c, client.IP.String())
	e.assertTrace(t, client.Node, podPacket(client, target), c, 8080, a, b)
}

func testClusterIPUDP(t *testing.T, e *Env) {
	a, b, client := svcThreePods(t, e, "cipudp")
	ip := e.ClusterIP()
	svcApply(t, e, svcTwoEndpointService(e, "cipudp", "UDP", ip, a, b)...)
	target := svcAddr(ip, 80)
	svcWaitAnswer(t, "first UDP answer via "+target, func() (bed.Answer, error) {
		return client.NS.UDPRequest(target, bed.RequestTimeout)
	}, a, b)

	// Each datagram leaves from a new socket, so each is a new conntrack entry.
	c := client.NS.CountUDPAnswers(target, svcRequests)
	svcAssertSpread(t, c, svcRequests, a, b)
	svcAssertAllFrom(t, c, client.IP.String())
	e.assertTrace(t, client.Node, podPacket(client, target).udp(), c, 8080, a, b)
}

func testClusterIPSCTP(t *testing.T, e *Env) {
	const sctpPort = 9132
	c := e.C
	sctpRequire(t, c.Node("node1"))
	a := c.AddPod(t, c.Node("node1"), "cipsctp-a")
	b := c.AddPod(t, c.Node("node2"), "cipsctp-b")
	client := c.AddPod(t, c.Node("node1"), "cipsctp-client")
	sctpServe(t, a, sctpPort)
	sctpServe(t, b, sctpPort)
	ip := e.ClusterIP()
	svcApply(t, e,
		bed.Service(c.Key("cipsctp"), bed.ClusterIP(ip), bed.Port("s", 80, "SCTP", sctpPort)),
		bed.EndpointSlice(c.Key("cipsctp-1"), "cipsctp", bed.SlicePort("s", sctpPort, "SCTP"),
			svcEndpoint(a), svcEndpoint(b)))
	ask := func() (bed.Answer, error) { return sctpRequest(client.NS, ip, 80, bed.RequestTimeout) }
	svcWaitAnswer(t, "first SCTP answer via "+svcAddr(ip, 80), ask, a, b)

	const n = 20
	counts := sctpCount(client.NS, ip, 80, n)
	if counts.Failures != 0 {
		t.Errorf("%d of %d SCTP associations failed: %v", counts.Failures, n, counts)
	}
	for name := range counts.ByPod {
		if svcPodIndex(name, []*bed.Pod{a, b}) < 0 {
			t.Errorf("unexpected pod %q answered: %v", name, counts)
		}
	}
	svcAssertAllFrom(t, counts, client.IP.String())
	e.assertTrace(t, client.Node, podPacket(client, svcAddr(ip, 80)).sctp(), counts, sctpPort, a, b)
}

func testMultiPortNamed(t *testing.T, e *Env) {
	c := e.C
	// Both pods listen on both ports, so a port mapped to the wrong target shows in
	// the port the echo server reports.
	a := c.AddPod(t, c.Node("node1"), "multiport-a", 8080, 9090)
	b := c.AddPod(t, c.Node("node2"), "multiport-b", 8080, 9090)
	client := c.AddPod(t, c.Node("node2"), "multiport-client")
	ip := e.ClusterIP()
	// No endpoints controller runs: the slice carries what it would resolve the
	// named targetPorts ("web", "admin") to.
	svcApply(t, e,
		bed.Service(c.Key("multiport"), bed.ClusterIP(ip),
			bed.NamedPort("http", 80, "TCP", "web"), bed.NamedPort("mgmt", 81, "TCP", "admin")),
		bed.EndpointSlice(c.Key("multiport-1"), "multiport",
			bed.SlicePort("http", 8080, "TCP"), bed.SlicePort("mgmt", 9090, "TCP"),
			svcEndpoint(a), svcEndpoint(b)))

	for _, tc := range []struct {
		port, want int32
	}{{80, 8080}, {81, 9090}} {
		target := svcAddr(ip, tc.port)
		svcWaitHTTP(t, client.NS, target, a, b)
		byPort := map[int]int{}
		counts := bed.Counts{ByPod: map[string]int{}, Sources: map[string]int{}}
		failures := 0
		const n = 50
		for i := 0; i < n; i++ {
			ans, err := client.NS.HTTPGet(target, bed.RequestTimeout)
			if err != nil {
				failures++
				continue
			}
			byPort[ans.Port]++
			counts.ByPod[ans.Pod]++
			counts.Sources[ans.SourceIP()]++
		}
		if failures != 0 || byPort[int(tc.want)] != n {
			t.Errorf("service port %d: %d failures, pod ports seen %v; want all %d on %d",
				tc.port, failures, byPort, n, tc.want)
		}
		e.assertTrace(t, client.Node, podPacket(client, target), counts, tc.want, a, b)
	}
}

func testNoEndpoints(t *testing.T, e *Env) {
	c := e.C
	client := c.AddPod(t, c.Node("node1"), "noendpoints-client")
	ip := e.ClusterIP()
	svcApply(t, e, bed.Service(c.Key("noendpoints"), bed.ClusterIP(ip), bed.Port("p", 80, "TCP", 8080)))
	target := svcAddr(ip, 80)
	// A 1 s bound: "refused" therefore also means refused within 1 s; without the
	// REJECT rule the SYN is routed away and the attempt times out instead.
	const bound = time.Second
	bed.Eventually(t, svcFirstAnswerTimeout, "connect to "+target+" refused", func() (bool, string) {
		r := client.NS.TCPConnect(target, bound)
		return r.Outcome == bed.Refused, fmt.Sprintf("%s after %v: %v", r.Outcome, r.Elapsed, r.Err)
	})
	for i := 0; i < 10; i++ {
		if r := client.NS.TCPConnect(target, bound); r.Outcome != bed.Refused {
			t.Errorf("connect %d to %s: %s after %v (%v), want refused", i+1, target, r.Outcome, r.Elapsed, r.Err)
		}
	}
	e.assertTraceNoAnswer(t, client.Node, podPacket(client, target), "REJECT")
}
