package iptables

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/proxier"
)

// Test addresses follow the bed's plan: node1 192.0.2.11, clients
// 192.0.2.101+, services 198.51.100.0/24, external/LB IPs 203.0.113.192/26,
// pods 203.0.113.0/26 on node1 and 203.0.113.64/26 on node2.
var (
	node1IP   = netip.MustParseAddr("192.0.2.11")
	node1IPv6 = netip.MustParseAddr("2001:db8:2::11")
	clientIP  = netip.MustParseAddr("192.0.2.101")
	clusterV4 = netip.MustParsePrefix("203.0.113.0/25")
)

func testNode(family v1.IPFamily) proxier.Node {
	ip := node1IP
	if family == v1.IPv6Protocol {
		ip = node1IPv6
	}
	return proxier.Node{Name: "node1", IPs: []netip.Addr{ip}, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Eligible: true}
}

type svcOpt func(*proxier.ServicePort)

// testSvc makes a ServicePort from "ns/name[:port]" and options; the
// protocol defaults to TCP and the port to 80.
func testSvc(name string, opts ...svcOpt) *proxier.ServicePort {
	nsName, port, _ := strings.Cut(name, ":")
	ns, n, _ := strings.Cut(nsName, "/")
	svc := &proxier.ServicePort{
		Name:     proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: n}, Port: port, Protocol: v1.ProtocolTCP},
		Port:     80,
		Protocol: v1.ProtocolTCP,
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func clusterIP(s string) svcOpt {
	return func(p *proxier.ServicePort) { p.ClusterIP = netip.MustParseAddr(s) }
}
func port(n int32) svcOpt { return func(p *proxier.ServicePort) { p.Port = n } }
func protocol(proto v1.Protocol) svcOpt {
	return func(p *proxier.ServicePort) { p.Protocol = proto; p.Name.Protocol = proto }
}
func nodePort(n int32) svcOpt { return func(p *proxier.ServicePort) { p.NodePort = n } }
func externalIPs(ips ...string) svcOpt {
	return func(p *proxier.ServicePort) {
		for _, s := range ips {
			p.ExternalIPs = append(p.ExternalIPs, netip.MustParseAddr(s))
		}
	}
}
func lbIPs(ips ...string) svcOpt {
	return func(p *proxier.ServicePort) {
		for _, s := range ips {
			p.LoadBalancerVIPs = append(p.LoadBalancerVIPs, netip.MustParseAddr(s))
		}
	}
}
func sourceRanges(cidrs ...string) svcOpt {
	return func(p *proxier.ServicePort) {
		for _, s := range cidrs {
			p.LoadBalancerSourceRanges = append(p.LoadBalancerSourceRanges, netip.MustParsePrefix(s))
		}
	}
}
func etpLocal(hcPort int32) svcOpt {
	return func(p *proxier.ServicePort) { p.ExternalPolicyLocal = true; p.HealthCheckNodePort = hcPort }
}
func itpLocal() svcOpt          { return func(p *proxier.ServicePort) { p.InternalPolicyLocal = true } }
func affinity(sec int32) svcOpt { return func(p *proxier.ServicePort) { p.StickyMaxAgeSeconds = sec } }

type epOpt func(*proxier.Endpoint)

// testEP makes a ready endpoint on node2 from "ip:port".
func testEP(addr string, opts ...epOpt) *proxier.Endpoint {
	ap := netip.MustParseAddrPort(addr)
	ep := &proxier.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true, NodeName: "node2", Zone: "zone-a"}
	for _, o := range opts {
		o(ep)
	}
	return ep
}

func local(ep *proxier.Endpoint) { ep.IsLocal = true; ep.NodeName = "node1" }
func terminating(ep *proxier.Endpoint) {
	ep.Ready = false
	ep.Terminating = true
}

// testSnap builds a snapshot; each entry is a service followed by its
// endpoints. Every service is in Changed.
func testSnap(family v1.IPFamily, entries ...any) *proxier.Snapshot {
	snap := &proxier.Snapshot{
		Family:    family,
		Services:  map[proxier.ServicePortName]*proxier.ServicePort{},
		Endpoints: map[proxier.ServicePortName][]*proxier.Endpoint{},
		Node:      testNode(family),
		Changed:   sets.New[proxier.ServicePortName](),
	}
	var cur *proxier.ServicePort
	for _, e := range entries {
		switch v := e.(type) {
		case *proxier.ServicePort:
			cur = v
			snap.Services[v.Name] = v
			snap.Changed.Insert(v.Name)
		case *proxier.Endpoint:
			snap.Endpoints[cur.Name] = append(snap.Endpoints[cur.Name], v)
		}
	}
	return snap
}

// testOptions are DefaultOptions with the ClusterCIDR detector of the bed,
// canary checks on every sync and batches as on the nft backend.
func testOptions() Options {
	o := DefaultOptions()
	o.CanaryCheckPeriod = 0
	o.BatchServices = DefaultBatchServices
	o.LocalDetector = LocalDetectorByCIDR(clusterV4)
	o.MasqueradeRandomFully = true
	return o
}

// buildText builds snap from scratch and returns the restore input.
func buildText(t *testing.T, family v1.IPFamily, opts Options, snap *proxier.Snapshot) string {
	t.Helper()
	b := NewBuilder(family, opts)
	return b.Build(snap, BuildInput{Full: true}).String()
}
