package proxier

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/metrics"
)

// recordingDataPlane keeps every snapshot it is handed and fails on demand.
type recordingDataPlane struct {
	mu     sync.Mutex
	snaps  []*Snapshot
	fail   int    // fail this many more syncs
	during func() // called once, inside the next Sync, after it decided to fail or not
}

func (d *recordingDataPlane) Sync(snap *Snapshot) (SyncResult, error) {
	d.mu.Lock()
	d.snaps = append(d.snaps, snap)
	fail, first := d.fail > 0, len(d.snaps) == 1
	if fail {
		d.fail--
	}
	during := d.during
	d.during = nil
	d.mu.Unlock()
	if during != nil {
		during()
	}
	if fail {
		return SyncResult{}, errors.New("injected failure")
	}
	return SyncResult{Full: first, Rules: map[string]int{"nat": 3}}, nil
}

func (d *recordingDataPlane) setFail(n int) {
	d.mu.Lock()
	d.fail = n
	d.mu.Unlock()
}

func (d *recordingDataPlane) all() []*Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.snaps)
}

func (d *recordingDataPlane) last() *Snapshot {
	s := d.all()
	if len(s) == 0 {
		return nil
	}
	return s[len(s)-1]
}

// fakeHealth counts the calls and keeps what healthz derives from them: whether a
// change of each family waits.
type fakeHealth struct {
	mu      sync.Mutex
	queued  map[v1.IPFamily]int
	updated map[v1.IPFamily]int
	waiting map[v1.IPFamily]bool
	nodes   []*v1.Node
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{queued: map[v1.IPFamily]int{}, updated: map[v1.IPFamily]int{}, waiting: map[v1.IPFamily]bool{}}
}

func (h *fakeHealth) QueuedUpdate(f v1.IPFamily) {
	h.mu.Lock()
	h.queued[f]++
	h.waiting[f] = true
	h.mu.Unlock()
}

func (h *fakeHealth) Updated(f v1.IPFamily) {
	h.mu.Lock()
	h.updated[f]++
	h.waiting[f] = false
	h.mu.Unlock()
}

func (h *fakeHealth) pending(f v1.IPFamily) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.waiting[f]
}

func (h *fakeHealth) SyncNode(n *v1.Node) { h.mu.Lock(); h.nodes = append(h.nodes, n); h.mu.Unlock() }
func (h *fakeHealth) counts(f v1.IPFamily) (int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.queued[f], h.updated[f]
}

type fakeServiceHealth struct {
	mu     sync.Mutex
	ports  map[types.NamespacedName]uint16
	counts map[types.NamespacedName]int
}

func (s *fakeServiceHealth) SyncServices(p map[types.NamespacedName]uint16) error {
	s.mu.Lock()
	s.ports = maps.Clone(p)
	s.mu.Unlock()
	return nil
}

func (s *fakeServiceHealth) SyncEndpoints(c map[types.NamespacedName]int) error {
	s.mu.Lock()
	s.counts = maps.Clone(c)
	s.mu.Unlock()
	return nil
}

func (s *fakeServiceHealth) get() (map[types.NamespacedName]uint16, map[types.NamespacedName]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ports, s.counts
}

// waitFor polls cond with a bounded timeout; syncs run on other goroutines.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type testProxier struct {
	*Proxier
	clock   *clocktesting.FakeClock
	dp      map[v1.IPFamily]*recordingDataPlane
	health  *fakeHealth
	svcHC   *fakeServiceHealth
	ipsSeen chan struct{}
	done    chan error
}

