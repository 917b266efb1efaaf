package conntrack

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/proxier"
)

// spn is "ns/name:port/PROTO" as a ServicePortName.
func spn(s string) proxier.ServicePortName {
	rest, proto, _ := strings.Cut(s, "/")
	nsName, port, _ := strings.Cut(rest, ":")
	ns, name, _ := strings.Cut(nsName, ".")
	return proxier.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: ns, Name: name},
		Port:           port,
		Protocol:       v1.Protocol(proto),
	}
}

type svcOpt func(*proxier.ServicePort)

// svc builds a ServicePort named like spn, e.g. svc("default.dns:dns/UDP", "198.51.100.10", 53).
func svc(name, clusterIP string, port int32, opts ...svcOpt) *proxier.ServicePort {
	n := spn(name)
	sp := &proxier.ServicePort{Name: n, ClusterIP: netip.MustParseAddr(clusterIP), Port: port, Protocol: n.Protocol}
	for _, o := range opts {
		o(sp)
	}
	return sp
}

func nodePort(p int32) svcOpt { return func(sp *proxier.ServicePort) { sp.NodePort = p } }

func externalIPs(ips ...string) svcOpt {
	return func(sp *proxier.ServicePort) { sp.ExternalIPs = addrs(ips...) }
}

func lbIPs(ips ...string) svcOpt {
	return func(sp *proxier.ServicePort) { sp.LoadBalancerVIPs = addrs(ips...) }
}

func addrs(ips ...string) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		out = append(out, netip.MustParseAddr(ip))
	}
	return out
}

func aps(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

// change describes what a snapshot carries, for building one in a line.
type change struct {
	services []*proxier.ServicePort
	// lost is service name → lost endpoints.
	lost    map[string][]string
	first   []string
	removed []*proxier.ServicePort
}

func snapshot(family v1.IPFamily, c change) *proxier.Snapshot {
	snap := &proxier.Snapshot{
		Family:         family,
		Services:       map[proxier.ServicePortName]*proxier.ServicePort{},
		Endpoints:      map[proxier.ServicePortName][]*proxier.Endpoint{},
		Changed:        sets.New[proxier.ServicePortName](),
		StaleEndpoints: map[proxier.ServicePortName][]netip.AddrPort{},
		StaleServices:  sets.New[proxier.ServicePortName](),
		Removed:        map[proxier.ServicePortName]*proxier.ServicePort{},
	}
	for _, sp := range c.services {
		snap.Services[sp.Name] = sp
	}
	for name, eps := range c.lost {
		snap.StaleEndpoints[spn(name)] = aps(eps...)
		snap.Changed.Insert(spn(name))
	}
	for _, name := range c.first {
		snap.StaleServices.Insert(spn(name))
		snap.Changed.Insert(spn(name))
	}
	for _, sp := range c.removed {
		snap.Removed[sp.Name] = sp
		snap.Changed.Insert(sp.Name)
	}
	return snap
}

// flow is "proto origSrc origDst replySrc", the reply destination being the
// original source (no SNAT), e.g. flow("udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353").
func flow(s string) Flow {
	f := strings.Fields(s)
	protos := map[string]uint8{"tcp": protoTCP, "udp": protoUDP, "sctp": protoSCTP}
	src := netip.MustParseAddrPort(f[1])
	return Flow{
		Protocol: protos[f[0]],
		OrigSrc:  src,
		OrigDst:  netip.MustParseAddrPort(f[2]),
		ReplySrc: netip.MustParseAddrPort(f[3]),
		ReplyDst: src,
	}
}
