package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

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

func comparePortKeys(a, b portKey) int {
	return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(string(a.Protocol), string(b.Protocol)))
}

// parsedSlice is one EndpointSlice of one family, kept as its endpoints
// and its ports, not as endpoints per port: the apiserver accepts slices of
// 20 000 ports × 1 000 endpoints, of which a Service may use one port.
// Endpoints per port are built only for ports a Service has (see
// familyState.setSlice).
type parsedSlice struct {
	// bases carry the port of ports[0], so that on that port (the only one
	// of nearly every slice) they are the endpoints handed to snapshots.
	// They are sorted by IP, stably, so that one slice's endpoints of a
	// port need no sorting when merged.
	bases []Endpoint
	ports []keyedPort
}

// keyedPort is one port of a slice; a parsedSlice's are sorted by key,
// one per key.
type keyedPort struct {
	key  portKey
	port int32
}

// port returns the number the slice serves key on.
func (s *parsedSlice) port(key portKey) (int32, bool) {
	i, ok := slices.BinarySearchFunc(s.ports, key, func(p keyedPort, k portKey) int { return comparePortKeys(p.key, k) })
	if !ok {
		return 0, false
	}
	return s.ports[i].port, true
}

func parsedSliceEqual(a, b *parsedSlice) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !slices.Equal(a.ports, b.ports) || len(a.bases) != len(b.bases) {
		return false
	}
	for i := range a.bases {
		if !endpointEqual(&a.bases[i], &b.bases[i]) {
			return false
		}
	}
	return true
}

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

// parseEndpointSlice keeps the usable endpoints and ports of a slice. The
// others are left out and reported as problems.
func parseEndpointSlice(slice *discovery.EndpointSlice, family v1.IPFamily, nodeName string) (*parsedSlice, []fieldProblem) {
	var problems []fieldProblem
	bad := func(field, value, reason string) {
		problems = append(problems, fieldProblem{Field: field, Value: value, Reason: reason})
	}
	out := &parsedSlice{ports: make([]keyedPort, 0, len(slice.Ports)), bases: make([]Endpoint, 0, len(slice.Endpoints))}
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
		out.ports = append(out.ports, keyedPort{key, *p.Port})
	}
	out.ports = sortPorts(out.ports)

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
		out.bases = append(out.bases, endpointFromSlice(e, ip, nodeName))
	}
	slices.SortStableFunc(out.bases, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	if len(out.ports) > 0 {
		for i := range out.bases {
			out.bases[i].Port = out.ports[0].port
		}
	}
	return out, problems
}

