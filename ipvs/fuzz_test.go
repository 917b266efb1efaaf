package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/iptables"
)

// FuzzIPVS builds a sequence of random snapshots (every service type, endpoints in
// every condition, colliding addresses, odd node addresses, random options) and
// reconciles each into one stateful fake kernel, as full or partial syncs, with
// connections on real servers, clock steps and changes made behind the reconciler's
// back. After each step the kernel must hold exactly what a new reconciler writes for
// that snapshot into a kernel without our objects, except for real servers in graceful
// termination, which must be exactly those the connections keep; and every object
// must be valid for the family and its ipset type.
//
// Seeds: testdata/fuzz/FuzzIPVS. Run: go test -run=^$ -fuzz=FuzzIPVS -fuzztime=20s ./ipvs/
func FuzzIPVS(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Fuzz(checkIPVSCase)
}

// checkIPVSCase is FuzzIPVS's body.
func checkIPVSCase(t *testing.T, data []byte) {
	c := decodeIPVSCase(data)
	k := newFuzzKernel(c)
	rec := NewReconciler(k.kernel(), c.opts, k.clock)
	grace := cmp.Or(c.opts.GracePeriod, DefaultGracePeriod)
	terminating := map[rsKey]time.Time{} // since when, by the test's own account
	left := excludedLeft{vs: map[VSKey]VirtualServer{}, rs: map[VSKey]map[netip.AddrPort]RealServer{}, addrs: sets.New[netip.Addr]()}
	local := c.steps[0].local
	for i, st := range c.steps {
		k.clock.Step(st.advance)
		now := k.clock.Now()
		st.apply(k)
		if st.full {
			local = st.local // as Proxier.Sync: node addresses are re-read on full syncs only
		}
		before := stateOf(k)
		ds := Build(st.snap, local, c.opts)
		if st.check {
			rec.CheckGraceful()
		}
		if err := rec.Reconcile(ds, st.full); err != nil {
			t.Fatalf("step %d (full %v): reconcile: %v", i, st.full, err)
		}
		if drifted, err := rec.Drifted(); drifted || err != nil {
			t.Fatalf("step %d: Drifted right after a sync = %v, %v", i, drifted, err)
		}
		fresh := newFuzzKernel(c)
		if err := NewReconciler(fresh.kernel(), c.opts, fresh.clock).Reconcile(ds, true); err != nil {
			t.Fatalf("step %d: fresh reconcile: %v", i, err)
		}
		got, want := stateOf(k), stateOf(fresh)
		left.expect(&want, ds)
		if err := sameButGraceful(got, want, before, terminating, now, grace, st.check, rec); err != nil {
			t.Fatalf("step %d (full %v): kernel after incremental syncs differs from a fresh sync: %v", i, st.full, err)
		}
		if err := wellFormed(got, ds, c, local); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		left.record(got, ds, c.opts.excluded)
	}
}

// rsKey is one real server of one virtual server.
type rsKey struct {
	vs VSKey
	rs netip.AddrPort
}

// excludedLeft is what stays of the objects of services at excluded addresses once
// no service uses them: ExcludeCIDRs are never cleaned up (kube-proxy's
// --ipvs-exclude-cidrs), so a fresh sync does not have them and they are expected
// as they were last synced (real servers at weight 0 aside: graceful termination
// goes on).
type excludedLeft struct {
	vs    map[VSKey]VirtualServer
	rs    map[VSKey]map[netip.AddrPort]RealServer
	addrs sets.Set[netip.Addr]
}

func (e *excludedLeft) record(got kernelState, ds *DesiredState, excluded func(netip.Addr) bool) {
	for key := range ds.VirtualServers {
		if excluded(key.Address) {
			e.vs[key], e.rs[key] = got.vs[key], map[netip.AddrPort]RealServer{}
			for addr, rs := range got.rs[key] {
				if rs.Weight > 0 {
					e.rs[key][addr] = rs
				}
			}
		}
	}
	for a := range ds.Addresses {
		if excluded(a) {
			e.addrs.Insert(a)
		}
	}
}

func (e *excludedLeft) expect(want *kernelState, ds *DesiredState) {
	for key, vs := range e.vs {
		if ds.VirtualServers[key] == nil {
			want.vs[key], want.rs[key] = vs, e.rs[key]
		}
	}
	for a := range e.addrs {
		if !slices.Contains(want.addrs, a) {
			want.addrs = append(want.addrs, a)
		}
	}
	slices.SortFunc(want.addrs, netip.Addr.Compare)
}

