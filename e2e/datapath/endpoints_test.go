package datapath

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/runtime"
)

// Endpoint scenarios: which endpoints serve as the set changes — terminating fallback,
// a pod reaching itself through its service, churn, and a deleted service. The ep*
// helpers here are shared by the topology, conntrack, health and lifecycle files.

func init() {
	register("TerminatingFallback", testTerminatingFallback)
	register("Hairpin", testHairpin)
	register("Churn", testChurn)
	register("ServiceDeleted", testServiceDeleted)
}

const (
	// epRequests is the size of the counted loops.
	epRequests = 100
	// epFirstAnswerTimeout bounds the wait for the first answer of a new service after
	// Programmed: the sync seen may have started before the objects arrived.
	epFirstAnswerTimeout = 15 * time.Second
	// epWindow is the number of requests of one sample while polling for an exact set;
	// with 4 endpoints, one is missing from a sample of 40 with probability 4·(3/4)^40 ≈ 4e-5.
	epWindow = 40
)

// epApply writes objs, deletes them (in reverse) when the test ends, and waits until
// every proxy finished a sync that ended after the write began.
func epApply(t *testing.T, e *Env, objs ...runtime.Object) {
	t.Helper()
	t.Cleanup(func() {
		for i := len(objs) - 1; i >= 0; i-- {
			if err := bed.Delete(e.API.Client, objs[i]); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	epUpdate(t, e, objs...)
}

// epUpdate writes objs owned by an earlier epApply and waits for the proxies' sync.
func epUpdate(t *testing.T, e *Env, objs ...runtime.Object) {
	t.Helper()
	since := time.Now()
	e.API.Apply(t, objs...)
	e.Programmed(t, since)
}

// epEndpoint is a ready endpoint for pod's IPv4 address on the pod's node.
func epEndpoint(p *bed.Pod, opts ...bed.EndpointOption) bed.SliceOption {
	return bed.Endpoint(p.IP.String(), append([]bed.EndpointOption{bed.OnNode(p.Node.Name)}, opts...)...)
}

// epAddr joins ip and port.
func epAddr(ip string, port int32) string { return net.JoinHostPort(ip, strconv.Itoa(int(port))) }

// epService is ClusterIP service name on ip, port 80/protocol → 8080, with one slice
// holding the given endpoints.
func epService(e *Env, name, protocol, ip string, svcOpts []bed.ServiceOption, eps ...bed.SliceOption) []runtime.Object {
	c := e.C
	opts := append([]bed.ServiceOption{bed.ClusterIP(ip), bed.Port("p", 80, protocol, 8080)}, svcOpts...)
	return []runtime.Object{bed.Service(c.Key(name), opts...), epSlice(e, name, protocol, eps...)}
}

// epSlice is slice "<name>-1" of service name for port p/8080.
func epSlice(e *Env, name, protocol string, eps ...bed.SliceOption) runtime.Object {
	opts := append([]bed.SliceOption{bed.SlicePort("p", 8080, protocol)}, eps...)
	return bed.EndpointSlice(e.C.Key(name+"-1"), name, opts...)
}

// epMinSync is the proxies' minimum sync period (from ProxyArgs).
func epMinSync(e *Env) time.Duration {
	flag := "--" + e.Mode + "-min-sync-period="
	for _, a := range ProxyArgs(e.Mode) {
		if v, ok := strings.CutPrefix(a, flag); ok {
			if d, err := time.ParseDuration(v); err == nil {
				return d
			}
		}
	}
	return time.Second // kube-proxy's default
}

// epChangeBound is how long after Programmed a change may take to show in traffic: the
// sync Programmed saw may have started just before the change arrived, and the next
// one starts at least min-sync-period later.
func epChangeBound(e *Env) time.Duration { return epMinSync(e) + time.Second }

// epWaitFirst polls ask until it answers from one of pods (bounded by timeout).
func epWaitFirst(t *testing.T, what string, timeout time.Duration, ask func() (bed.Answer, error), pods ...*bed.Pod) bed.Answer {
	t.Helper()
	var got bed.Answer
	bed.Eventually(t, timeout, what, func() (bool, string) {
		a, err := ask()
		if err != nil {
			return false, err.Error()
		}
		if !epIsOneOf(a.Pod, pods) {
			return false, fmt.Sprintf("answered by %q, want one of %v", a.Pod, epNames(pods))
		}
		got = a
		return true, ""
	})
	return got
}

// epHTTP asks target over HTTP from ns.
func epHTTP(ns *bed.Namespace, target string) func() (bed.Answer, error) {
	return func() (bed.Answer, error) { return ns.HTTPGet(target, bed.RequestTimeout) }
}

// epExact reports whether c is a sample in which exactly pods answered: no failure, no
// other pod, every pod at least once.
func epExact(c bed.Counts, pods []*bed.Pod) bool {
	if c.Failures != 0 {
		return false
	}
	for name := range c.ByPod {
		if !epIsOneOf(name, pods) {
			return false
		}
	}
	for _, p := range pods {
		if c.ByPod[p.Name] == 0 {
			return false
		}
	}
	return true
}

// epWaitExact polls samples of epWindow requests from ns to target until one shows
// exactly pods, failing after bound; it returns how long that took.
func epWaitExact(t *testing.T, ns *bed.Namespace, target string, bound time.Duration, pods ...*bed.Pod) time.Duration {
	t.Helper()
	start := time.Now()
	var last bed.Counts
	for tries := 0; ; tries++ {
		last = ns.CountAnswers(target, epWindow)
		if epExact(last, pods) {
			return time.Since(start)
		}
		if time.Since(start) > bound {
			t.Fatalf("%s: exactly %v did not answer within %v (%d samples); last sample %v",
				target, epNames(pods), bound, tries+1, last)
		}
	}
}

// epAssertOnly checks a counted loop of total requests: no failure, only pods answered,
// and each took at least a third of its fair share.
func epAssertOnly(t *testing.T, what string, c bed.Counts, total int, pods ...*bed.Pod) {
	t.Helper()
	t.Logf("%s: %d requests: %v sources %v", what, total, c, c.Sources)
	if c.Failures != 0 {
		t.Errorf("%s: %d of %d requests failed: %v", what, c.Failures, total, c)
	}
	for name, n := range c.ByPod {
		if !epIsOneOf(name, pods) {
			t.Errorf("%s: pod %q answered %d times, want only %v", what, name, n, epNames(pods))
		}
	}
	for _, p := range pods {
		if n := c.ByPod[p.Name]; n*3*len(pods) < total {
			t.Errorf("%s: pod %s answered %d of %d, below a third of its share: %v", what, p.Name, n, total, c)
		}
	}
}

func epIsOneOf(name string, pods []*bed.Pod) bool {
	for _, p := range pods {
		if p.Name == name {
			return true
		}
	}
	return false
}

func epNames(pods []*bed.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

func testTerminatingFallback(t *testing.T, e *Env) {
	c := e.C
	t1 := c.AddPod(t, c.Node("node1"), "termfb-t1")
	t2 := c.AddPod(t, c.Node("node2"), "termfb-t2")
	ready := c.AddPod(t, c.Node("node2"), "termfb-ready")
	client := c.AddPod(t, c.Node("node1"), "termfb-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)

	// Only terminating (but serving) endpoints: with no ready one anywhere, they serve.
	epApply(t, e, epService(e, "termfb", "TCP", ip, nil,
		epEndpoint(t1, bed.Terminating()), epEndpoint(t2, bed.Terminating()))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), t1, t2)
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "terminating only", counts, epRequests, t1, t2)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, t1, t2, ready)

	// A ready endpoint appears: the terminating ones are no longer used.
	epUpdate(t, e, epSlice(e, "termfb", "TCP",
		epEndpoint(t1, bed.Terminating()), epEndpoint(t2, bed.Terminating()), epEndpoint(ready)))
	took := epWaitExact(t, client.NS, target, epChangeBound(e), ready)
	t.Logf("only the ready endpoint answered %v after Programmed", took)
	counts = client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "with a ready endpoint", counts, epRequests, ready)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, t1, t2, ready)
}

