package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/record"
)

// Arbitration of addresses that several Service ports claim.
//
// The apiserver keeps ClusterIPs and NodePorts unique, but not external IPs
// nor load-balancer ingress IPs: two Services may list the same IP with the
// same port and protocol, or a Service's external IP may be another's
// ClusterIP. Left to the data planes, iptables would let whichever rule
// comes first in KUBE-SERVICES win and IPVS the first service by name, both
// silently. The core decides instead, for each family's addresses, so every
// mode programs the same winner:
//
//   - A ClusterIP claim wins over any external or load-balancer claim,
//     whatever the ages: the apiserver allocated that ClusterIP to its
//     Service, and the proxy never takes a ClusterIP away.
//   - Otherwise the Service created first wins (metadata.creationTimestamp,
//     then namespace/name, then port name), so a newcomer cannot hijack an
//     address that already carries traffic.
//   - A loser drops only that IP from that port's ExternalIPs or
//     LoadBalancerVIPs, and gets a Warning event naming the field, once per
//     collision. When the winner goes away or lets the IP go, the loser gets
//     it back, and is part of the next snapshot's Changed set even though
//     its Service did not change.

// claimKey is what a data plane matches traffic on.
type claimKey struct {
	addr  netip.Addr
	port  int32
	proto v1.Protocol
}

func (k claimKey) String() string {
	return netip.AddrPortFrom(k.addr, uint16(k.port)).String() + "/" + string(k.proto)
}

type claimKind uint8

const (
	claimCluster claimKind = iota
	claimExternal
	claimLoadBalancer
)

// claim is one ServicePort's claim on a key. sp is the parsed port, as in
// the familyState's flat map: its identity is the claim's.
type claim struct {
	sp      *ServicePort
	kind    claimKind
	created time.Time
}

// beats is the arbitration order: ClusterIPs first, then the oldest Service.
func (c claim) beats(o claim) bool {
	if (c.kind == claimCluster) != (o.kind == claimCluster) {
		return c.kind == claimCluster
	}
	if !c.created.Equal(o.created) {
		return c.created.Before(o.created)
	}
	a, b := c.sp.Name, o.sp.Name
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Port, b.Port), cmp.Compare(c.kind, o.kind)) < 0
}

// claimants of one key. Nearly every key has a single one, held inline so
// the index costs no allocation per service.
type claimants struct {
	head claim
	rest []claim
}

func (cs claimants) winner() claim {
	w := cs.head
	for _, c := range cs.rest {
		if c.beats(w) {
			w = c
		}
	}
	return w
}

// claimIndex holds one family's claims and their outcome. It is updated
// from the services rebuilt for a snapshot, so its cost follows the changes,
// not the number of services.
type claimIndex struct {
	byKey map[claimKey]claimants
	// overrides are the ServicePorts that lost an address, as snapshots
	// show them; every other port is shown as parsed.
	overrides map[ServicePortName]*ServicePort
	// lost holds each Service's lost claims as last reported.
	lost map[types.NamespacedName][]fieldProblem
	// objects are the Services with external or ingress IPs, shared with
	// the Tracker: for creation times and events.
	objects  map[types.NamespacedName]*v1.Service
	recorder record.EventRecorder

	// Scratch of one rebuild: keys whose claimants changed while more
	// than one claimed them, and Services whose outcome may have changed.
	contested map[claimKey]struct{}
	recheck   sets.Set[types.NamespacedName]
}

func newClaimIndex(objects map[types.NamespacedName]*v1.Service, recorder record.EventRecorder) *claimIndex {
	return &claimIndex{
		byKey:     map[claimKey]claimants{},
		overrides: map[ServicePortName]*ServicePort{},
		lost:      map[types.NamespacedName][]fieldProblem{},
		objects:   objects,
		recorder:  recorder,
		contested: map[claimKey]struct{}{},
		recheck:   sets.New[types.NamespacedName](),
	}
}

// forEachClaim calls f for every key sp claims.
func forEachClaim(sp *ServicePort, f func(claimKey, claimKind)) {
	f(claimKey{sp.ClusterIP, sp.Port, sp.Protocol}, claimCluster)
	for _, ip := range sp.ExternalIPs {
		f(claimKey{ip, sp.Port, sp.Protocol}, claimExternal)
	}
	for _, ip := range sp.LoadBalancerVIPs {
		f(claimKey{ip, sp.Port, sp.Protocol}, claimLoadBalancer)
	}
}

// add records the claims of sp, a port of a Service created at created.
func (ix *claimIndex) add(sp *ServicePort, created time.Time) {
	if len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerVIPs) > 0 {
		ix.recheck.Insert(sp.Name.NamespacedName)
	}
	forEachClaim(sp, func(k claimKey, kind claimKind) {
		c := claim{sp: sp, kind: kind, created: created}
		cs, ok := ix.byKey[k]
		if !ok {
			ix.byKey[k] = claimants{head: c}
			return
		}
		cs.rest = append(cs.rest, c)
		ix.byKey[k] = cs
		ix.contested[k] = struct{}{}
	})
}

