package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clocktesting "k8s.io/utils/clock/testing"
)

// FuzzTracker feeds the Tracker a sequence of Service, EndpointSlice and Node changes,
// snapshots and commits decoded from the fuzz input, with values valid and invalid
// (unparseable or wrong-family IPs, out-of-range ports, odd protocols, FQDN slices,
// label changes). It must not panic, and every snapshot must hold the invariants a data
// plane relies on: see checkSnapshot. The incremental snapshot must also equal one built
// from scratch by a new Tracker fed only the current objects.
//
// Seeds: testdata/fuzz/FuzzTracker. Run: go test -run=^$ -fuzz=FuzzTracker -fuzztime=20s ./proxier/
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		families := [][]v1.IPFamily{{v1.IPv4Protocol}, {v1.IPv6Protocol}, {v1.IPv4Protocol, v1.IPv6Protocol}}[in.pick(3)]
		clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		rec := &checkingRecorder{t: t}
		tr := NewTracker("node1", families, rec, clk)
		w := &fuzzWorld{services: map[string]*v1.Service{}, slices: map[string]*discovery.EndpointSlice{}, nodes: map[v1.IPFamily]Node{}}
		committed := map[v1.IPFamily]*Snapshot{}
		for step := 0; step < 48 && !in.done(); step++ {
			switch in.pick(7) {
			case 0, 1:
				name := fmt.Sprintf("svc%d", in.pick(3))
				old, cur := w.services[name], fuzzService(in, name)
				if in.pick(5) == 0 {
					cur = nil
				}
				tr.UpdateService(old, cur)
				w.setService(name, cur)
			case 2, 3:
				name := fmt.Sprintf("slice%d", in.pick(4))
				old, cur := w.slices[name], fuzzSlice(in, name)
				if in.pick(5) == 0 {
					cur = nil
				}
				tr.UpdateEndpointSlice(old, cur)
				w.setSlice(name, cur)
			case 4:
				fam := families[in.pick(len(families))]
				n := fuzzNode(in, fam)
				tr.SetNode(fam, n)
				w.nodes[fam] = n
			default:
				fam := families[in.pick(len(families))]
				snap := tr.Snapshot(fam)
				checkSnapshot(t, snap, committed[fam])
				checkFromScratch(t, snap, w, families, clk)
				if in.pick(3) != 0 {
					if err := tr.Commit(snap); err != nil {
						t.Fatalf("commit: %v", err)
					}
					committed[fam] = snap
				}
			}
		}
	})
}

// fuzzInput hands out the fuzz bytes as small choices; zeros once exhausted.
type fuzzInput struct {
	data []byte
	pos  int
}

func (in *fuzzInput) done() bool { return in.pos >= len(in.data) }

func (in *fuzzInput) pick(n int) int {
	if in.done() {
		return 0
	}
	b := in.data[in.pos]
	in.pos++
	return int(b) % n
}

func fuzzOf[T any](in *fuzzInput, values ...T) T { return values[in.pick(len(values))] }

var (
	fuzzIPs = []string{"198.51.100.1", "198.51.100.2", "2001:db8:5::1", "2001:db8:5::2", "", "garbage",
		"198.51.100.010", " 198.51.100.3 ", "::ffff:198.51.100.4", "fe80::1%eth0", "None"}
	fuzzEndpointIPs = []string{"203.0.113.2", "203.0.113.66", "2001:db8:1::2", "127.0.0.1", "169.254.1.1",
		"239.1.1.1", "0.0.0.0", "::1", "fe80::2", "ff02::1", "not-an-ip", "203.0.113.02", "::ffff:203.0.113.3"}
	fuzzExternalIPs = []string{"203.0.113.200", "2001:db8:6::1", "203.0.113.200", "junk", "127.0.0.1"}
	fuzzRanges      = []string{"192.0.2.0/24", "192.0.2.101/32", "2001:db8:2::/64", "nope", "::ffff:192.0.2.0/120", "192.0.2.1"}
	fuzzProtocols   = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP, "", "ICMP"}
	fuzzPorts       = []int32{80, 443, 0, -1, 65535, 65536, 8080}
	fuzzPortNames   = []string{"", "http", "dns"}
)

