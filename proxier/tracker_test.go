package proxier

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/metrics"
)

var (
	tcp      = v1.ProtocolTCP
	udp      = v1.ProtocolUDP
	ipv4     = v1.IPv4Protocol
	ipv6     = v1.IPv6Protocol
	dual     = []v1.IPFamily{ipv4, ipv6}
	start    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	webHTTP  = spn("ns/web", "http", tcp)
	dnsUDP   = spn("ns/dns", "dns", udp)
	webSvc   = makeService("ns/web", clusterIPs("198.51.100.10", "2001:db8:5::10"), svcPort("http", tcp, 80, 0))
	dnsSvc   = makeService("ns/dns", clusterIPs("198.51.100.53"), svcPort("dns", udp, 53, 0))
	webSlice = makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080),
		sliceEndpoint("203.0.113.5", onNode("node1")), sliceEndpoint("203.0.113.70", onNode("node2")))
)

func newTestTracker(t *testing.T, families ...v1.IPFamily) (*Tracker, *record.FakeRecorder) {
	t.Helper()
	rec := record.NewFakeRecorder(100)
	return NewTracker("node1", families, rec, clocktesting.NewFakePassiveClock(start)), rec
}

func changed(snap *Snapshot) []string {
	var out []string
	for n := range snap.Changed {
		out = append(out, n.String()+"/"+string(n.Protocol))
	}
	slices.Sort(out)
	return out
}