func newTestProxier(t *testing.T, families ...v1.IPFamily) *testProxier {
	tp := &testProxier{
		clock:   clocktesting.NewFakeClock(start),
		dp:      map[v1.IPFamily]*recordingDataPlane{},
		health:  newFakeHealth(),
		svcHC:   &fakeServiceHealth{},
		ipsSeen: make(chan struct{}, 10),
	}
	dps := map[v1.IPFamily]DataPlane{}
	for _, f := range families {
		tp.dp[f] = &recordingDataPlane{}
		dps[f] = tp.dp[f]
	}
	tp.Proxier = New(Options{
		NodeName: "node1", Families: families, DataPlanes: dps,
		RetryPeriod: 5 * time.Second, MaxSyncPeriod: time.Hour,
		Health: tp.health, ServiceHealth: tp.svcHC, Clock: tp.clock,
		OnNodeIPsChanged: func() { tp.ipsSeen <- struct{}{} },
	})
	return tp
}

func (tp *testProxier) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	tp.done = make(chan error, 1)
	go func() { tp.done <- tp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-tp.done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

func testNode(ips ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	return n
}

func TestProxierWaitsForInitialState(t *testing.T) {
	tp := newTestProxier(t, ipv4)
	tp.run(t)
	tp.OnServiceAdd(webSvc)
	tp.OnEndpointSliceAdd(webSlice)
	tp.OnServicesSynced()
	tp.OnNodeAdd(testNode("192.0.2.11"))
	// Slices have not synced: nothing may be programmed yet. Waiting for the
	// node timer to be armed shows Run is inside its wait.
	waitFor(t, "Run waiting", tp.clock.HasWaiters)
	if n := len(tp.dp[ipv4].all()); n != 0 {
		t.Fatalf("%d syncs before EndpointSlices synced", n)
	}
	tp.OnEndpointSlicesSynced()
	waitFor(t, "first sync", func() bool { return tp.dp[ipv4].last() != nil })
	snap := tp.dp[ipv4].last()
	if got := epStrings(snap.Endpoints[webHTTP]); !slices.Equal(got, []string{"203.0.113.5:8080", "203.0.113.70:8080"}) {
		t.Errorf("first sync endpoints %v", got)
	}
	if !slices.Equal(snap.Node.IPs, addrs("192.0.2.11")) || !snap.Node.Eligible || snap.Node.Zone() != "zone-a" {
		t.Errorf("first sync node %+v", snap.Node)
	}
	if got := gaugeValue(metrics.IPTablesRulesLastSync.WithLabelValues("IPv4", "nat")); got != 3 {
		t.Errorf("iptables rules last sync = %v, want 3 from SyncResult", got)
	}
	if got := gaugeValue(metrics.SyncProxyRulesLastTimestamp.WithLabelValues("IPv4")); got != float64(start.Unix()) {
		t.Errorf("last sync timestamp = %v, want the fake clock's %v", got, start.Unix())
	}
	if _, updated := tp.health.counts(ipv4); updated < 2 {
		t.Errorf("Health.Updated called %d times, want loop start and sync", updated)
	}
}

func TestProxierNodeWaitTimesOut(t *testing.T) {
	tp := newTestProxier(t, ipv4)
	tp.run(t)
	tp.OnServicesSynced()
	tp.OnEndpointSlicesSynced()
	waitFor(t, "node timer", tp.clock.HasWaiters)
	if n := len(tp.dp[ipv4].all()); n != 0 {
		t.Fatalf("%d syncs before the node wait ended", n)
	}
	tp.clock.Step(NodeWaitTimeout)
	waitFor(t, "sync without node", func() bool { return tp.dp[ipv4].last() != nil })
	if snap := tp.dp[ipv4].last(); snap.Node.Eligible || len(snap.Node.IPs) != 0 {
		t.Errorf("node without Node object: %+v", snap.Node)
	}
	// The node appearing later with IPs is an IP change, as for kube-proxy.
	tp.OnNodeAdd(testNode("192.0.2.11"))
	select {
	case <-tp.ipsSeen:
	case <-time.After(10 * time.Second):
		t.Fatalf("OnNodeIPsChanged not called")
	}
}

func TestProxierNodeIPsChanged(t *testing.T) {
	tp := newTestProxier(t, dual...)
	tp.OnServicesSynced()
	tp.OnEndpointSlicesSynced()
	tp.OnNodeAdd(testNode("192.0.2.11", "2001:db8:2::11"))
	tp.run(t)
	waitFor(t, "first sync", func() bool { return tp.dp[ipv6].last() != nil })
	relabelled := testNode("192.0.2.11", "2001:db8:2::11")
	relabelled.Labels["example.test/role"] = "web"
	tp.OnNodeUpdate(nil, relabelled)
	other := testNode("192.0.2.99")
	other.Name = "node2"
	tp.OnNodeUpdate(nil, other)
	if len(tp.ipsSeen) != 0 {
		t.Fatalf("OnNodeIPsChanged called without an IP change")
	}
	tp.OnNodeUpdate(nil, testNode("192.0.2.12", "2001:db8:2::11"))
	tp.OnNodeUpdate(nil, testNode("192.0.2.13", "2001:db8:2::11"))
	waitFor(t, "OnNodeIPsChanged", func() bool { return len(tp.ipsSeen) > 0 })
	if n := len(tp.ipsSeen); n != 1 {
		t.Errorf("OnNodeIPsChanged called %d times, want once", n)
	}
	tp.OnNodeDelete(testNode("192.0.2.13", "2001:db8:2::11"))
	waitFor(t, "ineligible node synced", func() bool {
		s := tp.dp[ipv4].last()
		return !s.Node.Eligible && slices.Equal(s.Node.IPs, addrs("192.0.2.13"))
	})
}

func TestProxierFamilyFailureIsolated(t *testing.T) {
	tp := newTestProxier(t, dual...)
	tp.OnServicesSynced()
	tp.OnEndpointSlicesSynced()
	tp.OnNodeAdd(testNode("192.0.2.11", "2001:db8:2::11"))
	tp.dp[ipv6].setFail(2)
	tp.run(t)
	waitFor(t, "first round", func() bool { return len(tp.dp[ipv6].all()) == 1 && len(tp.dp[ipv4].all()) == 1 })

	tp.OnServiceAdd(webSvc)
	waitFor(t, "IPv4 synced the service", func() bool { return tp.dp[ipv4].last().Services[webHTTP] != nil })
	if _, updated := tp.health.counts(ipv6); updated != 1 {
		t.Errorf("IPv6 Health.Updated %d times, want only the loop start", updated)
	}
	// Retries come after RetryPeriod on the fake clock; step until both
	// failures are behind us.
	waitFor(t, "IPv6 retried to success", func() bool {
		tp.clock.Step(5 * time.Second)
		snaps := tp.dp[ipv6].all()
		return len(snaps) >= 3 && snaps[len(snaps)-1].Services[webHTTP] != nil
	})
	snaps := tp.dp[ipv6].all()
	// The snapshot after the failures still reports the service as changed.
	// Snapshots 0 and 1 failed; 2 is the first success and must still carry
	// the service added before the failed sync 1.
	if !snaps[2].Changed.Has(webHTTP) {
		t.Errorf("IPv6 snapshot after failures lost the pending change: %v", changed(snaps[2]))
	}
	if queued, _ := tp.health.counts(ipv6); queued == 0 {
		t.Errorf("no QueuedUpdate for IPv6")
	}
}

// A change that arrives while a sync runs is not in that sync's snapshot: when the sync
// succeeds, the health recorder must still see it waiting, or a change that then never
// syncs (every retry fails) would leave /healthz at 200 for ever.
func TestProxierChangeDuringSyncStaysPending(t *testing.T) {
	tp := newTestProxier(t, ipv4)
	tp.OnServicesSynced()
	tp.OnEndpointSlicesSynced()
	tp.OnNodeAdd(testNode("192.0.2.11"))
	tp.run(t)
	waitFor(t, "first sync", func() bool { return len(tp.dp[ipv4].all()) == 1 })

	dp := tp.dp[ipv4]
	dp.mu.Lock()
	dp.during = func() {
		tp.OnEndpointSliceAdd(webSlice)
		dp.setFail(1000)
	}
	dp.mu.Unlock()
	tp.OnServiceAdd(webSvc)
	waitFor(t, "the sync with the racing slice, and a failed retry", func() bool {
		tp.clock.Step(5 * time.Second)
		return len(dp.all()) >= 3
	})
	snaps := dp.all()
	if len(snaps[1].Endpoints[webHTTP]) != 0 {
		t.Fatalf("the slice added during sync 1 is in its snapshot: the test raced nothing")
	}
	if !tp.health.pending(ipv4) {
		t.Errorf("the slice added during a successful sync, and never synced since, is not pending for health")
	}
}

func TestProxierServiceHealth(t *testing.T) {
	tp := newTestProxier(t, dual...)
	lb := makeService("ns/lb", svcType(v1.ServiceTypeLoadBalancer), clusterIPs("198.51.100.20", "2001:db8:5::20"),
		svcPort("http", tcp, 80, 30080), svcPort("https", tcp, 443, 30443), eTPLocal(31000))
	tp.OnServiceAdd(lb)
	tp.OnServiceAdd(webSvc)
	tp.OnEndpointSliceAdd(makeSlice("ns/lb-v4", "lb", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080), slicePort("https", tcp, 8443),
		sliceEndpoint("203.0.113.5", onNode("node1")), sliceEndpoint("203.0.113.6", onNode("node1"), conditions(false, true, true)),
		sliceEndpoint("203.0.113.70", onNode("node2"))))
	tp.OnEndpointSliceAdd(makeSlice("ns/lb-v6", "lb", discovery.AddressTypeIPv6, slicePort("http", tcp, 8080),
		sliceEndpoint("2001:db8:1::5", onNode("node1"))))
	tp.OnServicesSynced()
	tp.OnEndpointSlicesSynced()
	tp.OnNodeAdd(testNode("192.0.2.11", "2001:db8:2::11"))
	tp.run(t)
	want := types.NamespacedName{Namespace: "ns", Name: "lb"}
	waitFor(t, "service health", func() bool {
		ports, counts := tp.svcHC.get()
		return maps.Equal(ports, map[types.NamespacedName]uint16{want: 31000}) && maps.Equal(counts, map[types.NamespacedName]int{want: 2})
	})
	tp.OnServiceDelete(lb)
	waitFor(t, "service health cleared", func() bool {
		ports, counts := tp.svcHC.get()
		return len(ports) == 0 && len(counts) == 0
	})
}