func fuzzService(in *fuzzInput, name string) *v1.Service {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	svc.Spec.Type = fuzzOf(in, v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName)
	for range in.pick(3) {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, fuzzOf(in, fuzzIPs...))
	}
	if len(svc.Spec.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	if in.pick(4) == 0 {
		svc.Spec.ClusterIPs = nil // old objects carry clusterIP alone
	}
	for range in.pick(4) {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
			Name: fuzzOf(in, fuzzPortNames...), Protocol: fuzzOf(in, fuzzProtocols...), Port: fuzzOf(in, fuzzPorts...),
			NodePort: fuzzOf[int32](in, 0, 30080, -5, 70000), TargetPort: intstr.FromInt32(8080),
		})
	}
	for range in.pick(3) {
		svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, fuzzOf(in, fuzzExternalIPs...))
	}
	for range in.pick(3) {
		ing := v1.LoadBalancerIngress{IP: fuzzOf(in, fuzzExternalIPs...)}
		if in.pick(3) == 0 {
			ing.IPMode = fuzzOf(in, ptrTo(v1.LoadBalancerIPModeProxy), ptrTo(v1.LoadBalancerIPModeVIP))
		}
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, ing)
	}
	for range in.pick(3) {
		svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges, fuzzOf(in, fuzzRanges...))
	}
	svc.Spec.ExternalTrafficPolicy = fuzzOf(in, v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal)
	svc.Spec.HealthCheckNodePort = fuzzOf[int32](in, 0, 32000, -1, 70000)
	if in.pick(2) == 0 {
		svc.Spec.InternalTrafficPolicy = ptrTo(v1.ServiceInternalTrafficPolicyLocal)
	}
	if in.pick(2) == 0 {
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		if in.pick(2) == 0 {
			svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptrTo(fuzzOf[int32](in, 0, 10, 86400, 86401, -3))}}
		}
	}
	if in.pick(4) == 0 {
		svc.Spec.TrafficDistribution = ptrTo(fuzzOf(in, "PreferClose", "PreferSameNode", "bogus"))
	}
	if in.pick(6) == 0 {
		svc.Labels = map[string]string{fuzzOf(in, LabelServiceProxyName, "other"): "x"}
	}
	if in.pick(6) == 0 {
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
	}
	return svc
}

func fuzzSlice(in *fuzzInput, name string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{}}}
	s.AddressType = fuzzOf(in, discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN)
	if svc := fuzzOf(in, "svc0", "svc1", "svc2", ""); svc != "" {
		s.Labels[discovery.LabelServiceName] = svc
	}
	if in.pick(8) == 0 {
		s.Labels[LabelHeadless] = ""
		s.Labels[LabelHeadless+"x"] = "y"
		if in.pick(2) == 0 {
			s.Labels[LabelHeadless] = "true"
		}
	}
	for range in.pick(4) {
		p := discovery.EndpointPort{Name: ptrTo(fuzzOf(in, fuzzPortNames...)), Protocol: ptrTo(fuzzOf(in, fuzzProtocols...)), Port: ptrTo(fuzzOf(in, fuzzPorts...))}
		switch in.pick(5) {
		case 0:
			p.Port = nil
		case 1:
			p.Name, p.Protocol = nil, nil
		}
		s.Ports = append(s.Ports, p)
	}
	for range in.pick(5) {
		ep := discovery.Endpoint{}
		for range in.pick(3) {
			ep.Addresses = append(ep.Addresses, fuzzOf(in, fuzzEndpointIPs...))
		}
		bools := []*bool{nil, ptrTo(true), ptrTo(false)}
		ep.Conditions = discovery.EndpointConditions{Ready: fuzzOf(in, bools...), Serving: fuzzOf(in, bools...), Terminating: fuzzOf(in, bools...)}
		ep.NodeName = fuzzOf(in, nil, ptrTo("node1"), ptrTo("node2"), ptrTo(""))
		ep.Zone = fuzzOf(in, nil, ptrTo("a"), ptrTo("b"))
		if in.pick(3) == 0 {
			ep.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: fuzzOf(in, "a", "b")}}}
			if in.pick(2) == 0 {
				ep.Hints.ForNodes = []discovery.ForNode{{Name: fuzzOf(in, "node1", "node2")}}
			}
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	if in.pick(4) == 0 {
		s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: fuzzOf(in, "garbage", "2026-01-01T00:00:01Z", "2020-01-01T00:00:00Z", "")}
	}
	return s
}

