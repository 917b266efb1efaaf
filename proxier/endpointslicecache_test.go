package proxier

import (
	"fmt"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/utils/ptr"
)

func TestParseEndpointSlice(t *testing.T) {
	tcp := v1.ProtocolTCP
	tests := []struct {
		name     string
		slice    *discovery.EndpointSlice
		family   v1.IPFamily
		want     map[portKey][]Endpoint
		problems []string
	}{{
		name: "nil conditions default to ready and serving",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080),
			sliceEndpoint("203.0.113.5", onNode("node1"), inZone("zone-a")),
			sliceEndpoint("203.0.113.70", onNode("node2"), conditions(false, true, true))),
		family: v1.IPv4Protocol,
		want: map[portKey][]Endpoint{{"http", tcp}: {
			{IP: addrs("203.0.113.5")[0], Port: 8080, Ready: true, Serving: true, NodeName: "node1", Zone: "zone-a", IsLocal: true},
			{IP: addrs("203.0.113.70")[0], Port: 8080, Serving: true, Terminating: true, NodeName: "node2"},
		}},
	}, {
		name: "hints and every port",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv6, slicePort("http", tcp, 8080), slicePort("dns", v1.ProtocolUDP, 53),
			sliceEndpoint("2001:db8:1::5", hints([]string{"zone-a"}, []string{"node1"}))),
		family: v1.IPv6Protocol,
		want: map[portKey][]Endpoint{
			{"http", tcp}: {{IP: addrs("2001:db8:1::5")[0], Port: 8080, Ready: true, Serving: true,
				ZoneHints: sets.New("zone-a"), NodeHints: sets.New("node1")}},
			{"dns", v1.ProtocolUDP}: {{IP: addrs("2001:db8:1::5")[0], Port: 53, Ready: true, Serving: true,
				ZoneHints: sets.New("zone-a"), NodeHints: sets.New("node1")}},
		},
	}, {
		name: "unnamed port without protocol, nil port skipped",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4,
			func(s *discovery.EndpointSlice) {
				s.Ports = []discovery.EndpointPort{{Port: ptr.To[int32](80)}, {Name: ptr.To("all")}}
			},
			sliceEndpoint("203.0.113.5")),
		family: v1.IPv4Protocol,
		want: map[portKey][]Endpoint{{"", tcp}: {
			{IP: addrs("203.0.113.5")[0], Port: 80, Ready: true, Serving: true},
		}},
	}, {
		name: "invalid addresses and ports dropped",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080), slicePort("bad", tcp, 70000),
			sliceEndpoint("203.0.113.5"), sliceEndpoint("nonsense"), sliceEndpoint("2001:db8:1::5"),
			sliceEndpoint("127.0.0.1"), sliceEndpoint("169.254.169.254"), sliceEndpoint("224.0.0.5"),
			sliceEndpoint("0.0.0.0"), sliceEndpoint("255.255.255.255"), func(s *discovery.EndpointSlice) {
				s.Endpoints = append(s.Endpoints, discovery.Endpoint{})
			}),
		family: v1.IPv4Protocol,
		want: map[portKey][]Endpoint{{"http", tcp}: {
			{IP: addrs("203.0.113.5")[0], Port: 8080, Ready: true, Serving: true},
		}},
		problems: []string{"ports[1].port", "endpoints[1].addresses[0]", "endpoints[2].addresses[0]", "endpoints[3].addresses[0]",
			"endpoints[4].addresses[0]", "endpoints[5].addresses[0]", "endpoints[6].addresses[0]", "endpoints[7].addresses[0]", "endpoints[8].addresses"},
	}, {
		name: "of ports sharing name and protocol the last wins",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), slicePort("http", v1.ProtocolUDP, 81),
			slicePort("http", tcp, 82), sliceEndpoint("203.0.113.5")),
		family: v1.IPv4Protocol,
		want: map[portKey][]Endpoint{
			{"http", tcp}:            {{IP: addrs("203.0.113.5")[0], Port: 82, Ready: true, Serving: true}},
			{"http", v1.ProtocolUDP}: {{IP: addrs("203.0.113.5")[0], Port: 81, Ready: true, Serving: true}},
		},
	}, {
		name: "IPv6 link-local and loopback dropped",
		slice: makeSlice("ns/web-1", "web", discovery.AddressTypeIPv6, slicePort("http", tcp, 8080),
			sliceEndpoint("fe80::1"), sliceEndpoint("::1"), sliceEndpoint("ff02::1"), sliceEndpoint("2001:db8:1::5")),
		family: v1.IPv6Protocol,
		want: map[portKey][]Endpoint{{"http", tcp}: {
			{IP: addrs("2001:db8:1::5")[0], Port: 8080, Ready: true, Serving: true},
		}},
		problems: []string{"endpoints[0].addresses[0]", "endpoints[1].addresses[0]", "endpoints[2].addresses[0]"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := parseEndpointSlice(tc.slice, tc.family, "node1")
			if len(got.ports) != len(tc.want) {
				t.Fatalf("got %d ports, want %d: %v", len(got.ports), len(tc.want), got.ports)
			}
			for key, want := range tc.want {
				eps := portEndpoints(got, key)
				if len(eps) != len(want) {
					t.Fatalf("port %v: got %v, want %v", key, epStrings(eps), want)
				}
				for i := range want {
					if !endpointEqual(eps[i], &want[i]) {
						t.Errorf("port %v endpoint %d:\n got %+v\nwant %+v", key, i, *eps[i], want[i])
					}
				}
			}
			var fields []string
			for _, p := range problems {
				fields = append(fields, p.Field)
			}
			if !slices.Equal(fields, tc.problems) {
				t.Errorf("problems = %v, want fields %v", problems, tc.problems)
			}
		})
	}
}