// kernelState is what the fakes hold, in comparable form.
type kernelState struct {
	vs    map[VSKey]VirtualServer
	rs    map[VSKey]map[netip.AddrPort]RealServer
	addrs []netip.Addr // on kube-ipvs0, both families
	sets  map[string]*IPSet
	ipt   string
}

func stateOf(k *fuzzKernel) kernelState {
	s := kernelState{vs: map[VSKey]VirtualServer{}, rs: map[VSKey]map[netip.AddrPort]RealServer{}}
	for vs, rss := range k.ipvs.State() {
		s.vs[vs.VSKey] = vs
		s.rs[vs.VSKey] = map[netip.AddrPort]RealServer{}
		for _, rs := range rss {
			s.rs[vs.VSKey][rs.Addr] = rs
		}
	}
	s.addrs = k.links.Addresses(DummyDevice)
	s.sets, _ = k.ipsets.List()
	s.ipt = string(k.ipt.SaveAll())
	return s
}

// sameButGraceful compares got (after incremental syncs) with want (a fresh sync).
// Graceful termination is the one allowed difference, and it is accounted for
// exactly: a TCP real server the snapshot dropped stays, at weight 0 and tracked by
// the reconciler, while it has connections and its grace period runs; it is gone
// once its grace period is over, or, when this step forced a check, once it has no
// connection left. terminating (start times) is updated for the next step.
func sameButGraceful(got, want, before kernelState, terminating map[rsKey]time.Time, now time.Time,
	grace time.Duration, checked bool, rec *Reconciler) error {
	if !slices.Equal(got.addrs, want.addrs) {
		return fmt.Errorf("kube-ipvs0 addresses %v, want %v", got.addrs, want.addrs)
	}
	if got.ipt != want.ipt {
		return fmt.Errorf("iptables rules:\n%s\nwant:\n%s", got.ipt, want.ipt)
	}
	if err := sameIPSets(got.sets, want.sets); err != nil {
		return err
	}
	for key, vs := range want.vs {
		if got.vs[key] != vs {
			return fmt.Errorf("virtual server %v is %+v, want %+v", key, got.vs[key], vs)
		}
	}
	next := map[rsKey]time.Time{}
	for key, vs := range got.vs {
		if _, ok := want.vs[key]; !ok {
			return fmt.Errorf("extra virtual server %+v", vs)
		}
		for addr, w := range want.rs[key] {
			if g, ok := got.rs[key][addr]; !ok || g.Weight != w.Weight {
				return fmt.Errorf("real server %v of %v: got %+v (present %v), want weight %d", addr, key, g, ok, w.Weight)
			}
		}
		for addr, g := range got.rs[key] {
			if _, ok := want.rs[key][addr]; ok {
				continue
			}
			rk := rsKey{key, addr}
			since, ok := terminating[rk]
			if !ok {
				since = now
			}
			conns := g.ActiveConns + g.InactiveConns
			switch _, existed := before.rs[key][addr]; {
			case !existed:
				return fmt.Errorf("unwanted real server %v of %v appeared", addr, key)
			case key.Protocol != v1.ProtocolTCP || g.Weight != 0 || !rec.graceful.has(key, addr):
				return fmt.Errorf("unwanted real server %+v of %v kept (not TCP, not weight 0 or not tracked)", g, key)
			case now.Sub(since) >= grace:
				return fmt.Errorf("real server %v of %v kept %v after it left, past its grace period", addr, key, now.Sub(since))
			case checked && conns == 0:
				return fmt.Errorf("real server %v of %v kept without connections by a forced check", addr, key)
			}
			next[rk] = since
		}
		// The other way round: dropping a real server that still has connections
		// within its grace period would cut them.
		for addr, b := range before.rs[key] {
			rk := rsKey{key, addr}
			since, ok := terminating[rk]
			if !ok {
				since = now
			}
			_, wanted := want.rs[key][addr]
			_, kept := next[rk]
			if !wanted && !kept && key.Protocol == v1.ProtocolTCP && b.ActiveConns+b.InactiveConns > 0 && now.Sub(since) < grace {
				return fmt.Errorf("real server %v of %v with %d connections deleted %v into its grace period",
					addr, key, b.ActiveConns+b.InactiveConns, now.Sub(since))
			}
		}
	}
	if n := rec.Terminating(); n != len(next) {
		return fmt.Errorf("reconciler tracks %d terminating real servers, the kernel holds %d", n, len(next))
	}
	clear(terminating)
	for rk, since := range next {
		terminating[rk] = since
	}
	return nil
}