func fuzzNode(in *fuzzInput, family v1.IPFamily) Node {
	n := Node{Name: "node1", Eligible: in.pick(2) == 0, Labels: map[string]string{}}
	if z := fuzzOf(in, "", "a", "b"); z != "" {
		n.Labels[v1.LabelTopologyZone] = z
	}
	ip, cidr := "192.0.2.11", "203.0.113.0/26"
	if family == v1.IPv6Protocol {
		ip, cidr = "2001:db8:2::11", "2001:db8:1:0:1::/80"
	}
	if in.pick(2) == 0 {
		n.IPs = []netip.Addr{netip.MustParseAddr(ip)}
		n.PodCIDRs = []netip.Prefix{netip.MustParsePrefix(cidr)}
	}
	return n
}

func ptrTo[T any](v T) *T { return &v }

// fuzzWorld holds the current objects, for the from-scratch comparison.
type fuzzWorld struct {
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
	nodes    map[v1.IPFamily]Node
}

func (w *fuzzWorld) setService(name string, s *v1.Service) {
	if s == nil {
		delete(w.services, name)
		return
	}
	w.services[name] = s
}

func (w *fuzzWorld) setSlice(name string, s *discovery.EndpointSlice) {
	if s == nil {
		delete(w.slices, name)
		return
	}
	w.slices[name] = s
}

// checkSnapshot checks what a data plane relies on: every ServicePort usable and of the
// snapshot's family; endpoints only for existing ports, of the family, usable unicast
// addresses, sorted and unique; and every ServicePort that differs from the last
// committed snapshot (prev, nil before the first commit) listed in Changed, removed ones
// in Removed.
func checkSnapshot(t *testing.T, snap, prev *Snapshot) {
	t.Helper()
	fam := snap.Family
	validProto := func(p v1.Protocol) bool {
		return p == v1.ProtocolTCP || p == v1.ProtocolUDP || p == v1.ProtocolSCTP
	}
	for name, sp := range snap.Services {
		if sp.Name != name {
			t.Fatalf("service keyed %v is named %v", name, sp.Name)
		}
		if !sp.ClusterIP.IsValid() || addrFamily(sp.ClusterIP) != fam || sp.ClusterIP.Zone() != "" {
			t.Fatalf("%v: clusterIP %v in a %s snapshot", name, sp.ClusterIP, fam)
		}
		if sp.Port < 1 || sp.Port > 65535 || sp.NodePort < 0 || sp.NodePort > 65535 || sp.HealthCheckNodePort < 0 || sp.HealthCheckNodePort > 65535 {
			t.Fatalf("%v: port %d nodePort %d healthCheckNodePort %d", name, sp.Port, sp.NodePort, sp.HealthCheckNodePort)
		}
		if !validProto(sp.Protocol) || sp.Protocol != name.Protocol {
			t.Fatalf("%v: protocol %q", name, sp.Protocol)
		}
		if sp.StickyMaxAgeSeconds < 0 || sp.StickyMaxAgeSeconds > 86400 {
			t.Fatalf("%v: sticky max age %d", name, sp.StickyMaxAgeSeconds)
		}
		for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerVIPs) {
			if !ip.IsValid() || addrFamily(ip) != fam {
				t.Fatalf("%v: external or LB IP %v in a %s snapshot", name, ip, fam)
			}
		}
		for _, p := range sp.LoadBalancerSourceRanges {
			if !p.IsValid() || addrFamily(p.Addr()) != fam || p != p.Masked() {
				t.Fatalf("%v: source range %v in a %s snapshot", name, p, fam)
			}
		}
	}
	for name, eps := range snap.Endpoints {
		if _, ok := snap.Services[name]; !ok {
			t.Fatalf("endpoints for %v, which is not a service port", name)
		}
		for i, ep := range eps {
			ip := ep.IP
			if !ip.IsValid() || addrFamily(ip) != fam || ip.IsLoopback() || ip.IsMulticast() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.Is4In6() {
				t.Fatalf("%v: unusable endpoint %v in a %s snapshot", name, ep, fam)
			}
			if ep.Port < 1 || ep.Port > 65535 {
				t.Fatalf("%v: endpoint port %d", name, ep.Port)
			}
			if i > 0 && eps[i-1].AddrPort().Compare(ep.AddrPort()) >= 0 {
				t.Fatalf("%v: endpoints not sorted and unique: %v", name, epStrings(eps))
			}
			if ep.IsLocal != (ep.NodeName != "" && ep.NodeName == snap.Node.Name) {
				t.Fatalf("%v: endpoint %v on %q IsLocal=%v, node %q", name, ep, ep.NodeName, ep.IsLocal, snap.Node.Name)
			}
		}
	}
	old := prev
	if old == nil {
		old = &Snapshot{}
	}
	for name := range mergedKeys(snap.Services, old.Services) {
		sp, osp := snap.Services[name], old.Services[name]
		if (!servicePortEqual(sp, osp) || !endpointsEqual(snap.Endpoints[name], old.Endpoints[name])) && !snap.Changed.Has(name) {
			t.Fatalf("%v differs from the committed snapshot but is not in Changed", name)
		}
		if sp == nil && osp != nil && snap.Removed[name] == nil {
			t.Fatalf("%v was removed but is not in Removed", name)
		}
	}
	for name := range snap.Removed {
		if _, ok := snap.Services[name]; ok {
			t.Fatalf("%v in Removed and in Services", name)
		}
	}
	for name := range snap.StaleEndpoints {
		if _, ok := snap.Services[name]; !ok || name.Protocol == v1.ProtocolTCP {
			t.Fatalf("stale endpoints for %v, not a current UDP/SCTP port", name)
		}
	}
}

