package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// ipvsCase is what decodeIPVSCase makes of fuzz bytes.
type ipvsCase struct {
	family v1.IPFamily
	opts   Options
	pools  fzPools
	steps  []ipvsStep
}

// ipvsStep is one sync and what happens to the kernel just before it.
type ipvsStep struct {
	snap *proxier.Snapshot
	// local are the node's addresses outside kube-ipvs0 as Build gets them (odd ones
	// included); like Proxier.Sync, only a full sync takes new ones.
	local   []netip.Addr
	full    bool
	advance time.Duration
	check   bool // CheckGraceful before the sync
	// conns set connection counts on real servers, as traffic would.
	conns []connPick
	// tamper is a change made behind the reconciler's back (negative: none); a step
	// with one is a full sync, as the proxier's Verify or resync period makes it.
	tamper, pick int
	family       v1.IPFamily
	excluded     func(netip.Addr) bool
	stale        netip.Addr
}

type connPick struct{ vs, rs, active, inactive int }

// apply makes the step's connection counts and tampering in k.
func (st ipvsStep) apply(k *fuzzKernel) {
	state := stateOf(k)
	var keys []VSKey // ours, in a stable order so that an input replays alike
	for key := range state.vs {
		if familyOf(key.Address) == st.family && !st.excluded(key.Address) {
			keys = append(keys, key)
		}
	}
	slices.SortFunc(keys, func(a, b VSKey) int { return cmp.Compare(a.String(), b.String()) })
	rsOf := func(key VSKey) []netip.AddrPort {
		out := make([]netip.AddrPort, 0, len(state.rs[key]))
		for a := range state.rs[key] {
			out = append(out, a)
		}
		slices.SortFunc(out, netip.AddrPort.Compare)
		return out
	}
	for _, cp := range st.conns {
		if len(keys) == 0 {
			break
		}
		key := keys[cp.vs%len(keys)]
		if rss := rsOf(key); len(rss) > 0 {
			k.ipvs.SetConnections(key, rss[cp.rs%len(rss)], cp.active, cp.inactive)
		}
	}
	switch st.tamper {
	case 0: // someone deletes a virtual server (one without terminating real servers)
		var quiet []VSKey
		for _, key := range keys {
			if !slices.ContainsFunc(rsOf(key), func(a netip.AddrPort) bool { return state.rs[key][a].Weight == 0 }) {
				quiet = append(quiet, key)
			}
		}
		if len(quiet) > 0 {
			must(k.ipvs.DeleteVirtualServer(quiet[st.pick%len(quiet)]))
		}
	case 1: // ...or one of our addresses
		var ours []netip.Addr
		for _, a := range state.addrs {
			if familyOf(a) == st.family && !st.excluded(a) {
				ours = append(ours, a)
			}
		}
		if len(ours) > 0 {
			must(k.links.DeleteAddress(DummyDevice, ours[st.pick%len(ours)]))
		}
	case 2: // ...or an ipset member
		var all []IPSetMember
		for _, name := range SetNames(st.family) {
			if s := state.sets[name]; s != nil {
				for _, m := range sets.List(s.Members) {
					all = append(all, IPSetMember{name, m})
				}
			}
		}
		if len(all) > 0 {
			must(k.ipsets.Apply(&IPSetBatch{Del: []IPSetMember{all[st.pick%len(all)]}}))
		}
	case 3: // ...or adds a virtual server of our family
		key := VSKey{Address: st.stale, Protocol: v1.ProtocolTCP, Port: 81}
		if state.vs[key] == (VirtualServer{}) {
			must(k.ipvs.AddVirtualServer(VirtualServer{VSKey: key, Scheduler: "rr"}))
			must(k.ipvs.AddRealServer(key, RealServer{Addr: netip.AddrPortFrom(st.stale, 8080), Weight: 1}))
		}
	case 4: // ...or changes a weight
		for i := range keys {
			key := keys[(st.pick+i)%len(keys)]
			if rss := rsOf(key); len(rss) > 0 && state.rs[key][rss[0]].Weight > 0 {
				must(k.ipvs.UpdateRealServer(key, RealServer{Addr: rss[0], Weight: 3}))
				break
			}
		}
	}
}