func sameIPSets(got, want map[string]*IPSet) error {
	for name, w := range want {
		g := got[name]
		if g == nil || g.Type != w.Type || g.Family != w.Family || !g.Members.Equal(w.Members) {
			return fmt.Errorf("ipset %s: got %+v, want %+v (missing %v, extra %v)", name, g, w,
				sets.List(w.Members.Difference(membersOf(g))), sets.List(membersOf(g).Difference(w.Members)))
		}
	}
	for name := range got {
		if want[name] == nil {
			return fmt.Errorf("extra ipset %s", name)
		}
	}
	return nil
}

func membersOf(s *IPSet) sets.Set[string] {
	if s == nil {
		return sets.New[string]()
	}
	return s.Members
}

// wellFormed checks the kernel's objects of the case's family (foreign ones aside)
// against the family, the options and the ipset types.
func wellFormed(s kernelState, ds *DesiredState, c ipvsCase, local []netip.Addr) error {
	reachable := sets.New[netip.Addr]() // the node accepts traffic to these
	for _, a := range s.addrs {
		if familyOf(a) != c.family {
			continue
		}
		reachable.Insert(a)
		if !ds.Addresses.Has(a) && !c.opts.excluded(a) {
			return fmt.Errorf("%v left on %s", a, DummyDevice)
		}
	}
	for _, a := range local {
		reachable.Insert(a.Unmap())
	}
	for key, vs := range s.vs {
		// Skip those of others: the other family's, excluded ones no service uses.
		if familyOf(key.Address) != c.family || c.opts.excluded(key.Address) && ds.VirtualServers[key] == nil {
			continue
		}
		if err := validAddr(key.Address, c.family); err != nil || key.Port == 0 || !slices.Contains(protocols, key.Protocol) {
			return fmt.Errorf("virtual server %v: bad key (%v)", key, err)
		}
		if !reachable.Has(key.Address) {
			return fmt.Errorf("virtual server %v: address neither on %s nor on another link", key, DummyDevice)
		}
		mh := c.opts.scheduler() == "mh"
		if vs.Scheduler != c.opts.scheduler() || (vs.Flags&FlagSourceHash != 0) != mh || (vs.Flags&FlagPersistent != 0) != (vs.Timeout > 0) {
			return fmt.Errorf("virtual server %+v: scheduler or flags do not match options %q", vs, c.opts.scheduler())
		}
		for addr, rs := range s.rs[key] {
			if err := validAddr(addr.Addr(), c.family); err != nil || addr.Port() == 0 || rs.Weight < 0 || rs.Weight > 1 {
				return fmt.Errorf("virtual server %v: bad real server %+v (%v)", key, rs, err)
			}
		}
	}
	bound := sets.New[string]()
	for a := range ds.Addresses {
		if !slices.Contains(s.addrs, a) {
			return fmt.Errorf("%v not bound to %s", a, DummyDevice)
		}
		if slices.ContainsFunc(local, func(l netip.Addr) bool { return l.Unmap() == a }) {
			return fmt.Errorf("%v is bound to %s although another link has it", a, DummyDevice)
		}
		bound.Insert(a.String())
	}
	if ips := s.sets[SetName(SetIPVSIPs, c.family)]; ips == nil || !ips.Members.Equal(bound) {
		return fmt.Errorf("%s is %v, want the addresses bound to %s: %v", SetIPVSIPs, ips, DummyDevice, sets.List(bound))
	}
	names := sets.New[string]()
	for _, info := range setInfo {
		name := SetName(info.name, c.family)
		set := s.sets[name]
		if len(name) > 31 || names.Has(name) || set == nil || set.Type != info.typ || set.Family != c.family {
			return fmt.Errorf("ipset %s (for %s): bad name, duplicate or missing: %+v", name, info.name, set)
		}
		names.Insert(name)
		for m := range set.Members {
			if err := validMember(set.Type, c.family, m); err != nil {
				return fmt.Errorf("ipset %s (%s): member %q: %v", name, set.Type, m, err)
			}
		}
	}
	return nil
}

var protocols = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}

// validAddr: IPVS serves neither loopback nor link-local addresses, and the
// snapshot has no such VIP or endpoint.
func validAddr(a netip.Addr, family v1.IPFamily) error {
	if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() ||
		a.IsLinkLocalUnicast() || familyOf(a) != family {
		return fmt.Errorf("%v is not a plain %s unicast address", a, family)
	}
	return nil
}

