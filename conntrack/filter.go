package conntrack

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// Reason says why a ServicePort's flows are cleaned up.
type Reason string

const (
	// ReasonLostEndpoints: serving endpoints went away; flows DNATed to
	// them would keep sending UDP/SCTP packets to a dead address until
	// they time out, because a connectionless client never reconnects.
	ReasonLostEndpoints Reason = "LostEndpoints"
	// ReasonFirstEndpoint: the port went from no serving endpoint to at
	// least one; flows created meanwhile were never DNATed and would keep
	// bypassing the new rules.
	ReasonFirstEndpoint Reason = "FirstEndpoint"
	// ReasonRemoved: the ServicePort is gone; flows to its addresses
	// must not outlive it.
	ReasonRemoved Reason = "Removed"
)

// Filter selects flows of one ServicePort. A flow matches when its protocol
// is Protocol, its original destination is one of Destinations or has port
// NodePort (any address: NodePorts answer on many local addresses), and,
// when ReplySources is not empty, its reply source is one of ReplySources.
type Filter struct {
	Service  proxier.ServicePortName
	Reason   Reason
	Protocol v1.Protocol
	// Destinations are the service's address:port pairs: ClusterIP,
	// external IPs and load balancer IPs, in that order.
	Destinations []netip.AddrPort
	// NodePort is 0 when the service has none.
	NodePort uint16
	// ReplySources are the DNAT targets to match, sorted; empty matches any.
	ReplySources []netip.AddrPort
}

// Matches reports whether f selects fl.
func (f *Filter) Matches(fl Flow) bool {
	if fl.Protocol != protoNumber(f.Protocol) {
		return false
	}
	toService := slices.Contains(f.Destinations, fl.OrigDst) ||
		(f.NodePort != 0 && fl.OrigDst.Port() == f.NodePort)
	if !toService {
		return false
	}
	return len(f.ReplySources) == 0 || slices.Contains(f.ReplySources, fl.ReplySrc)
}

// String is for logs and test failures.
func (f Filter) String() string {
	return fmt.Sprintf("%s/%s %s dst=%v nodePort=%d replySrc=%v", f.Service, f.Protocol, f.Reason, f.Destinations, f.NodePort, f.ReplySources)
}

// Filters computes the conntrack filters for the changes a snapshot carries.
// Only UDP and SCTP ports are considered: TCP clients see a reset or
// timeout and reconnect through the new rules on their own.
//
//   - Removed ports: every flow to their addresses and NodePort.
//   - Ports in StaleServices: every flow to their addresses and NodePort.
//   - Ports in StaleEndpoints: flows to their addresses and NodePort whose
//     reply source is one of the lost endpoints' ip:port. We match the lost
//     endpoints rather than "not a current serving endpoint" (kube-proxy's
//     test) so a flow is deleted only when the snapshot says its endpoint is
//     gone, even while the port has no serving endpoint left (new packets
//     then hit the REJECT rule instead of a dead pod).
//
// A port both removed and in StaleEndpoints gets only the wider Removed
// filter. The result is sorted by service and reason.
func Filters(snap *proxier.Snapshot) []Filter {
	var out []Filter
	for name, sp := range snap.Removed {
		if f, ok := newFilter(name, sp, ReasonRemoved, nil); ok {
			out = append(out, f)
		}
	}
	for name := range snap.StaleServices {
		if _, removed := snap.Removed[name]; removed {
			continue
		}
		if f, ok := newFilter(name, snap.Services[name], ReasonFirstEndpoint, nil); ok {
			out = append(out, f)
		}
	}
	for name, lost := range snap.StaleEndpoints {
		if _, removed := snap.Removed[name]; removed || len(lost) == 0 {
			continue
		}
		if f, ok := newFilter(name, snap.Services[name], ReasonLostEndpoints, lost); ok {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b Filter) int {
		return cmp.Or(cmp.Compare(a.Service.String(), b.Service.String()),
			cmp.Compare(a.Service.Protocol, b.Service.Protocol),
			cmp.Compare(a.Reason, b.Reason))
	})
	return out
}

// newFilter builds the filter of one port; ok is false when there is nothing
// to match (unknown port, TCP, or no address at all).
func newFilter(name proxier.ServicePortName, sp *proxier.ServicePort, reason Reason, replySources []netip.AddrPort) (Filter, bool) {
	if sp == nil || (sp.Protocol != v1.ProtocolUDP && sp.Protocol != v1.ProtocolSCTP) {
		return Filter{}, false
	}
	f := Filter{Service: name, Reason: reason, Protocol: sp.Protocol, NodePort: uint16(sp.NodePort)}
	if sp.Port > 0 {
		port := uint16(sp.Port)
		addrs := append([]netip.Addr{sp.ClusterIP}, sp.ExternalIPs...)
		addrs = append(addrs, sp.LoadBalancerVIPs...)
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a.Unmap(), port)
			if a.IsValid() && !slices.Contains(f.Destinations, ap) {
				f.Destinations = append(f.Destinations, ap)
			}
		}
	}
	if len(f.Destinations) == 0 && f.NodePort == 0 {
		return Filter{}, false
	}
	if len(replySources) > 0 {
		f.ReplySources = make([]netip.AddrPort, 0, len(replySources))
		for _, ap := range replySources {
			f.ReplySources = append(f.ReplySources, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
		slices.SortFunc(f.ReplySources, netip.AddrPort.Compare)
		f.ReplySources = slices.Compact(f.ReplySources)
	}
	return f, true
}

// destKey and portKey index filters by what a flow offers first.
type destKey struct {
	proto uint8
	dst   netip.AddrPort
}

type portKey struct {
	proto uint8
	port  uint16
}

// matcher finds the flows any of a set of filters selects, in one pass over
// the table: a flow costs two map lookups instead of a scan of every filter.
type matcher struct {
	byDest     map[destKey][]*Filter
	byNodePort map[portKey][]*Filter
}

func newMatcher(filters []Filter) *matcher {
	m := &matcher{byDest: map[destKey][]*Filter{}, byNodePort: map[portKey][]*Filter{}}
	for i := range filters {
		f := &filters[i]
		proto := protoNumber(f.Protocol)
		for _, d := range f.Destinations {
			k := destKey{proto, d}
			m.byDest[k] = append(m.byDest[k], f)
		}
		if f.NodePort != 0 {
			k := portKey{proto, f.NodePort}
			m.byNodePort[k] = append(m.byNodePort[k], f)
		}
	}
	return m
}

func (m *matcher) match(fl Flow) bool {
	fl.OrigDst = netip.AddrPortFrom(fl.OrigDst.Addr().Unmap(), fl.OrigDst.Port())
	fl.ReplySrc = netip.AddrPortFrom(fl.ReplySrc.Addr().Unmap(), fl.ReplySrc.Port())
	for _, f := range m.byDest[destKey{fl.Protocol, fl.OrigDst}] {
		if f.Matches(fl) {
			return true
		}
	}
	for _, f := range m.byNodePort[portKey{fl.Protocol, fl.OrigDst.Port()}] {
		if f.Matches(fl) {
			return true
		}
	}
	return false
}

// Select returns the flows that at least one filter matches, in table order.
func Select(filters []Filter, flows []Flow) []Flow {
	if len(filters) == 0 {
		return nil
	}
	m := newMatcher(filters)
	var out []Flow
	for _, fl := range flows {
		if m.match(fl) {
			out = append(out, fl)
		}
	}
	return out
}