// remove forgets the claims of sp, as it was added.
func (ix *claimIndex) remove(sp *ServicePort) {
	forEachClaim(sp, func(k claimKey, kind claimKind) {
		cs, ok := ix.byKey[k]
		if !ok {
			return
		}
		if len(cs.rest) == 0 {
			if cs.head.sp == sp && cs.head.kind == kind {
				delete(ix.byKey, k)
			}
			return
		}
		ix.contested[k] = struct{}{}
		if cs.head.sp == sp && cs.head.kind == kind {
			cs.head = cs.rest[len(cs.rest)-1]
			cs.rest = cs.rest[:len(cs.rest)-1]
		} else if i := slices.IndexFunc(cs.rest, func(c claim) bool { return c.sp == sp && c.kind == kind }); i >= 0 {
			cs.rest = slices.Delete(cs.rest, i, i+1)
		}
		if len(cs.rest) == 0 {
			cs.rest = nil
		}
		ix.byKey[k] = cs
	})
	delete(ix.overrides, sp.Name)
	if ix.lost[sp.Name.NamespacedName] != nil {
		ix.recheck.Insert(sp.Name.NamespacedName)
	}
}

// arbitrate returns sp without the external and load-balancer IPs it lost,
// or sp itself when it lost none, and the problems to report.
func (ix *claimIndex) arbitrate(sp *ServicePort) (*ServicePort, []fieldProblem) {
	var problems []fieldProblem
	keep := func(ips []netip.Addr, kind claimKind) []netip.Addr {
		var kept []netip.Addr
		lost := false
		for i, ip := range ips {
			k := claimKey{ip, sp.Port, sp.Protocol}
			cs := ix.byKey[k]
			if w := cs.winner(); len(cs.rest) > 0 && w.sp != sp {
				if !lost {
					kept, lost = slices.Clone(ips[:i]), true
				}
				problems = append(problems, ix.problem(sp.Name.NamespacedName, kind, k, w))
			} else if lost {
				kept = append(kept, ip)
			}
		}
		if !lost {
			return ips
		}
		if len(kept) == 0 {
			return nil
		}
		return kept
	}
	ext := keep(sp.ExternalIPs, claimExternal)
	lb := keep(sp.LoadBalancerVIPs, claimLoadBalancer)
	if len(problems) == 0 {
		return sp, nil
	}
	out := *sp
	out.ExternalIPs, out.LoadBalancerVIPs = ext, lb
	return &out, problems
}

// problem describes the loss of k by Service nsn to w, naming the field of
// nsn's object that holds the address.
func (ix *claimIndex) problem(nsn types.NamespacedName, kind claimKind, k claimKey, w claim) fieldProblem {
	why := "created earlier"
	switch {
	case w.kind == claimCluster:
		why = "its ClusterIP"
	case w.sp.Name.NamespacedName == nsn:
		why = "another port of the same Service"
	case ix.objects[nsn] != nil && w.created.Equal(ix.objects[nsn].CreationTimestamp.Time):
		why = "created at the same time, first by name"
	}
	field, value := addressField(ix.objects[nsn], kind, k.addr)
	return fieldProblem{Field: field, Value: value,
		Reason: fmt.Sprintf("%s is already served by %s (%s)", k, w.sp.Name.NamespacedName, why)}
}

// addressField finds where svc lists addr: the first spec.externalIPs or
// status.loadBalancer.ingress entry that parses to it.
func addressField(svc *v1.Service, kind claimKind, addr netip.Addr) (field, value string) {
	if svc == nil {
		return "address", addr.String()
	}
	if kind == claimExternal {
		for i, s := range svc.Spec.ExternalIPs {
			if ip, ok := parseIP(s); ok && ip == addr {
				return fmt.Sprintf("spec.externalIPs[%d]", i), s
			}
		}
		return "spec.externalIPs", addr.String()
	}
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ip, ok := parseIP(ing.IP); ok && ip == addr {
			return fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP
		}
	}
	return "status.loadBalancer.ingress", addr.String()
}

// resolveClaims settles the claims changed by a rebuild: it recomputes the
// overrides of every Service that may have won or lost an address, reports
// new losses, and marks pending the Services whose outcome changed though
// they did not, so that the next snapshot lists them in Changed.
func (st *familyState) resolveClaims(gen uint64) {
	ix := st.claims
	for k := range ix.contested {
		cs, ok := ix.byKey[k]
		if !ok {
			continue
		}
		ix.recheck.Insert(cs.head.sp.Name.NamespacedName)
		for _, c := range cs.rest {
			ix.recheck.Insert(c.sp.Name.NamespacedName)
		}
	}
	clear(ix.contested)
	for nsn := range ix.recheck {
		if st.resolveService(nsn) {
			st.markPending(nsn, gen, true)
		}
	}
	clear(ix.recheck)
}

// resolveService arbitrates every port of nsn and reports whether any of
// them now differs from what the previous snapshot showed.
func (st *familyState) resolveService(nsn types.NamespacedName) bool {
	ix := st.claims
	var problems []fieldProblem
	changed := false
	for _, name := range st.builtNames[nsn] {
		sp := st.builtServices[name]
		prev := ix.overrides[name]
		if prev == nil {
			prev = sp
		}
		eff, lost := ix.arbitrate(sp)
		if eff == sp {
			delete(ix.overrides, name)
		} else {
			ix.overrides[name] = eff
		}
		changed = changed || !servicePortEqual(prev, eff)
		problems = append(problems, lost...)
	}
	if len(problems) == 0 {
		delete(ix.lost, nsn)
		return changed
	}
	slices.SortFunc(problems, func(a, b fieldProblem) int {
		return cmp.Or(cmp.Compare(a.Field, b.Field), cmp.Compare(a.Reason, b.Reason))
	})
	recorder := ix.recorder
	svc := ix.objects[nsn]
	if svc == nil {
		recorder = nil // no object to record the event on; the log still says it
	}
	reportProblems(recorder, svc, "Service", nsn.String(), problems, ix.lost[nsn])
	ix.lost[nsn] = problems
	return changed
}
