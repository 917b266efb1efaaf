package proxier

import (
	"slices"
	"testing"

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
			if len(got) != len(tc.want) {
				t.Fatalf("got %d ports, want %d: %v", len(got), len(tc.want), got)
			}
			for key, want := range tc.want {
				eps := got[key]
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
	add := func(s *discovery.EndpointSlice) {
		eps, _ := parseEndpointSlice(s, v1.IPv4Protocol, "node1")
		c.set(web, s.Name, eps)
	}
	// The endpoint 203.0.113.7 moves from web-b (terminating) to web-a.
	add(makeSlice("ns/web-b", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.9"), sliceEndpoint("203.0.113.7", conditions(false, true, true))))
	add(makeSlice("ns/web-a", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), slicePort("metrics", tcp, 9090),
		sliceEndpoint("203.0.113.7"), sliceEndpoint("203.0.113.10")))
	add(makeSlice("ns/web-c", "web", discovery.AddressTypeIPv4, slicePort("http", tcp, 80),
		sliceEndpoint("203.0.113.10", conditions(false, false, true))))

	got := c.merged(web)
	http := got[spn("ns/web", "http", tcp)]
	if want := []string{"203.0.113.7:80", "203.0.113.9:80", "203.0.113.10:80"}; !slices.Equal(epStrings(http), want) {
		t.Fatalf("http endpoints = %v, want %v", epStrings(http), want)
	}
	if http[0].Terminating {
		t.Errorf("duplicate 203.0.113.7 kept the terminating copy")
	}
	if http[2].Terminating {
		t.Errorf("duplicate 203.0.113.10 kept the terminating copy")
	}
	if m := epStrings(got[spn("ns/web", "metrics", tcp)]); !slices.Equal(m, []string{"203.0.113.7:9090", "203.0.113.10:9090"}) {
		t.Errorf("metrics endpoints = %v", m)
	}

	c.set(web, "web-a", nil)
	http = c.merged(web)[spn("ns/web", "http", tcp)]
	if want := []string{"203.0.113.7:80", "203.0.113.9:80", "203.0.113.10:80"}; !slices.Equal(epStrings(http), want) {
		t.Fatalf("after deleting web-a: %v, want %v", epStrings(http), want)
	}
	if !http[0].Terminating || !http[2].Terminating {
		t.Errorf("after deleting web-a the remaining copies must be the terminating ones")
	}
	c.set(web, "web-b", nil)
	c.set(web, "web-c", nil)
	if got := c.merged(web); got != nil || len(c.slices) != 0 {
		t.Errorf("cache not empty after deleting every slice: %v %v", got, c.slices)
	}
}