// fzPools are the addresses a case draws from, per family: service addresses shared
// between services and with the node, node addresses of every odd kind.
type fzPools struct {
	clusterIPs, externalIPs, lbIPs, sourceRanges, endpointIPs []string
	locals, nodeIPs, nodePortAddresses, excludes              [][]string
	// foreignAddr is inside the excludes, otherAddr of the other family: the kernel
	// holds objects of theirs that are not ours (the last excludes also hold a
	// service address). stale is where tampering adds one.
	foreignAddr, otherAddr, stale netip.Addr
}

func poolsFor(family v1.IPFamily) fzPools {
	if family == v1.IPv6Protocol {
		return fzPools{
			clusterIPs:  []string{"2001:db8:5::1", "2001:db8:5::2", "2001:db8:5::9", "2001:db8:3::15", ""},
			externalIPs: []string{"2001:db8:6::1", "2001:db8:6::2", "2001:db8:5::1", "2001:db8:2::11"},
			lbIPs:       []string{"2001:db8:6::10", "2001:db8:6::2", "2001:db8:3::15"},
			// With a /0 range the node and everyone else may use the load balancer.
			sourceRanges: []string{"2001:db8:2::/64", "2001:db8:2::101/128", "::/0", "2001:db8:5::/120"},
			endpointIPs:  []string{"2001:db8:1::2", "2001:db8:1::3", "2001:db8:1:0:2::2", "2001:db8:2::11"},
			locals: [][]string{{"::1", "2001:db8:2::11", "2001:db8:3::15", "fe80::1", "192.0.2.11", "::ffff:192.0.2.11", "2001:db8:2::11"},
				{"::1", "2001:db8:2::11"}, {}, {"2001:db8:2::11", "2001:db8:6::1"}},
			nodeIPs:           [][]string{{"2001:db8:2::11"}, {}, {"2001:db8:2::12", "2001:db8:2::11"}},
			nodePortAddresses: [][]string{nil, {"2001:db8:2::/64"}, {proxier.NodePortAddressesPrimary}, {"::1/128"}},
			excludes:          [][]string{nil, {"2001:db8:2::200/125"}, {"2001:db8:2::200/125", "2001:db8:6::2/128"}},
			foreignAddr:       netip.MustParseAddr("2001:db8:2::201"),
			otherAddr:         netip.MustParseAddr("198.51.100.99"),
			stale:             netip.MustParseAddr("2001:db8:5::77"),
		}
	}
	return fzPools{
		clusterIPs:   []string{"198.51.100.1", "198.51.100.2", "198.51.100.9", "198.18.0.15", ""},
		externalIPs:  []string{"203.0.113.200", "203.0.113.201", "198.51.100.1", "192.0.2.11"},
		lbIPs:        []string{"203.0.113.210", "203.0.113.201", "198.18.0.15"},
		sourceRanges: []string{"192.0.2.0/24", "192.0.2.101/32", "0.0.0.0/0", "198.51.100.0/25"},
		endpointIPs:  []string{"203.0.113.2", "203.0.113.3", "203.0.113.66", "192.0.2.11"},
		locals: [][]string{{"127.0.0.1", "192.0.2.11", "198.18.0.15", "169.254.3.1", "2001:db8:2::11", "::ffff:192.0.2.12", "192.0.2.11"},
			{"127.0.0.1", "192.0.2.11"}, {}, {"192.0.2.11", "203.0.113.200"}},
		nodeIPs:           [][]string{{"192.0.2.11"}, {}, {"192.0.2.12", "192.0.2.11"}},
		nodePortAddresses: [][]string{nil, {"192.0.2.0/24"}, {proxier.NodePortAddressesPrimary}, {"127.0.0.0/8"}},
		excludes:          [][]string{nil, {"192.0.2.200/29"}, {"192.0.2.200/29", "203.0.113.201/32"}},
		foreignAddr:       netip.MustParseAddr("192.0.2.201"),
		otherAddr:         netip.MustParseAddr("2001:db8:5::99"),
		stale:             netip.MustParseAddr("198.51.100.77"),
	}
}