func mergedKeys[V any](a, b map[ServicePortName]V) map[ServicePortName]bool {
	out := make(map[ServicePortName]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// checkFromScratch compares snap's model with a new Tracker's, fed the current objects.
func checkFromScratch(t *testing.T, snap *Snapshot, w *fuzzWorld, families []v1.IPFamily, clk *clocktesting.FakePassiveClock) {
	t.Helper()
	fresh := NewTracker("node1", families, nil, clk)
	for _, s := range w.services {
		fresh.UpdateService(nil, s)
	}
	for _, s := range w.slices {
		fresh.UpdateEndpointSlice(nil, s)
	}
	for f, n := range w.nodes {
		fresh.SetNode(f, n)
	}
	want := fresh.Snapshot(snap.Family)
	for name := range mergedKeys(snap.Services, want.Services) {
		if !servicePortEqual(snap.Services[name], want.Services[name]) {
			t.Fatalf("%v: incremental %+v, from scratch %+v", name, snap.Services[name], want.Services[name])
		}
	}
	for name := range mergedKeys(snap.Endpoints, want.Endpoints) {
		if !endpointsEqual(snap.Endpoints[name], want.Endpoints[name]) {
			t.Fatalf("%v: incremental endpoints %v, from scratch %v", name, epStrings(snap.Endpoints[name]), epStrings(want.Endpoints[name]))
		}
	}
}

// checkingRecorder accepts only the Warning events the tracker is meant to record.
type checkingRecorder struct{ t *testing.T }

func (r *checkingRecorder) Event(obj runtime.Object, eventtype, reason, message string) {
	r.t.Helper()
	if obj == nil || eventtype != v1.EventTypeWarning || reason != ReasonInvalidValue || message == "" {
		r.t.Fatalf("unexpected event on %T: %s %s %q", obj, eventtype, reason, message)
	}
}

func (r *checkingRecorder) Eventf(obj runtime.Object, eventtype, reason, messageFmt string, args ...interface{}) {
	r.Event(obj, eventtype, reason, fmt.Sprintf(messageFmt, args...))
}

func (r *checkingRecorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventtype, reason, messageFmt string, args ...interface{}) {
	r.Eventf(obj, eventtype, reason, messageFmt, args...)
}