func testHairpin(t *testing.T, e *Env) {
	c := e.C
	self := c.AddPod(t, c.Node("node1"), "hairpin-self")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "hairpin", "TCP", ip, nil, epEndpoint(self))...)

	epWaitFirst(t, "pod reaches itself via "+target, epFirstAnswerTimeout, epHTTP(self.NS, target), self)
	counts := self.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "hairpin TCP", counts, epRequests, self)
	// Without masquerading the pod would see its own address as the source and answer
	// itself directly, bypassing the reverse NAT; the connection could not complete.
	if counts.Sources[self.IP.String()] != 0 {
		t.Errorf("hairpin traffic reached the pod from its own address %s (sources %v), want it masqueraded",
			self.IP, counts.Sources)
	}
	e.assertTrace(t, self.Node, podPacket(self, target), counts, 8080, self)
}

func testChurn(t *testing.T, e *Env) {
	c := e.C
	n1, n2 := c.Node("node1"), c.Node("node2")
	p := []*bed.Pod{
		c.AddPod(t, n1, "churn-1"), c.AddPod(t, n2, "churn-2"),
		c.AddPod(t, n1, "churn-3"), c.AddPod(t, n2, "churn-4"),
	}
	client := c.AddPod(t, n1, "churn-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	eps := func(pods ...*bed.Pod) []bed.SliceOption {
		var out []bed.SliceOption
		for _, pod := range pods {
			out = append(out, epEndpoint(pod))
		}
		return out
	}

	epApply(t, e, epService(e, "churn", "TCP", ip, nil, eps(p[0], p[1])...)...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), p[0], p[1])
	epWaitExact(t, client.NS, target, epFirstAnswerTimeout, p[0], p[1])
	counts := client.NS.CountAnswers(target, 2*epRequests)
	epAssertOnly(t, "2 endpoints", counts, 2*epRequests, p[0], p[1])
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, p...)

	bound := epChangeBound(e)
	for _, step := range []struct {
		name string
		set  []*bed.Pod
	}{{"2 → 4", p}, {"4 → 1", p[:1]}} {
		epUpdate(t, e, epSlice(e, "churn", "TCP", eps(step.set...)...))
		took := epWaitExact(t, client.NS, target, bound, step.set...)
		t.Logf("%s: exactly %v answered %v after Programmed (bound %v)", step.name, epNames(step.set), took, bound)
		counts := client.NS.CountAnswers(target, 2*epRequests)
		epAssertOnly(t, step.name, counts, 2*epRequests, step.set...)
		e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, p...)
	}
}