func mustCommit(t *testing.T, tr *Tracker, snap *Snapshot) {
	t.Helper()
	if err := tr.Commit(snap); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func TestTrackerDualStackSplit(t *testing.T) {
	tr, _ := newTestTracker(t, dual...)
	if got := tr.UpdateService(nil, webSvc); !slices.Equal(got, dual) {
		t.Errorf("service add changed %v, want both families", got)
	}
	if got := tr.UpdateEndpointSlice(nil, webSlice); !slices.Equal(got, []v1.IPFamily{ipv4}) {
		t.Errorf("IPv4 slice changed %v", got)
	}
	v6slice := makeSlice("ns/web-v6", "web", discovery.AddressTypeIPv6, slicePort("http", tcp, 8080), sliceEndpoint("2001:db8:1::5"))
	if got := tr.UpdateEndpointSlice(nil, v6slice); !slices.Equal(got, []v1.IPFamily{ipv6}) {
		t.Errorf("IPv6 slice changed %v", got)
	}
	fqdn := makeSlice("ns/web-fqdn", "web", discovery.AddressTypeFQDN, slicePort("http", tcp, 8080), sliceEndpoint("example.test"))
	if got := tr.UpdateEndpointSlice(nil, fqdn); got != nil {
		t.Errorf("FQDN slice changed %v", got)
	}

	s4, s6 := tr.Snapshot(ipv4), tr.Snapshot(ipv6)
	if s4.Services[webHTTP].ClusterIP != netip.MustParseAddr("198.51.100.10") || s6.Services[webHTTP].ClusterIP != netip.MustParseAddr("2001:db8:5::10") {
		t.Errorf("cluster IPs not split: %v %v", s4.Services[webHTTP].ClusterIP, s6.Services[webHTTP].ClusterIP)
	}
	if got := epStrings(s4.Endpoints[webHTTP]); !slices.Equal(got, []string{"203.0.113.5:8080", "203.0.113.70:8080"}) {
		t.Errorf("IPv4 endpoints %v", got)
	}
	if got := epStrings(s6.Endpoints[webHTTP]); !slices.Equal(got, []string{"[2001:db8:1::5]:8080"}) {
		t.Errorf("IPv6 endpoints %v", got)
	}
	if !s4.Endpoints[webHTTP][0].IsLocal || s4.Endpoints[webHTTP][1].IsLocal {
		t.Errorf("IsLocal wrong: %+v", s4.Endpoints[webHTTP])
	}
	if tr.Snapshot(ipv4) == nil || NewTracker("n", []v1.IPFamily{ipv4}, nil, clocktesting.NewFakePassiveClock(start)).Snapshot(ipv6) != nil {
		t.Errorf("Snapshot of an untracked family must be nil")
	}
}

// TestTrackerChanges walks one family through a sequence of changes and
// checks each snapshot's Changed/Removed/Stale sets against the last commit.
func TestTrackerChanges(t *testing.T) {
	dnsSlice := makeSlice("ns/dns-1", "dns", discovery.AddressTypeIPv4, slicePort("dns", udp, 53),
		sliceEndpoint("203.0.113.20"), sliceEndpoint("203.0.113.21"))
	dnsSliceOneGone := makeSlice("ns/dns-1", "dns", discovery.AddressTypeIPv4, slicePort("dns", udp, 53),
		sliceEndpoint("203.0.113.20"), sliceEndpoint("203.0.113.21", conditions(false, false, true)))

	type want struct {
		changed        []string
		removed        []string
		staleEndpoints map[ServicePortName][]string
		staleServices  []ServicePortName
		endpoints      map[ServicePortName][]string
	}
	steps := []struct {
		name   string
		do     func(tr *Tracker)
		commit bool
		want   want
	}{{
		name: "slice before its service is not a change", do: func(tr *Tracker) { tr.UpdateEndpointSlice(nil, dnsSlice) },
		commit: true, want: want{},
	}, {
		name: "service arrives and finds its endpoints", do: func(tr *Tracker) { tr.UpdateService(nil, dnsSvc) },
		commit: true,
		want: want{changed: []string{"ns/dns:dns/UDP"}, staleServices: []ServicePortName{dnsUDP},
			endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "identical update is no change", do: func(tr *Tracker) { tr.UpdateService(dnsSvc, dnsSvc.DeepCopy()) },
		commit: true, want: want{endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "UDP endpoint stops serving", do: func(tr *Tracker) { tr.UpdateEndpointSlice(dnsSlice, dnsSliceOneGone) },
		commit: false,
		want: want{changed: []string{"ns/dns:dns/UDP"}, staleEndpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.21:53"}},
			endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "failed sync: changes stay pending and add up", do: func(tr *Tracker) { tr.UpdateService(nil, webSvc) },
		commit: true,
		want: want{changed: []string{"ns/dns:dns/UDP", "ns/web:http/TCP"}, staleEndpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.21:53"}},
			endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "nothing since the commit", do: func(tr *Tracker) {}, commit: true,
		want: want{endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "service deleted while its slices remain", do: func(tr *Tracker) { tr.UpdateService(dnsSvc, nil) }, commit: true,
		want: want{changed: []string{"ns/dns:dns/UDP"}, removed: []string{"ns/dns:dns"}},
	}, {
		name: "service back: endpoints from the cache", do: func(tr *Tracker) { tr.UpdateService(nil, dnsSvc) }, commit: true,
		want: want{changed: []string{"ns/dns:dns/UDP"}, staleServices: []ServicePortName{dnsUDP},
			endpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53", "203.0.113.21:53"}}},
	}, {
		name: "slice deleted: all UDP endpoints stale", do: func(tr *Tracker) { tr.UpdateEndpointSlice(dnsSliceOneGone, nil) }, commit: true,
		want: want{changed: []string{"ns/dns:dns/UDP"}, staleEndpoints: map[ServicePortName][]string{dnsUDP: {"203.0.113.20:53"}}},
	}, {
		name: "service-proxy-name label removes the service", do: func(tr *Tracker) {
			tr.UpdateService(webSvc, makeService("ns/web", clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), svcLabel(LabelServiceProxyName, "other")))
		}, commit: true,
		want: want{changed: []string{"ns/web:http/TCP"}, removed: []string{"ns/web:http"}},
	}}

	tr, _ := newTestTracker(t, ipv4)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.do(tr)
			snap := tr.Snapshot(ipv4)
			if got := changed(snap); !slices.Equal(got, step.want.changed) {
				t.Errorf("Changed = %v, want %v", got, step.want.changed)
			}
			var removed []string
			for n := range snap.Removed {
				removed = append(removed, n.String())
			}
			slices.Sort(removed)
			if !slices.Equal(removed, step.want.removed) {
				t.Errorf("Removed = %v, want %v", removed, step.want.removed)
			}
			if len(snap.StaleEndpoints) != len(step.want.staleEndpoints) {
				t.Errorf("StaleEndpoints = %v, want %v", snap.StaleEndpoints, step.want.staleEndpoints)
			}
			for n, want := range step.want.staleEndpoints {
				var got []string
				for _, ap := range snap.StaleEndpoints[n] {
					got = append(got, ap.String())
				}
				if !slices.Equal(got, want) {
					t.Errorf("StaleEndpoints[%v] = %v, want %v", n, got, want)
				}
			}
			if !snap.StaleServices.Equal(sets.New(step.want.staleServices...)) {
				t.Errorf("StaleServices = %v, want %v", snap.StaleServices.UnsortedList(), step.want.staleServices)
			}
			if len(snap.Endpoints) != len(step.want.endpoints) {
				t.Errorf("Endpoints has %d ports, want %d", len(snap.Endpoints), len(step.want.endpoints))
			}
			for n, want := range step.want.endpoints {
				if got := epStrings(snap.Endpoints[n]); !slices.Equal(got, want) {
					t.Errorf("Endpoints[%v] = %v, want %v", n, got, want)
				}
			}
			if step.commit {
				mustCommit(t, tr, snap)
			}
		})
	}
}

func TestTrackerChangeDuringSyncStaysPending(t *testing.T) {
	tr, _ := newTestTracker(t, ipv4)
	tr.UpdateService(nil, webSvc)
	snap := tr.Snapshot(ipv4)
	tr.UpdateEndpointSlice(nil, webSlice) // arrives while snap is being synced
	mustCommit(t, tr, snap)
	next := tr.Snapshot(ipv4)
	if got := changed(next); !slices.Equal(got, []string{"ns/web:http/TCP"}) {
		t.Errorf("Changed = %v, want the endpoint change made during the sync", got)
	}
	if stale := tr.Commit(snap); stale == nil {
		t.Errorf("committing an older snapshot must fail")
	}
	mustCommit(t, tr, next)
	if got := changed(tr.Snapshot(ipv4)); got != nil {
		t.Errorf("Changed = %v after commit, want none", got)
	}
}

func TestTrackerNodeChangeMarksEverything(t *testing.T) {
	tr, _ := newTestTracker(t, ipv4)
	tr.UpdateService(nil, webSvc)
	tr.UpdateService(nil, dnsSvc)
	mustCommit(t, tr, tr.Snapshot(ipv4))
	node := Node{Name: "node1", IPs: addrs("192.0.2.11"), Eligible: true}
	if !tr.SetNode(ipv4, node) {
		t.Fatalf("SetNode reported no change")
	}
	if tr.SetNode(ipv4, node) {
		t.Errorf("SetNode of the same node reported a change")
	}
	snap := tr.Snapshot(ipv4)
	if got := changed(snap); !slices.Equal(got, []string{"ns/dns:dns/UDP", "ns/web:http/TCP"}) {
		t.Errorf("Changed = %v, want every port", got)
	}
	mustCommit(t, tr, snap)
	// Eligibility is for health checks only: no rule changes.
	node.Eligible = false
	tr.SetNode(ipv4, node)
	snap = tr.Snapshot(ipv4)
	if got := changed(snap); got != nil || snap.Node.Eligible {
		t.Errorf("Changed = %v, Eligible %v; want none, false", got, snap.Node.Eligible)
	}
}

func TestTrackerTriggerTimes(t *testing.T) {
	tr, _ := newTestTracker(t, ipv4)
	tr.UpdateService(nil, webSvc)
	before := start.Add(-time.Minute).Format(time.RFC3339Nano)
	after1 := start.Add(time.Second)
	after2 := start.Add(2 * time.Second)
	s1 := makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), sliceEndpoint("203.0.113.5"), triggerAnnotation(before))
	s2 := makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), sliceEndpoint("203.0.113.6"), triggerAnnotation(after1.Format(time.RFC3339Nano)))
	s3 := makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), sliceEndpoint("203.0.113.7"), triggerAnnotation(after2.Format(time.RFC3339Nano)))

	tr.UpdateEndpointSlice(nil, s1)
	tr.UpdateEndpointSlice(s1, s2)
	snap := tr.Snapshot(ipv4)
	tr.UpdateEndpointSlice(s2, s3)
	if got := snap.TriggerTimes[nsn("ns/web")]; !slices.EqualFunc(got, []time.Time{after1}, time.Time.Equal) {
		t.Errorf("TriggerTimes = %v, want only the one after start", got)
	}
	mustCommit(t, tr, snap)
	snap = tr.Snapshot(ipv4)
	if got := snap.TriggerTimes[nsn("ns/web")]; !slices.EqualFunc(got, []time.Time{after2}, time.Time.Equal) {
		t.Errorf("TriggerTimes = %v, want the one not yet synced", got)
	}
	mustCommit(t, tr, snap)
	tr.UpdateEndpointSlice(s3, nil)
	if got := tr.Snapshot(ipv4).TriggerTimes; len(got) != 0 {
		t.Errorf("deletion reported trigger times %v", got)
	}
}

