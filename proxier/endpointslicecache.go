package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// portKey is how EndpointSlice ports are matched to Service ports.
type portKey struct {
	Name     string
	Protocol v1.Protocol
}

// sliceEndpoints is one parsed EndpointSlice: its endpoints per port.
type sliceEndpoints map[portKey][]*Endpoint

// sliceFamily maps an EndpointSlice AddressType to the family that handles it;
// FQDN slices are not for proxies.
func sliceFamily(slice *discovery.EndpointSlice) (v1.IPFamily, bool) {
	switch slice.AddressType {
	case discovery.AddressTypeIPv4:
		return v1.IPv4Protocol, true
	case discovery.AddressTypeIPv6:
		return v1.IPv6Protocol, true
	}
	return "", false
}

// sliceService returns the Service a slice belongs to, from its
// kubernetes.io/service-name label.
func sliceService(slice *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := slice.Labels[discovery.LabelServiceName]
	return types.NamespacedName{Namespace: slice.Namespace, Name: name}, name != ""
}

// parseEndpointSlice turns a slice into endpoints per port. Unusable
// addresses and ports are left out and reported as problems.
func parseEndpointSlice(slice *discovery.EndpointSlice, family v1.IPFamily, nodeName string) (sliceEndpoints, []fieldProblem) {
	var problems []fieldProblem
	bad := func(field, value, reason string) {
		problems = append(problems, fieldProblem{Field: field, Value: value, Reason: reason})
	}

	type portNum struct {
		key  portKey
		port int32
	}
	var ports []portNum
	for i, p := range slice.Ports {
		// A nil port means "all ports", which Services cannot express.
		if p.Port == nil {
			continue
		}
		if *p.Port < 1 || *p.Port > 65535 {
			bad(fmt.Sprintf("ports[%d].port", i), strconv.Itoa(int(*p.Port)), "port out of range")
			continue
		}
		key := portKey{Protocol: v1.ProtocolTCP}
		if p.Name != nil {
			key.Name = *p.Name
		}
		if p.Protocol != nil {
			key.Protocol = *p.Protocol
		}
		ports = append(ports, portNum{key, *p.Port})
	}

	type base struct {
		ep    Endpoint
		index int
	}
	var bases []base
	for i := range slice.Endpoints {
		e := &slice.Endpoints[i]
		if len(e.Addresses) == 0 {
			bad(fmt.Sprintf("endpoints[%d].addresses", i), "", "no address")
			continue
		}
		ip, reason := endpointIP(e.Addresses[0], family)
		if reason != "" {
			bad(fmt.Sprintf("endpoints[%d].addresses[0]", i), e.Addresses[0], reason)
			continue
		}
		bases = append(bases, base{ep: endpointFromSlice(e, ip, nodeName), index: i})
	}

	out := make(sliceEndpoints, len(ports))
	for _, p := range ports {
		eps := make([]*Endpoint, 0, len(bases))
		for _, b := range bases {
			ep := b.ep
			ep.Port = p.port
			eps = append(eps, &ep)
		}
		out[p.key] = eps
	}
	return out, problems
}

// endpointIP validates an endpoint address; the reason is empty when usable.
// Loopback, link-local, multicast and unspecified addresses would let a slice
// writer redirect service traffic to the node itself or nowhere.
func endpointIP(s string, family v1.IPFamily) (netip.Addr, string) {
	ip, ok := parseIP(s)
	switch {
	case !ok:
		return ip, "not an IP address"
	case addrFamily(ip) != family:
		return ip, fmt.Sprintf("not an %s address", family)
	}
	return ip, specialAddr(ip)
}

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// specialAddr names why ip can be neither a backend nor a service VIP, or
// returns "" when it can be either.
func specialAddr(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified():
		return "unspecified address"
	case ip.IsLoopback():
		return "loopback address"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "link-local address"
	case ip.IsMulticast():
		return "multicast address"
	case ip == broadcast4:
		return "broadcast address"
	}
	return ""
}

func endpointFromSlice(e *discovery.Endpoint, ip netip.Addr, nodeName string) Endpoint {
	ep := Endpoint{
		IP:          ip,
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
		ep.IsLocal = ep.NodeName != "" && ep.NodeName == nodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			if ep.ZoneHints == nil {
				ep.ZoneHints = sets.New[string]()
			}
			ep.ZoneHints.Insert(z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			if ep.NodeHints == nil {
				ep.NodeHints = sets.New[string]()
			}
			ep.NodeHints.Insert(n.Name)
		}
	}
	return ep
}

// endpointSliceCache holds the parsed slices of one family, per service.
type endpointSliceCache struct {
	slices map[types.NamespacedName]map[string]sliceEndpoints
}

func newEndpointSliceCache() *endpointSliceCache {
	return &endpointSliceCache{slices: map[types.NamespacedName]map[string]sliceEndpoints{}}
}

// set stores (or, with nil eps, deletes) one slice of svc.
func (c *endpointSliceCache) set(svc types.NamespacedName, sliceName string, eps sliceEndpoints) {
	bySlice := c.slices[svc]
	if eps == nil {
		delete(bySlice, sliceName)
		if len(bySlice) == 0 {
			delete(c.slices, svc)
		}
		return
	}
	if bySlice == nil {
		bySlice = map[string]sliceEndpoints{}
		c.slices[svc] = bySlice
	}
	bySlice[sliceName] = eps
}

// merged returns svc's endpoints merged across its slices per port, each list
// sorted by ip:port with duplicates removed (a non-terminating copy wins, as
// an endpoint moving between slices is briefly in both).
func (c *endpointSliceCache) merged(svc types.NamespacedName) map[ServicePortName][]*Endpoint {
	bySlice := c.slices[svc]
	if len(bySlice) == 0 {
		return nil
	}
	names := make([]string, 0, len(bySlice))
	for name := range bySlice {
		names = append(names, name)
	}
	slices.Sort(names) // deterministic winner among equal duplicates

	byPort := map[portKey]map[netip.AddrPort]*Endpoint{}
	for _, name := range names {
		for key, eps := range bySlice[name] {
			m := byPort[key]
			if m == nil {
				m = make(map[netip.AddrPort]*Endpoint, len(eps))
				byPort[key] = m
			}
			for _, ep := range eps {
				ap := ep.AddrPort()
				if prev, ok := m[ap]; ok && !(prev.Terminating && !ep.Terminating) {
					continue
				}
				m[ap] = ep
			}
		}
	}

	out := make(map[ServicePortName][]*Endpoint, len(byPort))
	for key, m := range byPort {
		if len(m) == 0 {
			continue
		}
		eps := make([]*Endpoint, 0, len(m))
		for _, ep := range m {
			eps = append(eps, ep)
		}
		slices.SortFunc(eps, func(a, b *Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
		out[ServicePortName{NamespacedName: svc, Port: key.Name, Protocol: key.Protocol}] = eps
	}
	return out
}

func endpointEqual(a, b *Endpoint) bool {
	if a == b {
		return true
	}
	return a.IP == b.IP && a.Port == b.Port && a.Ready == b.Ready && a.Serving == b.Serving &&
		a.Terminating == b.Terminating && a.NodeName == b.NodeName && a.Zone == b.Zone &&
		a.IsLocal == b.IsLocal && a.ZoneHints.Equal(b.ZoneHints) && a.NodeHints.Equal(b.NodeHints)
}

func endpointsEqual(a, b []*Endpoint) bool {
	return slices.EqualFunc(a, b, endpointEqual)
}