func testServiceDeleted(t *testing.T, e *Env) {
	c := e.C
	a := c.AddPod(t, c.Node("node1"), "svcdel-a")
	b := c.AddPod(t, c.Node("node2"), "svcdel-b")
	client := c.AddPod(t, c.Node("node1"), "svcdel-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	objs := epService(e, "svcdel", "TCP", ip, nil, epEndpoint(a), epEndpoint(b))
	epApply(t, e, objs...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), a, b)
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "before delete", counts, epRequests, a, b)
	e.assertTrace(t, client.Node, podPacket(client, target), counts, 8080, a, b)

	since := time.Now()
	e.API.Delete(t, objs[1], objs[0])
	e.Programmed(t, since)

	// Kernel state: nothing left that mentions the ClusterIP, on any node.
	for _, n := range c.Nodes {
		bed.Eventually(t, epChangeBound(e), n.Short+" forgets "+ip, func() (bool, string) {
			left, err := epKernelMentions(e, n, ip)
			if err != nil {
				return false, err.Error()
			}
			return left == "", left
		})
	}
	// Traffic: the ClusterIP no longer answers (refused by a REJECT or simply unanswered).
	for i := 0; i < 3; i++ {
		if r := client.NS.TCPConnect(target, time.Second); r.Outcome == bed.Connected {
			t.Errorf("connect %d to deleted service %s: connected, want refused or unanswered", i+1, target)
		}
	}
	// Nothing handles the ClusterIP any more: the packet goes on unchanged.
	e.assertTraceNoAnswer(t, client.Node, podPacket(client, target), "ACCEPT")
}