func TestTrackerInvalidDataEvents(t *testing.T) {
	tr, rec := newTestTracker(t, ipv4)
	bad := makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.5"), sliceEndpoint("127.0.0.1"))
	tr.UpdateService(nil, webSvc)
	tr.UpdateEndpointSlice(nil, bad)
	expectEvents(t, rec, "Warning "+ReasonInvalidValue+` svcproxy is ignoring endpoints[1].addresses[0] "127.0.0.1": loopback address`)
	if got := epStrings(tr.Snapshot(ipv4).Endpoints[webHTTP]); !slices.Equal(got, []string{"203.0.113.5:80"}) {
		t.Errorf("endpoints %v, want the valid one only", got)
	}
	// The same problem on a later version is not reported again.
	tr.UpdateEndpointSlice(bad, bad.DeepCopy())
	expectEvents(t, rec)

	badSvc := makeService("ns/other", clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.999"))
	tr.UpdateService(nil, badSvc)
	expectEvents(t, rec, "Warning "+ReasonInvalidValue+` svcproxy is ignoring spec.externalIPs[0] "203.0.113.999": not an IP address`)
	if sp := tr.Snapshot(ipv4).Services[spn("ns/other", "http", tcp)]; sp == nil || len(sp.ExternalIPs) != 0 {
		t.Errorf("service with a bad external IP: %+v, want it without external IPs", sp)
	}

	garbage := makeSlice("ns/web-2", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.6"), triggerAnnotation("garbage"))
	tr.UpdateEndpointSlice(nil, garbage)
	expectEvents(t, rec, "Warning "+ReasonInvalidValue+` svcproxy is ignoring metadata.annotations[endpoints.kubernetes.io/last-change-trigger-time] "garbage": not an RFC 3339 time`)
	if got := epStrings(tr.Snapshot(ipv4).Endpoints[webHTTP]); !slices.Equal(got, []string{"203.0.113.5:80", "203.0.113.6:80"}) {
		t.Errorf("endpoints %v: a bad annotation must not drop the slice's endpoints", got)
	}
}

func expectEvents(t *testing.T, rec *record.FakeRecorder, want ...string) {
	t.Helper()
	var got []string
	for len(rec.Events) > 0 {
		got = append(got, <-rec.Events)
	}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTrackerHeadlessSliceIgnored(t *testing.T) {
	tr, _ := newTestTracker(t, ipv4)
	tr.UpdateService(nil, webSvc)
	headless := webSlice.DeepCopy()
	headless.Labels[LabelHeadless] = ""
	headless.Labels[LabelHeadless] = "true"
	if got := tr.UpdateEndpointSlice(nil, headless); got != nil {
		t.Errorf("headless slice changed %v", got)
	}
	noLabel := webSlice.DeepCopy()
	delete(noLabel.Labels, discovery.LabelServiceName)
	if got := tr.UpdateEndpointSlice(nil, noLabel); got != nil {
		t.Errorf("slice without service label changed %v", got)
	}
	// A slice relabelled to another service leaves the first one.
	tr.UpdateEndpointSlice(nil, webSlice)
	moved := webSlice.DeepCopy()
	moved.Labels[discovery.LabelServiceName] = "other"
	tr.UpdateEndpointSlice(webSlice, moved)
	if eps := tr.Snapshot(ipv4).Endpoints[webHTTP]; len(eps) != 0 {
		t.Errorf("relabelled slice still feeds ns/web: %v", epStrings(eps))
	}
}

func TestTrackerPendingMetrics(t *testing.T) {
	tr, _ := newTestTracker(t, dual...)
	tr.UpdateService(nil, webSvc)
	tr.UpdateService(nil, dnsSvc)
	tr.UpdateEndpointSlice(nil, webSlice)
	if got := gaugeValue(metrics.ServiceChangesPending); got != 2 {
		t.Errorf("service changes pending = %v, want 2", got)
	}
	if got := gaugeValue(metrics.EndpointChangesPending); got != 1 {
		t.Errorf("endpoint changes pending = %v, want 1", got)
	}
	mustCommit(t, tr, tr.Snapshot(ipv4))
	// IPv6 (web only) still has its service change pending.
	if got := gaugeValue(metrics.ServiceChangesPending); got != 1 {
		t.Errorf("service changes pending = %v, want 1", got)
	}
	mustCommit(t, tr, tr.Snapshot(ipv6))
	if s, e := gaugeValue(metrics.ServiceChangesPending), gaugeValue(metrics.EndpointChangesPending); s != 0 || e != 0 {
		t.Errorf("pending after commits = %v/%v, want 0/0", s, e)
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}
