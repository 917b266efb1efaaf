package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

type fakeKernel struct {
	ipvs   *FakeIPVS
	links  *FakeLinks
	ipsets *FakeIPSets
	ipt    *iptables.Fake
	clock  *clocktesting.FakeClock
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		ipvs:   NewFakeIPVS(),
		links:  NewFakeLinks(map[string][]netip.Addr{"lo": {netip.MustParseAddr("127.0.0.1")}, "eth0": {node1IP}}),
		ipsets: NewFakeIPSets(),
		ipt:    iptables.NewFake(v1.IPv4Protocol),
		clock:  clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}
}

func (f *fakeKernel) kernel() Kernel {
	return Kernel{Family: v1.IPv4Protocol, IPVS: f.ipvs, Links: f.links, IPSets: f.ipsets, IPTables: f.ipt}
}

func (f *fakeKernel) reset() {
	f.ipvs.ResetCalls()
	f.links.ResetCalls()
	f.ipsets.ResetCalls()
}

// calls lists every call since reset, IPVS first, then links, then ipsets.
func (f *fakeKernel) calls() []string {
	var out []string
	out = append(out, f.ipvs.Calls()...)
	out = append(out, f.links.Calls()...)
	return append(out, f.ipsets.Calls()...)
}

func newTestProxier(f *fakeKernel, opts Options) *Proxier {
	return NewProxier(f.kernel(), opts, f.clock)
}

func mustSync(t *testing.T, p *Proxier, snap *proxier.Snapshot) proxier.SyncResult {
	t.Helper()
	res, err := p.Sync(snap)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

func webSnap(eps ...*proxier.Endpoint) *proxier.Snapshot {
	items := []any{svc("ns/web", clusterIP("198.51.100.10"))}
	for _, e := range eps {
		items = append(items, e)
	}
	return snapshot(items...)
}

func webUDPSnap(eps ...*proxier.Endpoint) *proxier.Snapshot {
	items := []any{svc("ns/dns", clusterIP("198.51.100.53"), port(53), proto(v1.ProtocolUDP))}
	for _, e := range eps {
		items = append(items, e)
	}
	return snapshot(items...)
}

func TestReconcileCalls(t *testing.T) {
	web := vsKey("198.51.100.10:80", v1.ProtocolTCP)
	e1, e2, e3 := ep("203.0.113.1:8080"), ep("203.0.113.2:8080"), ep("203.0.113.3:8080")
	f := newFakeKernel()
	p := newTestProxier(f, DefaultOptions())

	res := mustSync(t, p, webSnap(e1, e2))
	// Real servers of one virtual server are added in map order.
	calls := f.calls()
	slices.Sort(calls[2:4])
	eq(t, "first sync", calls, []string{
		"ListVirtualServers",
		"AddVirtualServer 198.51.100.10:80/TCP rr flags=0x0 timeout=0",
		"AddRealServer 198.51.100.10:80/TCP 203.0.113.1:8080 weight=1",
		"AddRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=1",
		"LocalAddresses", "EnsureDummy kube-ipvs0", "ListAddresses kube-ipvs0", "AddAddress kube-ipvs0 198.51.100.10",
		"List", "Apply create=18 add=4 del=0 flush=0 destroy=0",
	})
	// Plus one iptables restore and nine jumps.
	if res.KernelCalls != 20 || !res.Full {
		t.Errorf("first sync: %d calls, full %v", res.KernelCalls, res.Full)
	}
	if !strings.Contains(f.ipt.Dump(iptables.TableNAT), "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
		t.Errorf("jump missing:\n%s", f.ipt.Dump(iptables.TableNAT))
	}

	steps := []struct {
		name  string
		snap  *proxier.Snapshot
		want  []string
		calls int
	}{
		{"no-op", webSnap(e1, e2), nil, 0},
		{"add one endpoint", webSnap(e1, e2, e3), []string{
			"AddRealServer 198.51.100.10:80/TCP 203.0.113.3:8080 weight=1",
			"Apply create=0 add=1 del=0 flush=0 destroy=0"}, 2},
		{"remove one TCP endpoint: quiesced", webSnap(e1, e3), []string{
			"UpdateRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=0",
			"Apply create=0 add=0 del=1 flush=0 destroy=0"}, 2},
		{"it comes back: weight restored", webSnap(e1, e2, e3), []string{
			"UpdateRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=1",
			"Apply create=0 add=1 del=0 flush=0 destroy=0"}, 2},
		{"service removed", snapshot(), []string{
			"DeleteVirtualServer 198.51.100.10:80/TCP",
			"DeleteAddress kube-ipvs0 198.51.100.10",
			"Apply create=0 add=0 del=5 flush=0 destroy=0"}, 4}, // + iptables restore: sets went empty
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			f.reset()
			res := mustSync(t, p, s.snap)
			eq(t, "calls", f.calls(), s.want)
			if res.KernelCalls != s.calls || res.Full {
				t.Errorf("%d kernel calls (full %v), want %d", res.KernelCalls, res.Full, s.calls)
			}
		})
	}
	if len(f.ipvs.State()) != 0 || f.links.Addresses(DummyDevice) != nil && len(f.links.Addresses(DummyDevice)) != 0 {
		t.Errorf("left behind: %v %v", f.ipvs.State(), f.links.Addresses(DummyDevice))
	}
	_ = web
}