func TestServiceHealthCounts(t *testing.T) {
	local := func(ip string, opts ...epOpt) *Endpoint { return testEP(ip, append([]epOpt{local}, opts...)...) }
	lb := &ServicePort{Name: spn("ns/lb", "http", tcp), ExternalPolicyLocal: true, HealthCheckNodePort: 31000, NodePort: 30080}
	lb2 := &ServicePort{Name: spn("ns/lb", "https", tcp), ExternalPolicyLocal: true, HealthCheckNodePort: 31000, NodePort: 30443}
	cluster := &ServicePort{Name: spn("ns/web", "http", tcp), HealthCheckNodePort: 0}
	snaps := map[v1.IPFamily]*Snapshot{ipv4: {
		Services: map[ServicePortName]*ServicePort{lb.Name: lb, lb2.Name: lb2, cluster.Name: cluster},
		Endpoints: map[ServicePortName][]*Endpoint{
			lb.Name:      {local("203.0.113.5:80"), local("203.0.113.6:80", servingTerminating), testEP("203.0.113.70:80")},
			lb2.Name:     {local("203.0.113.5:443"), local("203.0.113.7:443")},
			cluster.Name: {local("203.0.113.9:80")},
		},
	}}
	ports, counts := serviceHealth(snaps)
	want := nsn("ns/lb")
	if !maps.Equal(ports, map[types.NamespacedName]uint16{want: 31000}) || !maps.Equal(counts, map[types.NamespacedName]int{want: 2}) {
		t.Errorf("ports %v counts %v; want lb:31000 with 2 distinct local ready IPs", ports, counts)
	}
}