// fzSome picks up to two distinct values (the proxier dedups address lists).
func fzSome(in *proxiertest.FuzzInput, pool []string) []string {
	var out []string
	for range in.Pick(3) {
		if v := proxiertest.Choose(in, pool...); !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func addrs(s []string) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// decodeIPVSCase turns bytes into a family, options and up to 8 steps, each a few
// random changes away from the previous snapshot, which starts as a small
// proxiertest one.
func decodeIPVSCase(data []byte) ipvsCase {
	in := proxiertest.NewFuzzInput(data)
	c := ipvsCase{family: proxiertest.Choose(in, v1.IPv4Protocol, v1.IPv6Protocol)}
	p := poolsFor(c.family)
	c.pools = p
	c.opts = DefaultOptions()
	c.opts.Scheduler = proxiertest.Choose(in, "", "rr", "mh", "wlc", "sh")
	c.opts.StrictARP = in.Pick(2) == 0
	c.opts.MasqueradeBit = proxiertest.Choose(in, 14, 0, 31)
	c.opts.MasqueradeAll = in.Pick(2) == 0
	c.opts.MasqueradeRandomFully = in.Pick(2) == 0
	c.opts.LocalDetector = proxiertest.Choose(in, iptables.NoOpLocalDetector(), iptables.LocalDetectorByBridgeInterface("cbr0"),
		iptables.LocalDetectorByInterfaceNamePrefix("veth"), iptables.LocalDetectorByCIDR(netip.MustParsePrefix(p.sourceRanges[0])))
	for _, cidr := range proxiertest.Choose(in, p.excludes...) {
		c.opts.ExcludeCIDRs = append(c.opts.ExcludeCIDRs, netip.MustParsePrefix(cidr))
	}
	c.opts.GracePeriod = proxiertest.Choose(in, 0, time.Minute)
	c.opts.GraceCheckPeriod = proxiertest.Choose(in, 0, 5*time.Second)
	grace, check := cmp.Or(c.opts.GracePeriod, DefaultGracePeriod), cmp.Or(c.opts.GraceCheckPeriod, DefaultGraceCheckPeriod)
	node := proxiertest.Node(c.family)
	node.IPs = addrs(proxiertest.Choose(in, p.nodeIPs...))
	node.Labels[v1.LabelTopologyZone] = proxiertest.Choose(in, "zone-a", "zone-b")
	if v := proxiertest.Choose(in, p.nodePortAddresses...); v != nil {
		primary := netip.Addr{}
		if len(node.IPs) > 0 {
			primary = node.IPs[0]
		}
		npa, err := proxier.NewNodePortAddresses(c.family, v, primary)
		must(err)
		c.opts.NodePortAddresses = npa
	}
	base := proxiertest.Snapshot(proxiertest.Config{Family: c.family, Services: proxiertest.Choose(in, 0, 0, 3),
		EndpointsPerService: proxiertest.Choose(in, 0, 2), NodePortEvery: proxiertest.Choose(in, 0, 2), LocalEvery: proxiertest.Choose(in, 0, 2)})
	services, endpoints := base.Services, base.Endpoints
	for step := 0; step < 8 && (step == 0 || !in.Done()); step++ {
		changed := sets.New[proxier.ServicePortName]()
		for range 1 + in.Pick(4) {
			name := fzName(in)
			switch in.Pick(5) {
			case 0:
				delete(services, name)
				delete(endpoints, name)
			case 1:
				endpoints[name] = fzEndpoints(in, p)
			case 2: // one endpoint of a proxiertest service moves
				i := in.Pick(3)
				name = proxiertest.ServiceName(i)
				if services[name] != nil {
					endpoints[name] = proxiertest.WithEndpointChange(&proxier.Snapshot{Services: services, Endpoints: endpoints}, i).Endpoints[name]
				}
			default:
				services[name] = fzService(in, name, p)
				endpoints[name] = fzEndpoints(in, p)
			}
			changed.Insert(name)
		}
		snap := &proxier.Snapshot{Family: c.family, Node: node, Changed: changed,
			Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]*proxier.Endpoint{}}
		for name, sp := range services {
			snap.Services[name] = sp
			if eps := endpoints[name]; len(eps) > 0 {
				snap.Endpoints[name] = eps
			}
		}
		st := ipvsStep{snap: snap, local: addrs(proxiertest.Choose(in, p.locals...)), full: step == 0 || in.Pick(4) == 0,
			advance: proxiertest.Choose(in, 0, 0, time.Second, check, grace/2, grace), check: in.Pick(3) == 0,
			tamper: in.Pick(24) - 19, family: c.family, excluded: c.opts.excluded, stale: p.stale}
		for range in.Pick(3) {
			st.conns = append(st.conns, connPick{in.Pick(256), in.Pick(256), proxiertest.Choose(in, 0, 1, 3), proxiertest.Choose(in, 0, 2)})
		}
		if st.tamper >= 0 {
			st.full, st.pick = true, in.Pick(256)
		}
		c.steps = append(c.steps, st)
	}
	return c
}

func fzName(in *proxiertest.FuzzInput) proxier.ServicePortName {
	if in.Pick(4) == 0 {
		return proxiertest.ServiceName(in.Pick(3))
	}
	return proxier.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("s%d", in.Pick(5))},
		Port:           proxiertest.Choose(in, "", "http"),
		Protocol:       proxiertest.Choose(in, v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP),
	}
}