// validMember checks m as `ipset save` prints a member of a set of type typ, so that
// the kernel accepts it and the reconciler's diff matches what it reads back.
func validMember(typ string, family v1.IPFamily, m string) error {
	if typ == setTypeBitmapPort {
		return validPort(m)
	}
	parts := strings.Split(m, ",")
	want := map[string]int{setTypeHashIP: 1, setTypeHashIPPort: 2, setTypeHashIPPortIP: 3, setTypeHashIPPortNet: 3}[typ]
	if want == 0 || len(parts) != want {
		return fmt.Errorf("want %d fields", want)
	}
	if err := validCanonicalAddr(parts[0], family); err != nil {
		return err
	}
	if want == 1 {
		return nil
	}
	proto, port, _ := strings.Cut(parts[1], ":")
	if !slices.Contains([]string{"tcp", "udp", "sctp"}, proto) {
		return fmt.Errorf("protocol %q", proto)
	}
	if err := validPort(port); err != nil {
		return err
	}
	switch typ {
	case setTypeHashIPPort:
		return nil
	case setTypeHashIPPortIP:
		return validCanonicalAddr(parts[2], family)
	}
	// hash:ip,port,net: a host is printed without its length; the kernel refuses
	// a zero length (it stores length-1).
	if !strings.Contains(parts[2], "/") {
		return validCanonicalAddr(parts[2], family)
	}
	p, err := netip.ParsePrefix(parts[2])
	switch {
	case err != nil || p.String() != parts[2]:
		return fmt.Errorf("net %q is not canonical", parts[2])
	case p != p.Masked() || familyOf(p.Addr()) != family:
		return fmt.Errorf("net %q has host bits or is of the wrong family", parts[2])
	case p.Bits() < 1 || p.Bits() >= p.Addr().BitLen():
		return fmt.Errorf("net %q: length must be 1..%d", parts[2], p.Addr().BitLen()-1)
	}
	return nil
}

func validCanonicalAddr(s string, family v1.IPFamily) error {
	a, err := netip.ParseAddr(s)
	if err != nil || a.String() != s {
		return fmt.Errorf("address %q is not canonical", s)
	}
	return validAddr(a, family)
}

func validPort(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 || strconv.Itoa(n) != s {
		return fmt.Errorf("port %q", s)
	}
	return nil
}

// newFuzzKernel is a stateful fake kernel holding only objects that are not ours:
// the other family's virtual server, address and ipset, a virtual server and an
// address in the exclude range, an ipset of another program. The reconciler must
// leave all of them alone (the same-family ones go when nothing excludes them).
func newFuzzKernel(c ipvsCase) *fuzzKernel {
	k := &fuzzKernel{family: c.family, fakeKernel: &fakeKernel{
		ipvs:   NewFakeIPVS(),
		links:  NewFakeLinks(map[string][]netip.Addr{DummyDevice: {c.pools.foreignAddr, c.pools.otherAddr}}),
		ipsets: NewFakeIPSets(),
		ipt:    iptables.NewFake(c.family),
		clock:  clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}}
	for _, a := range []netip.Addr{c.pools.foreignAddr, c.pools.otherAddr} {
		key := VSKey{Address: a, Protocol: v1.ProtocolTCP, Port: 80}
		must(k.ipvs.AddVirtualServer(VirtualServer{VSKey: key, Scheduler: "wlc"}))
		must(k.ipvs.AddRealServer(key, RealServer{Addr: netip.AddrPortFrom(a, 8080), Weight: 2}))
	}
	other := v1.IPv6Protocol
	if c.family == v1.IPv6Protocol {
		other = v1.IPv4Protocol
	}
	must(k.ipsets.Apply(&IPSetBatch{
		Create: []*IPSet{{Name: SetName(SetIPVSIPs, other), Type: setTypeHashIP, Family: other}, {Name: "OTHER-PROGRAM", Type: setTypeHashIP, Family: c.family}},
		Add:    []IPSetMember{{SetName(SetIPVSIPs, other), c.pools.otherAddr.String()}, {"OTHER-PROGRAM", c.pools.foreignAddr.String()}},
	}))
	return k
}

// fuzzKernel is fakeKernel for either family.
type fuzzKernel struct {
	*fakeKernel
	family v1.IPFamily
}

func (k *fuzzKernel) kernel() Kernel {
	return Kernel{Family: k.family, IPVS: k.ipvs, Links: k.links, IPSets: k.ipsets, IPTables: k.ipt}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
