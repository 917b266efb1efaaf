// Package proxiertest builds synthetic snapshots of a given size, for data
// plane benchmarks, tests and scale tools.
package proxiertest

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/proxier"
)

// Config shapes a synthetic cluster. Addresses come from the scale ranges
// of the test plan: up to 32768 services in 198.18.0.0/17 (2001:db8:5::/112),
// endpoints in 198.19.0.0/16 (2001:db8:1::/64) with the port varying once
// the addresses run out, so every endpoint ip:port is unique; endpoints
// moved by WithEndpointChange go to 198.18.128.0/17.
type Config struct {
	Family              v1.IPFamily
	Services            int
	EndpointsPerService int
	// NodePortEvery gives every Nth service a NodePort (0: none).
	NodePortEvery int
	// LocalEvery makes every Nth endpoint local to this node (0: none).
	LocalEvery int
}

// NodeName is the node the snapshots are built for.
const NodeName = "node1"

// ServiceName is the name of synthetic service i.
func ServiceName(i int) proxier.ServicePortName {
	return proxier.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: "scale", Name: fmt.Sprintf("svc-%05d", i)},
		Port:           "http",
		Protocol:       v1.ProtocolTCP,
	}
}

// Node returns the node the snapshots are built for.
func Node(family v1.IPFamily) proxier.Node {
	ip := netip.MustParseAddr("192.0.2.11")
	if family == v1.IPv6Protocol {
		ip = netip.MustParseAddr("2001:db8:2::11")
	}
	return proxier.Node{
		Name:     NodeName,
		IPs:      []netip.Addr{ip},
		Labels:   map[string]string{v1.LabelTopologyZone: "zone-a", v1.LabelHostname: NodeName},
		Eligible: true,
	}
}

// Snapshot builds a full snapshot for cfg, with every service in Changed.
func Snapshot(cfg Config) *proxier.Snapshot {
	if cfg.Family == "" {
		cfg.Family = v1.IPv4Protocol
	}
	snap := &proxier.Snapshot{
		Family:    cfg.Family,
		Services:  make(map[proxier.ServicePortName]*proxier.ServicePort, cfg.Services),
		Endpoints: make(map[proxier.ServicePortName][]*proxier.Endpoint, cfg.Services),
		Node:      Node(cfg.Family),
		Changed:   sets.New[proxier.ServicePortName](),
	}
	n := 0
	for i := range cfg.Services {
		name := ServiceName(i)
		svc := &proxier.ServicePort{
			Name:      name,
			ClusterIP: serviceIP(cfg.Family, i),
			Port:      80,
			Protocol:  v1.ProtocolTCP,
		}
		if cfg.NodePortEvery > 0 && i%cfg.NodePortEvery == 0 {
			svc.NodePort = int32(30000 + i%2768)
		}
		eps := make([]*proxier.Endpoint, 0, cfg.EndpointsPerService)
		for range cfg.EndpointsPerService {
			eps = append(eps, endpoint(cfg, n))
			n++
		}
		snap.Services[name] = svc
		snap.Endpoints[name] = eps
		snap.Changed.Insert(name)
	}
	return snap
}

func serviceIP(family v1.IPFamily, i int) netip.Addr {
	if family == v1.IPv6Protocol {
		a := netip.MustParseAddr("2001:db8:5::").As16()
		a[14], a[15] = byte(i>>8), byte(i)
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte{198, 18, byte(i>>8) & 0x7f, byte(i)})
}

// endpoint n: addresses cycle through a /16 and the port moves on after
// each cycle; sorted by ip:port within a service as snapshots require
// (consecutive n differ in the address, or wrap to a higher port).
func endpoint(cfg Config, n int) *proxier.Endpoint {
	var ip netip.Addr
	if cfg.Family == v1.IPv6Protocol {
		a := netip.MustParseAddr("2001:db8:1::").As16()
		a[12], a[13], a[14], a[15] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		ip = netip.AddrFrom16(a)
	} else {
		ip = netip.AddrFrom4([4]byte{198, 19, byte(n >> 8), byte(n)})
	}
	port := int32(8080)
	if cfg.Family != v1.IPv6Protocol {
		port += int32(n >> 16)
	}
	local := cfg.LocalEvery > 0 && n%cfg.LocalEvery == 0
	node := "node2"
	if local {
		node = NodeName
	}
	return &proxier.Endpoint{IP: ip, Port: port, Ready: true, Serving: true, NodeName: node, Zone: "zone-a", IsLocal: local}
}

// WithEndpointChange returns a copy of snap where service i's first
// endpoint moved to another address, and Changed holds only that service. Maps are copied
// shallowly: unchanged services share their data with snap.
func WithEndpointChange(snap *proxier.Snapshot, i int) *proxier.Snapshot {
	name := ServiceName(i)
	out := *snap
	out.Services = make(map[proxier.ServicePortName]*proxier.ServicePort, len(snap.Services))
	for k, v := range snap.Services {
		out.Services[k] = v
	}
	out.Endpoints = make(map[proxier.ServicePortName][]*proxier.Endpoint, len(snap.Endpoints))
	for k, v := range snap.Endpoints {
		out.Endpoints[k] = v
	}
	eps := append([]*proxier.Endpoint(nil), snap.Endpoints[name]...)
	if len(eps) > 0 {
		moved := *eps[0]
		if moved.IP.Is4() {
			a := moved.IP.As4()
			moved.IP = netip.AddrFrom4([4]byte{198, 18, 0x80 | a[2]&0x7f, a[3]})
		} else {
			a := moved.IP.As16()
			a[8] ^= 0x01
			moved.IP = netip.AddrFrom16(a)
		}
		eps[0] = &moved
		sortEndpoints(eps)
	}
	out.Endpoints[name] = eps
	out.Changed = sets.New(name)
	return &out
}

// WithChanged returns a shallow copy of snap whose Changed holds names.
func WithChanged(snap *proxier.Snapshot, names ...proxier.ServicePortName) *proxier.Snapshot {
	out := *snap
	out.Changed = sets.New(names...)
	return &out
}

func sortEndpoints(eps []*proxier.Endpoint) {
	for i := 1; i < len(eps); i++ {
		for j := i; j > 0 && eps[j].AddrPort().Compare(eps[j-1].AddrPort()) < 0; j-- {
			eps[j], eps[j-1] = eps[j-1], eps[j]
		}
	}
}