// fzService makes a ServicePort of any type with the helpers of helpers_test.go.
func fzService(in *proxiertest.FuzzInput, name proxier.ServicePortName, p fzPools) *proxier.ServicePort {
	opts := []svcOpt{proto(name.Protocol), port(proxiertest.Choose[int32](in, 80, 53, 1, 65535))}
	if ip := proxiertest.Choose(in, p.clusterIPs...); ip != "" { // "": headless
		opts = append(opts, clusterIP(ip))
	}
	// NodePort 80 can collide with port 80 of an external IP that is a node address.
	opts = append(opts, nodePort(proxiertest.Choose[int32](in, 0, 0, 30001, 32767, 80)), externalIPs(fzSome(in, p.externalIPs)...))
	if lbs := fzSome(in, p.lbIPs); len(lbs) > 0 {
		opts = append(opts, lbIPs(lbs...), sourceRanges(fzSome(in, p.sourceRanges)...))
	}
	s := svc(name.Namespace+"/"+name.Name, opts...)
	s.Name = name
	if s.ExternallyAccessible() && in.Pick(2) == 0 {
		etpLocal(proxiertest.Choose[int32](in, 0, 32000, 32001))(s)
	}
	if in.Pick(3) == 0 {
		itpLocal()(s)
	}
	affinity(proxiertest.Choose[int32](in, 0, 0, 10, 10800))(s)
	s.TrafficDistribution = proxiertest.Choose(in, "", "", "PreferClose", "PreferSameNode")
	return s
}

// fzEndpoints makes up to 5 endpoints in every condition, sorted by ip:port.
func fzEndpoints(in *proxiertest.FuzzInput, p fzPools) []*proxier.Endpoint {
	byAddr := map[netip.AddrPort]*proxier.Endpoint{}
	for range in.Pick(6) {
		addr := netip.AddrPortFrom(netip.MustParseAddr(proxiertest.Choose(in, p.endpointIPs...)), proxiertest.Choose[uint16](in, 8080, 53, 1))
		var opts []epOpt
		switch in.Pick(5) {
		case 0:
			opts = append(opts, terminating())
		case 1:
			opts = append(opts, terminating(), func(e *proxier.Endpoint) { e.Serving = false })
		case 2:
			opts = append(opts, func(e *proxier.Endpoint) { e.Ready, e.Serving = false, false })
		}
		switch in.Pick(3) {
		case 0:
			opts = append(opts, local())
		case 1:
			opts = append(opts, func(e *proxier.Endpoint) { e.NodeName = "" })
		}
		e := ep(addr.String(), opts...)
		e.Zone = proxiertest.Choose(in, "zone-a", "zone-b", "")
		if in.Pick(3) == 0 {
			e.ZoneHints = sets.New(proxiertest.Choose(in, "zone-a", "zone-b"))
		}
		if in.Pick(4) == 0 {
			e.NodeHints = sets.New(proxiertest.Choose(in, proxiertest.NodeName, "node2"))
		}
		byAddr[addr] = e
	}
	out := make([]*proxier.Endpoint, 0, len(byAddr))
	for _, e := range byAddr {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *proxier.Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}