// sortPorts sorts ports by key for lookups. Of ports sharing a key (the
// apiserver rejects that, but our input is not trusted) the last one wins.
func sortPorts(ports []keyedPort) []keyedPort {
	slices.SortStableFunc(ports, func(a, b keyedPort) int { return comparePortKeys(a.key, b.key) })
	out := ports[:0]
	for i, p := range ports {
		if i+1 < len(ports) && ports[i+1].key == p.key {
			continue
		}
		out = append(out, p)
	}
	return slices.Clip(out)
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
// It is used under the Tracker's lock.
type endpointSliceCache struct {
	slices map[types.NamespacedName][]sliceEntry
	// Scratch of set, kept between calls while small.
	before, after []epRef
}

// sliceEntry is one slice of a service; a service's are sorted by name, the
// order in which duplicate endpoints are resolved.
type sliceEntry struct {
	name string
	ps   *parsedSlice
}

func newEndpointSliceCache() *endpointSliceCache {
	return &endpointSliceCache{slices: map[types.NamespacedName][]sliceEntry{}}
}

// set stores (or, with nil ps, deletes) one slice of svc and calls changed
// for every port whose merged endpoints differ from before, used by a
// Service or not, with the new ones (valid only during the call).
func (c *endpointSliceCache) set(svc types.NamespacedName, name string, ps *parsedSlice, changed func(portKey, []epRef)) {
	before := c.slices[svc]
	after, old := withSlice(before, name, ps)
	if len(after) == 0 {
		delete(c.slices, svc)
	} else {
		c.slices[svc] = after
	}

	// Informer resyncs and status-only updates bring identical slices.
	if parsedSliceEqual(old, ps) {
		return
	}
	// Only ports of this slice can change, but other slices may hold the
	// same endpoints, so each is merged across slices before and after.
	forEachPort(old, ps, func(key portKey) {
		c.before = mergeRefs(c.before[:0], before, key)
		c.after = mergeRefs(c.after[:0], after, key)
		if !refsEqual(c.before, c.after) {
			changed(key, c.after)
		}
	})
	// One huge service must not pin its merge buffers for good.
	if cap(c.before)+cap(c.after) > 1<<14 {
		c.before, c.after = nil, nil
	}
}

// withSlice returns a copy of entries (the merges of set read both) with
// name's slice replaced by ps, and the slice it replaced.
func withSlice(entries []sliceEntry, name string, ps *parsedSlice) ([]sliceEntry, *parsedSlice) {
	i, found := slices.BinarySearchFunc(entries, name, func(e sliceEntry, n string) int { return strings.Compare(e.name, n) })
	out := make([]sliceEntry, 0, len(entries)+1)
	out = append(out, entries[:i]...)
	if ps != nil {
		out = append(out, sliceEntry{name, ps})
	}
	var old *parsedSlice
	if found {
		old = entries[i].ps
		i++
	}
	return append(out, entries[i:]...), old
}

// endpoints returns svc's merged endpoints of key, sorted by ip:port.
func (c *endpointSliceCache) endpoints(svc types.NamespacedName, key portKey) []*Endpoint {
	return buildEndpoints(mergeRefs(nil, c.slices[svc], key), nil)
}

// forEachPort calls f once for each port key of a or b (either may be nil).
func forEachPort(a, b *parsedSlice, f func(portKey)) {
	var pa, pb []keyedPort
	if a != nil {
		pa = a.ports
	}
	if b != nil {
		pb = b.ports
	}
	for len(pa) > 0 || len(pb) > 0 {
		var c int
		switch {
		case len(pa) == 0:
			c = 1
		case len(pb) == 0:
			c = -1
		default:
			c = comparePortKeys(pa[0].key, pb[0].key)
		}
		if c <= 0 {
			f(pa[0].key)
			pa = pa[1:]
		} else {
			f(pb[0].key)
		}
		if c >= 0 {
			pb = pb[1:]
		}
	}
}

// epRef is one endpoint of a slice on one port, before it is built.
type epRef struct {
	base *Endpoint
	port int32
}

func (r epRef) addrPort() netip.AddrPort { return netip.AddrPortFrom(r.base.IP, uint16(r.port)) }

// mergeRefs appends to dst (empty) the endpoints of key across entries,
// sorted by ip:port with duplicates removed: the first non-terminating copy
// wins, else the first, as an endpoint moving between slices is briefly in
// both.
func mergeRefs(dst []epRef, entries []sliceEntry, key portKey) []epRef {
	n, runs := 0, 0
	for _, e := range entries {
		if _, ok := e.ps.port(key); ok {
			n += len(e.ps.bases)
			runs++
		}
	}
	dst = slices.Grow(dst, n)
	for _, e := range entries {
		port, ok := e.ps.port(key)
		if !ok {
			continue
		}
		for i := range e.ps.bases {
			dst = append(dst, epRef{&e.ps.bases[i], port})
		}
	}
	// Stable: among duplicates the order of slices, then of endpoints, decides.
	if runs > 1 {
		slices.SortStableFunc(dst, func(a, b epRef) int { return a.addrPort().Compare(b.addrPort()) })
	}
	out := dst[:0]
	for i := 0; i < len(dst); {
		j, win := i+1, i
		for ; j < len(dst) && dst[j].addrPort() == dst[i].addrPort(); j++ {
			if dst[win].base.Terminating && !dst[j].base.Terminating {
				win = j
			}
		}
		out = append(out, dst[win])
		i = j
	}
	return out
}

func refsEqual(a, b []epRef) bool {
	return slices.EqualFunc(a, b, func(x, y epRef) bool {
		return x.port == y.port && (x.base == y.base || sameBackend(x.base, y.base))
	})
}

// buildEndpoints makes the endpoints handed to snapshots. Each is the base
// itself where it has the port, else the equal one of prev (the port's
// previous list), so that a change of a large service allocates only what
// changed and comparisons with the last snapshot stop at the pointer, else a
// new one. New ones are allocated one by one: one kept in a shared block
// would pin the whole block.
func buildEndpoints(refs []epRef, prev []*Endpoint) []*Endpoint {
	if len(refs) == 0 {
		return nil
	}
	out := make([]*Endpoint, len(refs))
	j := 0
	for i, r := range refs {
		if r.base.Port == r.port {
			out[i] = r.base
			continue
		}
		ap := r.addrPort()
		for j < len(prev) && prev[j].AddrPort().Compare(ap) < 0 {
			j++
		}
		if j < len(prev) && prev[j].Port == r.port && sameBackend(prev[j], r.base) {
			out[i] = prev[j]
			continue
		}
		ep := new(Endpoint)
		*ep = *r.base
		ep.Port = r.port
		out[i] = ep
	}
	return out
}

// setSlice stores one parsed slice of svc (nil deletes it) and reports
// whether the endpoints of any of its ports changed. A change counts even
// for ports no Service has (yet), as kube-proxy counts it: it is pending and
// carries its trigger time. Only ports of svc's Service get endpoints built.
func (st *familyState) setSlice(svc types.NamespacedName, name string, ps *parsedSlice) bool {
	changed := false
	ports := st.services[svc]
	st.slices.set(svc, name, ps, func(key portKey, refs []epRef) {
		changed = true
		spn := ServicePortName{NamespacedName: svc, Port: key.Name, Protocol: key.Protocol}
		if ports[spn] != nil {
			st.setEndpoints(spn, buildEndpoints(refs, st.endpoints[svc][spn]))
		}
	})
	return changed
}

// useServicePorts keeps st.endpoints[nsn] to the ports nsn's Service now
// has: it builds those of the ports it gained from the slices already seen.
func (st *familyState) useServicePorts(nsn types.NamespacedName) {
	ports := st.services[nsn]
	for name := range st.endpoints[nsn] {
		if ports[name] == nil {
			st.setEndpoints(name, nil)
		}
	}
	for name := range ports {
		if _, ok := st.endpoints[nsn][name]; !ok {
			st.setEndpoints(name, st.slices.endpoints(nsn, portKey{Name: name.Port, Protocol: name.Protocol}))
		}
	}
}

// setEndpoints stores (or, when empty, forgets) the endpoints of one port.
func (st *familyState) setEndpoints(name ServicePortName, eps []*Endpoint) {
	m := st.endpoints[name.NamespacedName]
	if len(eps) == 0 {
		delete(m, name)
		if len(m) == 0 {
			delete(st.endpoints, name.NamespacedName)
		}
		return
	}
	if m == nil {
		m = map[ServicePortName][]*Endpoint{}
		st.endpoints[name.NamespacedName] = m
	}
	m[name] = eps
}

func endpointEqual(a, b *Endpoint) bool {
	return a == b || a.Port == b.Port && sameBackend(a, b)
}

// sameBackend compares all but the ports.
func sameBackend(a, b *Endpoint) bool {
	return a.IP == b.IP && a.Ready == b.Ready && a.Serving == b.Serving &&
		a.Terminating == b.Terminating && a.NodeName == b.NodeName && a.Zone == b.Zone &&
		a.IsLocal == b.IsLocal && a.ZoneHints.Equal(b.ZoneHints) && a.NodeHints.Equal(b.NodeHints)
}

func endpointsEqual(a, b []*Endpoint) bool {
	return slices.EqualFunc(a, b, endpointEqual)
}