func TestReconcileUDPDeletesAtOnce(t *testing.T) {
	f := newFakeKernel()
	p := newTestProxier(f, DefaultOptions())
	mustSync(t, p, webUDPSnap(ep("203.0.113.1:53"), ep("203.0.113.2:53")))
	f.reset()
	mustSync(t, p, webUDPSnap(ep("203.0.113.1:53")))
	eq(t, "calls", f.calls(), []string{
		"DeleteRealServer 198.51.100.53:53/UDP 203.0.113.2:53",
		"Apply create=0 add=0 del=1 flush=0 destroy=0"})
}

func TestReconcileRetriesOnlyFailedObject(t *testing.T) {
	f := newFakeKernel()
	p := newTestProxier(f, DefaultOptions())
	mustSync(t, p, webSnap(ep("203.0.113.1:8080")))
	f.reset()
	f.ipvs.FailCall = func(call string) error {
		if strings.Contains(call, "AddRealServer") && strings.Contains(call, "203.0.113.2:") {
			return errors.New("injected")
		}
		return nil
	}
	snap := snapshot(svc("ns/web", clusterIP("198.51.100.10")), ep("203.0.113.1:8080"), ep("203.0.113.2:8080"), ep("203.0.113.3:8080"),
		svc("ns/other", clusterIP("198.51.100.11")), ep("203.0.113.4:8080"))
	if _, err := p.Sync(snap); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("want the injected error, got %v", err)
	}
	state := f.ipvs.State()
	if len(state) != 2 {
		t.Fatalf("other objects not applied: %v", state)
	}
	f.ipvs.FailCall = nil
	f.reset()
	mustSync(t, p, snap)
	eq(t, "retry", f.ipvs.Calls(), []string{
		"ListRealServers 198.51.100.10:80/TCP",
		"AddRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=1"})
	f.reset()
	mustSync(t, p, snap)
	eq(t, "then nothing", f.calls(), nil)
}

func TestReconcileIPSetBatchFailureKeepsOthers(t *testing.T) {
	f := newFakeKernel()
	p := newTestProxier(f, DefaultOptions())
	mustSync(t, p, webSnap(ep("203.0.113.1:8080")))
	fail := true
	f.ipsets.FailCall = func(call string) error {
		if fail {
			fail = false
			return errors.New("injected")
		}
		return nil
	}
	if _, err := p.Sync(webSnap(ep("203.0.113.1:8080"), ep("203.0.113.2:8080"))); err == nil {
		t.Fatal("no error")
	}
	f.reset()
	mustSync(t, p, webSnap(ep("203.0.113.1:8080"), ep("203.0.113.2:8080")))
	eq(t, "retry", f.ipsets.Calls(), []string{"List", "Apply create=0 add=1 del=0 flush=0 destroy=0"})
	eq(t, "members", f.ipsets.Members(SetLoopBack), []string{"203.0.113.1,tcp:8080,203.0.113.1", "203.0.113.2,tcp:8080,203.0.113.2"})
}

func TestReconcileStaleVirtualServers(t *testing.T) {
	f := newFakeKernel()
	for _, vs := range []string{"198.51.100.99:80", "192.0.2.200:80", "[2001:db8:5::1]:80"} {
		if err := f.ipvs.AddVirtualServer(VirtualServer{VSKey: vsKey(vs, v1.ProtocolTCP), Scheduler: "rr"}); err != nil {
			t.Fatal(err)
		}
	}
	// Left at weight 0 by an earlier run: weight restored.
	if err := f.ipvs.AddVirtualServer(VirtualServer{VSKey: vsKey("198.51.100.10:80", v1.ProtocolTCP), Scheduler: "wrr"}); err != nil {
		t.Fatal(err)
	}
	f.ipvs.AddRealServer(vsKey("198.51.100.10:80", v1.ProtocolTCP), RealServer{Addr: netip.MustParseAddrPort("203.0.113.1:8080")})
	f.reset()
	opts := DefaultOptions()
	opts.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	p := newTestProxier(f, opts)
	mustSync(t, p, webSnap(ep("203.0.113.1:8080")))
	ipvsCalls := f.ipvs.Calls()
	slices.Sort(ipvsCalls)
	eq(t, "ipvs calls", ipvsCalls, []string{
		"DeleteVirtualServer 198.51.100.99:80/TCP",
		// Read, never changed: a service could use its address.
		"ListRealServers 192.0.2.200:80/TCP",
		"ListRealServers 198.51.100.10:80/TCP",
		"ListRealServers 198.51.100.99:80/TCP",
		"ListVirtualServers",
		"UpdateRealServer 198.51.100.10:80/TCP 203.0.113.1:8080 weight=1",
		"UpdateVirtualServer 198.51.100.10:80/TCP rr flags=0x0 timeout=0",
	})
	if len(f.ipvs.State()) != 3 {
		t.Errorf("state %v", f.ipvs.State())
	}
}

