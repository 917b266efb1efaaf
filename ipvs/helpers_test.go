package ipvs

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/proxier"
)

// Test helpers that make a service or an endpoint in one line.

type svcOpt func(*proxier.ServicePort)

func svc(name string, opts ...svcOpt) *proxier.ServicePort {
	ns, n, _ := strings.Cut(name, "/")
	s := &proxier.ServicePort{
		Name:     proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: n}, Port: "p", Protocol: v1.ProtocolTCP},
		Port:     80,
		Protocol: v1.ProtocolTCP,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func clusterIP(ip string) svcOpt {
	return func(s *proxier.ServicePort) { s.ClusterIP = netip.MustParseAddr(ip) }
}
func port(p int32) svcOpt { return func(s *proxier.ServicePort) { s.Port = p } }
func proto(p v1.Protocol) svcOpt {
	return func(s *proxier.ServicePort) { s.Protocol, s.Name.Protocol = p, p }
}
func nodePort(p int32) svcOpt { return func(s *proxier.ServicePort) { s.NodePort = p } }
func externalIPs(ips ...string) svcOpt {
	return func(s *proxier.ServicePort) {
		for _, ip := range ips {
			s.ExternalIPs = append(s.ExternalIPs, netip.MustParseAddr(ip))
		}
	}
}
func lbIPs(ips ...string) svcOpt {
	return func(s *proxier.ServicePort) {
		for _, ip := range ips {
			s.LoadBalancerVIPs = append(s.LoadBalancerVIPs, netip.MustParseAddr(ip))
		}
	}
}
func sourceRanges(cidrs ...string) svcOpt {
	return func(s *proxier.ServicePort) {
		for _, c := range cidrs {
			s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, netip.MustParsePrefix(c))
		}
	}
}
func etpLocal(hc int32) svcOpt {
	return func(s *proxier.ServicePort) { s.ExternalPolicyLocal, s.HealthCheckNodePort = true, hc }
}
func itpLocal() svcOpt        { return func(s *proxier.ServicePort) { s.InternalPolicyLocal = true } }
func affinity(t int32) svcOpt { return func(s *proxier.ServicePort) { s.StickyMaxAgeSeconds = t } }

type epOpt func(*proxier.Endpoint)

// ep is a ready endpoint "ip:port" on node2 unless local() is given.
func ep(addr string, opts ...epOpt) *proxier.Endpoint {
	ap := netip.MustParseAddrPort(addr)
	e := &proxier.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true, NodeName: "node2"}
	for _, o := range opts {
		o(e)
	}
	return e
}
func local() epOpt { return func(e *proxier.Endpoint) { e.IsLocal, e.NodeName = true, "node1" } }
func terminating() epOpt {
	return func(e *proxier.Endpoint) { e.Ready, e.Terminating = false, true }
}

var (
	node1IP  = netip.MustParseAddr("192.0.2.11")
	node1IP6 = netip.MustParseAddr("2001:db8:2::11")
	// nodeAddrs are the node's interface addresses as Links reports them.
	nodeAddrs  = []netip.Addr{netip.MustParseAddr("127.0.0.1"), node1IP, netip.MustParseAddr("198.18.0.15")}
	nodeAddrs6 = []netip.Addr{netip.MustParseAddr("::1"), node1IP6, netip.MustParseAddr("fe80::1")}
)

// snapshot builds an IPv4 (or IPv6, from the first service's ClusterIP)
// snapshot for node1 from services followed by their endpoints:
// snapshot(s1, ep1, ep2, s2, ep3).
func snapshot(items ...any) *proxier.Snapshot {
	snap := &proxier.Snapshot{
		Family:    v1.IPv4Protocol,
		Services:  map[proxier.ServicePortName]*proxier.ServicePort{},
		Endpoints: map[proxier.ServicePortName][]*proxier.Endpoint{},
		Node:      proxier.Node{Name: "node1", IPs: []netip.Addr{node1IP}, Eligible: true},
		Changed:   sets.New[proxier.ServicePortName](),
	}
	var cur *proxier.ServicePort
	for i, it := range items {
		switch v := it.(type) {
		case *proxier.ServicePort:
			if i == 0 && v.ClusterIP.Is6() {
				snap.Family = v1.IPv6Protocol
				snap.Node.IPs = []netip.Addr{node1IP6}
			}
			cur = v
			snap.Services[v.Name] = v
			snap.Changed.Insert(v.Name)
		case *proxier.Endpoint:
			snap.Endpoints[cur.Name] = append(snap.Endpoints[cur.Name], v)
		}
	}
	return snap
}

func vsKey(addr string, p v1.Protocol) VSKey {
	ap := netip.MustParseAddrPort(addr)
	return VSKey{Address: ap.Addr(), Protocol: p, Port: ap.Port()}
}

// realServers lists a desired VS's real servers, sorted, as "ip:port".
func realServers(ds *DesiredState, key VSKey) []string {
	vs := ds.VirtualServers[key]
	if vs == nil {
		return nil
	}
	var out []string
	for a := range vs.RealServers {
		out = append(out, a.String())
	}
	return sets.List(sets.New(out...))
}

func members(ds *DesiredState, base string) []string {
	return sets.List(ds.IPSets[SetName(base, ds.Family)].Members)
}

func parsePrefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}