// epKernelMentions returns the node's data-plane state that still mentions ip (iptables
// rules; IPVS virtual servers and kube-ipvs0 addresses), "" when none.
func epKernelMentions(e *Env, n *bed.Node, ip string) (string, error) {
	v6 := strings.Contains(ip, ":")
	var found []string
	save, err := n.IPTablesSave(v6)
	if err != nil {
		return "", err
	}
	found = append(found, epLinesWith(save, ip)...)
	if e.Mode == "ipvs" {
		out, err := n.NS.Exec("ipvsadm", "-Ln")
		if err != nil {
			return "", err
		}
		found = append(found, epLinesWith(out, ip)...)
		addrs, err := epIPVSAddrs(n)
		if err != nil {
			return "", err
		}
		found = append(found, epLinesWith(addrs, ip)...)
	}
	return strings.Join(found, "\n"), nil
}

// epLinesWith returns the lines of text mentioning ip as a whole address.
func epLinesWith(text, ip string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '/' || r == '\t' || r == ',' }) {
			if f == ip || strings.HasPrefix(f, ip+":") || strings.HasPrefix(f, "["+ip+"]") {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// epIPVSAddrs lists the addresses on kube-ipvs0 (over netlink: the VM has no iproute2),
// "" when the link is gone.
func epIPVSAddrs(n *bed.Node) (string, error) {
	h, err := n.NS.Netlink()
	if err != nil {
		return "", err
	}
	defer h.Close()
	link, err := h.LinkByName("kube-ipvs0")
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return "", nil
		}
		return "", fmt.Errorf("find kube-ipvs0 in %s: %w", n.Name, err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("addresses of kube-ipvs0 in %s: %w", n.Name, err)
	}
	var lines []string
	for _, a := range addrs {
		lines = append(lines, "kube-ipvs0 "+a.IPNet.String())
	}
	return strings.Join(lines, "\n"), nil
}

// epProxySynced waits until p finished a sync of each family that ended after since.
// (Env.Programmed waits for every proxy, which only sync when something changes.)
func epProxySynced(t *testing.T, p *bed.Proxy, since time.Time) {
	t.Helper()
	sec := float64(since.UnixNano()) / 1e9
	for _, fam := range []string{"IPv4", "IPv6"} {
		p.WaitMetric(t, "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			func(v float64) bool { return v >= sec }, `ip_family="`+fam+`"`)
	}
}

// epRestartWith restarts the shared proxy p with env and args added to its command line,
// and restarts it with its original command line when the test ends.
func epRestartWith(t *testing.T, p *bed.Proxy, env, args []string) {
	t.Helper()
	origEnv, origArgs := p.Env, p.Args
	t.Cleanup(func() {
		p.Env, p.Args = origEnv, origArgs
		epRestart(t, p)
	})
	p.Env = append(append([]string{}, origEnv...), env...)
	p.Args = append(append([]string{}, origArgs...), args...)
	epRestart(t, p)
}

// epRestart restarts p and waits until it is healthy and has synced both families.
func epRestart(t *testing.T, p *bed.Proxy) {
	t.Helper()
	since := time.Now()
	p.Restart(t)
	p.WaitHealthy(t)
	epProxySynced(t, p, since)
}