func TestBoundAddrsSkipsKernelLinkLocal(t *testing.T) {
	in := []netip.Addr{
		netip.MustParseAddr("fe80::a418:34ff:fe31:6741"),
		netip.MustParseAddr("2001:db8:5::10"),
		netip.MustParseAddr("198.51.100.10"),
	}
	got := boundAddrs(in)
	want := []netip.Addr{netip.MustParseAddr("2001:db8:5::10"), netip.MustParseAddr("198.51.100.10")}
	if !slices.Equal(got, want) {
		t.Errorf("boundAddrs = %v, want %v", got, want)
	}
}

// Found by FuzzIPVS: virtual servers inside ExcludeCIDRs were left out of the
// reconciler's read, so a service using such an address had its virtual server
// added again (EEXIST) on every full resync, or on a partial sync after one that
// did not want it, failing the sync and never updating its real servers.
func TestReconcileServiceInExcludeCIDRs(t *testing.T) {
	f := newFakeKernel()
	opts := DefaultOptions()
	opts.ExcludeCIDRs = parsePrefixes("203.0.113.200/32")
	p := newTestProxier(f, opts)
	web := func(eps ...*proxier.Endpoint) *proxier.Snapshot {
		items := []any{svc("ns/web", clusterIP("198.51.100.10"), externalIPs("203.0.113.200"), proto(v1.ProtocolUDP))}
		for _, e := range eps {
			items = append(items, e)
		}
		return snapshot(items...)
	}
	excluded := vsKey("203.0.113.200:80", v1.ProtocolUDP)
	for _, step := range []struct {
		name  string
		full  bool
		snap  *proxier.Snapshot
		want  map[VSKey][]string // real servers
		bound []string           // on kube-ipvs0
	}{
		{"first sync", true, web(ep("203.0.113.1:8080")), map[VSKey][]string{
			vsKey("198.51.100.10:80", v1.ProtocolUDP): {"203.0.113.1:8080"}, excluded: {"203.0.113.1:8080"}},
			[]string{"198.51.100.10", "203.0.113.200"}},
		{"full resync with an endpoint change", true, web(ep("203.0.113.2:8080")), map[VSKey][]string{
			vsKey("198.51.100.10:80", v1.ProtocolUDP): {"203.0.113.2:8080"}, excluded: {"203.0.113.2:8080"}},
			[]string{"198.51.100.10", "203.0.113.200"}},
		// Never cleaned up, as kube-proxy does with --ipvs-exclude-cidrs.
		{"service removed", true, snapshot(), map[VSKey][]string{excluded: {"203.0.113.2:8080"}}, []string{"203.0.113.200"}},
		{"back in a partial sync", false, web(ep("203.0.113.3:8080")), map[VSKey][]string{
			vsKey("198.51.100.10:80", v1.ProtocolUDP): {"203.0.113.3:8080"}, excluded: {"203.0.113.3:8080"}},
			[]string{"198.51.100.10", "203.0.113.200"}},
	} {
		if step.full {
			p.ForceFullSync()
		}
		if res := mustSync(t, p, step.snap); res.Full != step.full {
			t.Fatalf("%s: full %v", step.name, res.Full)
		}
		got := map[VSKey][]string{}
		for vs, rss := range f.ipvs.State() {
			got[vs.VSKey] = []string{}
			for _, rs := range rss {
				got[vs.VSKey] = append(got[vs.VSKey], rs.Addr.String())
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(step.want) {
			t.Errorf("%s: virtual servers %v, want %v", step.name, got, step.want)
		}
		eq(t, step.name+": kube-ipvs0", f.links.Addresses(DummyDevice), addrs(step.bound))
		if drifted, err := p.Verify(); drifted || err != nil {
			t.Errorf("%s: Verify = %v, %v", step.name, drifted, err)
		}
	}
}
