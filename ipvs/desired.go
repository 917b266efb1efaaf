package ipvs

import (
	"cmp"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// builder holds one Build's working state.
type builder struct {
	opts   Options
	family v1.IPFamily
	ds     *DesiredState
	// sets by base name (kube-proxy's IPv4 name).
	sets map[string]*IPSet
	// local are the node's addresses outside kube-ipvs0; nodePortIPs the
	// ones serving NodePorts.
	local       sets.Set[netip.Addr]
	nodePortIPs []netip.Addr
	primaryIP   netip.Addr
	// lbNoNodeAccess are LB virtual servers whose source ranges exclude the
	// node: the node itself may not reach them.
	lbNoNodeAccess []VSKey
	flags          uint32
}

// Build computes the desired state of snap's family. localAddrs are the
// node's addresses on every interface except kube-ipvs0 (as the kernel
// layer's Links.LocalAddresses returns them): NodePort virtual servers are
// created on those NodePortAddresses selects, and external or load-balancer
// IPs already among them are not bound to kube-ipvs0. Build does no I/O.
func Build(snap *proxier.Snapshot, localAddrs []netip.Addr, opts Options) *DesiredState {
	b := &builder{
		opts:   opts,
		family: snap.Family,
		ds: &DesiredState{
			Family:           snap.Family,
			VirtualServers:   make(map[VSKey]*DesiredVS, len(snap.Services)),
			Addresses:        sets.New[netip.Addr](),
			IPSets:           make(map[string]*IPSet, len(setInfo)),
			NoLocalEndpoints: map[string]int{"internal": 0, "external": 0},
		},
		sets:  make(map[string]*IPSet, len(setInfo)),
		local: sets.New[netip.Addr](),
	}
	if opts.scheduler() == "mh" {
		b.flags |= FlagSourceHash
	}
	if len(snap.Node.IPs) > 0 {
		b.primaryIP = snap.Node.IPs[0]
	}
	// Pre-size the big sets: growing maps of 100k strings costs more than
	// filling them.
	nEndpoints := 0
	for _, eps := range snap.Endpoints {
		nEndpoints += len(eps)
	}
	for _, s := range setInfo {
		size := 0
		switch s.name {
		case SetLoopBack:
			size = nEndpoints
		case SetClusterIP, SetIPVSIPs:
			size = len(snap.Services)
		}
		set := &IPSet{Name: SetName(s.name, b.family), Type: s.typ, Family: b.family, Members: make(sets.Set[string], size)}
		b.sets[s.name] = set
		b.ds.IPSets[set.Name] = set
	}
	b.nodePortIPs = b.selectNodePortIPs(localAddrs)

	names := make([]proxier.ServicePortName, 0, len(snap.Services))
	for name := range snap.Services {
		names = append(names, name)
	}
	// Sorted, so that the duplicate guard of addVS keeps the same service
	// every sync.
	slices.SortFunc(names, func(a, c proxier.ServicePortName) int {
		return cmp.Or(cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Name, c.Name),
			cmp.Compare(a.Port, c.Port), cmp.Compare(a.Protocol, c.Protocol))
	})
	for _, name := range names {
		svc := snap.Services[name]
		if !svc.ClusterIP.IsValid() {
			continue
		}
		b.addService(svc, snap.Endpoints[name], snap.Node)
	}
	for addr := range b.ds.Addresses {
		b.sets[SetIPVSIPs].Members.Insert(addr.String())
	}
	b.ds.IPTables = b.iptablesRules()
	b.ds.Jumps = Jumps
	return b.ds
}

// selectNodePortIPs keeps the node addresses of the family that serve
// NodePorts: never loopback (IPVS cannot serve it) nor IPv6 link-local.
func (b *builder) selectNodePortIPs(localAddrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range localAddrs {
		a = a.Unmap()
		if a.Is4() != (b.family == v1.IPv4Protocol) {
			continue
		}
		b.local.Insert(a)
		if a.IsLoopback() || a.IsLinkLocalUnicast() || slices.Contains(out, a) {
			continue
		}
		if b.opts.NodePortAddresses != nil && !b.opts.NodePortAddresses.Contains(a) {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// endpointPlan is which endpoints each kind of traffic of a ServicePort
// goes to, kube-proxy IPVS style.
type endpointPlan struct {
	internal, external []*proxier.Endpoint
	// dropExternal: eTP=Local with endpoints elsewhere but none here.
	// Like kube-proxy, IPVS falls back to cluster endpoints so local pods
	// and the node still reach the service; unlike kube-proxy we also drop
	// external traffic, as iptables mode does (the health check says 503).
	dropExternal bool
}

func (b *builder) planEndpoints(svc *proxier.ServicePort, eps []*proxier.Endpoint, node proxier.Node) endpointPlan {
	cluster, local, _, hasAny := proxier.CategorizeEndpoints(eps, svc, node)
	p := endpointPlan{internal: cluster, external: cluster}
	if svc.InternalPolicyLocal {
		if len(local) > 0 {
			p.internal = local
		} else if hasAny {
			b.ds.NoLocalEndpoints["internal"]++
		}
	}
	if svc.ExternalPolicyLocal && svc.ExternallyAccessible() {
		if len(local) > 0 {
			p.external = local
		} else if hasAny {
			b.ds.NoLocalEndpoints["external"]++
			p.dropExternal = true
		}
	}
	return p
}

// addVS adds a virtual server unless another service already claimed its
// address:port. The core already gave each contested ClusterIP, external or
// load-balancer address to one service (proxier/claims.go), as iptables mode
// sees it; this guard is only a safety net for what the core does not
// arbitrate, such as an external IP that is a node IP on a NodePort's port,
// and keeps the first service in name order.
func (b *builder) addVS(key VSKey, svc *proxier.ServicePort, eps []*proxier.Endpoint) {
	if prev, dup := b.ds.VirtualServers[key]; dup {
		klog.V(4).InfoS("Virtual server already taken by another service", "virtualServer", key.String(), "service", svc.Name, "keptFor", prev.Service)
		return
	}
	vs := &DesiredVS{
		VirtualServer: VirtualServer{VSKey: key, Scheduler: b.opts.scheduler(), Flags: b.flags},
		RealServers:   make(map[netip.AddrPort]int, len(eps)),
		Service:       svc.Name,
	}
	if svc.StickyMaxAgeSeconds > 0 {
		vs.Flags |= FlagPersistent
		vs.Timeout = uint32(svc.StickyMaxAgeSeconds)
	}
	for _, ep := range eps {
		vs.RealServers[ep.AddrPort()] = 1
	}
	b.ds.VirtualServers[key] = vs
}

// bind records an address for kube-ipvs0 unless another interface has it.
func (b *builder) bind(addr netip.Addr) {
	if !b.local.Has(addr) {
		b.ds.Addresses.Insert(addr)
	}
}

func (b *builder) member(set string, m string) { b.sets[set].Members.Insert(m) }