func TestEndpointSliceCacheMerge(t *testing.T) {
	tcp := v1.ProtocolTCP
	web := nsn("ns/web")
	c := newEndpointSliceCache()
	set := func(name string, ps *parsedSlice) { c.set(web, name, ps, func(portKey, []epRef) {}) }
	add := func(s *discovery.EndpointSlice) {
		ps, _ := parseEndpointSlice(s, v1.IPv4Protocol, "node1")
		set(s.Name, ps)
	}
	merged := func(port string) []*Endpoint { return c.endpoints(web, portKey{port, tcp}) }
	// The endpoint 203.0.113.7 moves from web-b (terminating) to web-a.
	add(makeSlice("ns/web-b", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.9"), sliceEndpoint("203.0.113.7", conditions(false, true, true))))
	add(makeSlice("ns/web-a", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), slicePort("metrics", tcp, 9090),
		sliceEndpoint("203.0.113.7"), sliceEndpoint("203.0.113.10")))
	add(makeSlice("ns/web-c", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.10", conditions(false, false, true))))

	http := merged("http")
	if want := []string{"203.0.113.7:80", "203.0.113.9:80", "203.0.113.10:80"}; !slices.Equal(epStrings(http), want) {
		t.Fatalf("http endpoints = %v, want %v", epStrings(http), want)
	}
	if http[0].Terminating {
		t.Errorf("duplicate 203.0.113.7 kept the terminating copy")
	}
	if http[2].Terminating {
		t.Errorf("duplicate 203.0.113.10 kept the terminating copy")
	}
	if m := epStrings(merged("metrics")); !slices.Equal(m, []string{"203.0.113.7:9090", "203.0.113.10:9090"}) {
		t.Errorf("metrics endpoints = %v", m)
	}

	set("web-a", nil)
	http = merged("http")
	if want := []string{"203.0.113.7:80", "203.0.113.9:80", "203.0.113.10:80"}; !slices.Equal(epStrings(http), want) {
		t.Fatalf("after deleting web-a: %v, want %v", epStrings(http), want)
	}
	if !http[0].Terminating || !http[2].Terminating {
		t.Errorf("after deleting web-a the remaining copies must be the terminating ones")
	}
	set("web-b", nil)
	set("web-c", nil)
	if got := merged("http"); got != nil || len(c.slices) != 0 {
		t.Errorf("cache not empty after deleting every slice: %v %v", got, c.slices)
	}
}

// portEndpoints builds ps's endpoints on key, in the slice's order.
func portEndpoints(ps *parsedSlice, key portKey) []*Endpoint {
	port, ok := ps.port(key)
	if !ok {
		return nil
	}
	var refs []epRef
	for i := range ps.bases {
		refs = append(refs, epRef{&ps.bases[i], port})
	}
	return buildEndpoints(refs, nil)
}

// TestTrackerServiceGainsSlicePort: a slice's ports that no Service has get
// no endpoints built, yet a Service that gains one later finds its endpoints
// in the next snapshot, and changes to such ports count as changes.
func TestTrackerServiceGainsSlicePort(t *testing.T) {
	tr, _ := newTestTracker(t, ipv4)
	st := tr.state[ipv4]
	web := nsn("ns/web")
	p7 := spn("ns/web", "p7", tcp)
	slice := func(ip, trigger string) *discovery.EndpointSlice {
		opts := []sliceOpt{slicePort("http", tcp, 8080), sliceEndpoint(ip), triggerAnnotation(trigger)}
		for i := range 10 {
			opts = append(opts, slicePort(fmt.Sprintf("p%d", i), tcp, int32(9000+i)))
		}
		return makeSlice("ns/web-1", "web", discovery.AddressTypeIPv4, opts...)
	}
	s1 := slice("203.0.113.5", start.Add(time.Second).Format(time.RFC3339Nano))
	tr.UpdateService(nil, webSvc)
	tr.UpdateEndpointSlice(nil, s1)
	if got := len(st.endpoints[web]); got != 1 {
		t.Errorf("endpoints built for %d ports, want 1 (http only)", got)
	}
	mustCommit(t, tr, tr.Snapshot(ipv4))

	withP7 := makeService("ns/web", clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), svcPort("p7", tcp, 7, 0))
	tr.UpdateService(webSvc, withP7)
	snap := tr.Snapshot(ipv4)
	if got := epStrings(snap.Endpoints[p7]); !slices.Equal(got, []string{"203.0.113.5:9007"}) {
		t.Errorf("p7 endpoints after the Service gained it = %v", got)
	}
	if got := changed(snap); !slices.Equal(got, []string{"ns/web:p7/TCP"}) {
		t.Errorf("Changed = %v, want the gained port", got)
	}
	mustCommit(t, tr, snap)

	// p3, unused, moves to another number: a change, with its trigger time,
	// though no Service port changes.
	s2 := s1.DeepCopy()
	s2.Ports[4].Port = ptr.To[int32](9999)
	s2.Annotations[v1.EndpointsLastChangeTriggerTime] = start.Add(2 * time.Second).Format(time.RFC3339Nano)
	if got := tr.UpdateEndpointSlice(s1, s2); !slices.Equal(got, []v1.IPFamily{ipv4}) {
		t.Errorf("change of an unused port changed %v, want the family", got)
	}
	snap = tr.Snapshot(ipv4)
	if got := changed(snap); got != nil || len(snap.TriggerTimes[web]) != 1 {
		t.Errorf("Changed = %v, trigger times %v; want none, one", got, snap.TriggerTimes[web])
	}
	mustCommit(t, tr, snap)
	if got := tr.UpdateEndpointSlice(s2, s2.DeepCopy()); got != nil {
		t.Errorf("identical slice changed %v", got)
	}

	tr.UpdateService(withP7, webSvc)
	snap = tr.Snapshot(ipv4)
	if _, ok := st.endpoints[web][p7]; ok || snap.Endpoints[p7] != nil || snap.Removed[p7] == nil {
		t.Errorf("p7 dropped from the Service: endpoints kept %v, removed %v", snap.Endpoints[p7], snap.Removed[p7])
	}
}
