package proxier

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParseService(t *testing.T) {
	dual := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	v4 := []v1.IPFamily{v1.IPv4Protocol}
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	web := spn("ns/web", "http", tcp)

	tests := []struct {
		name     string
		svc      *v1.Service
		families []v1.IPFamily
		want     map[v1.IPFamily][]ServicePort
		problems []string // fields
	}{{
		name:     "ClusterIP service",
		svc:      makeService("ns/web", clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0)),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp},
		}},
	}, {
		name: "special and other-family VIPs are reported and left out",
		svc: makeService("ns/web", svcType(v1.ServiceTypeLoadBalancer), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0),
			externalIPs("2001:db8:6::5", "203.0.113.200"),
			lbIngress("169.254.169.254", nil), lbIngress("127.0.0.1", nil), lbIngress("224.0.0.5", nil), lbIngress("203.0.113.201", nil)),
		families: dual,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp,
				ExternalIPs: addrs("203.0.113.200"), LoadBalancerVIPs: addrs("203.0.113.201")},
		}},
		problems: []string{"spec.externalIPs[0]", "status.loadBalancer.ingress[0].ip", "status.loadBalancer.ingress[1].ip", "status.loadBalancer.ingress[2].ip"},
	}, {
		name:     "headless service is skipped",
		svc:      makeService("ns/web", clusterIPs("None"), svcPort("http", tcp, 80, 0)),
		families: v4,
	}, {
		name:     "ExternalName service is skipped",
		svc:      makeService("ns/web", svcType(v1.ServiceTypeExternalName), svcPort("http", tcp, 80, 0)),
		families: v4,
	}, {
		name:     "protocol defaults to TCP, multiple ports",
		svc:      makeService("ns/web", clusterIPs("198.51.100.10"), svcPort("http", "", 80, 0), svcPort("dns", udp, 53, 0)),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp},
			{Name: spn("ns/web", "dns", udp), ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 53, Protocol: udp},
		}},
	}, {
		name: "dual-stack LoadBalancer split by family",
		svc: makeService("ns/web", svcType(v1.ServiceTypeLoadBalancer),
			clusterIPs("198.51.100.10", "2001:db8:5::10"), svcPort("http", tcp, 80, 30080),
			externalIPs("203.0.113.200", "2001:db8:6::200"),
			lbIngress("203.0.113.201", nil), lbIngress("2001:db8:6::201", ptr.To(v1.LoadBalancerIPModeVIP)),
			lbIngress("203.0.113.202", ptr.To(v1.LoadBalancerIPModeProxy)), lbIngress("", nil),
			sourceRanges(" 192.0.2.0/24", "2001:db8:2::/64 "),
			eTPLocal(31000), iTPLocal, clientIPAffinity(nil),
			func(s *v1.Service) { s.Spec.TrafficDistribution = ptr.To("PreferSameZone") }),
		families: dual,
		want: map[v1.IPFamily][]ServicePort{
			v1.IPv4Protocol: {{
				Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp, NodePort: 30080,
				ExternalIPs: addrs("203.0.113.200"), LoadBalancerVIPs: addrs("203.0.113.201"),
				LoadBalancerSourceRanges: prefixes("192.0.2.0/24"), ExternalPolicyLocal: true, InternalPolicyLocal: true,
				HealthCheckNodePort: 31000, StickyMaxAgeSeconds: 10800, TrafficDistribution: "PreferSameZone",
			}},
			v1.IPv6Protocol: {{
				Name: web, ClusterIP: netip.MustParseAddr("2001:db8:5::10"), Port: 80, Protocol: tcp, NodePort: 30080,
				ExternalIPs: addrs("2001:db8:6::200"), LoadBalancerVIPs: addrs("2001:db8:6::201"),
				LoadBalancerSourceRanges: prefixes("2001:db8:2::/64"), ExternalPolicyLocal: true, InternalPolicyLocal: true,
				HealthCheckNodePort: 31000, StickyMaxAgeSeconds: 10800, TrafficDistribution: "PreferSameZone",
			}},
		},
	}, {
		name:     "single-stack IPv6 service gives nothing to IPv4",
		svc:      makeService("ns/web", clusterIPs("2001:db8:5::10"), svcPort("http", tcp, 80, 0)),
		families: dual,
		want: map[v1.IPFamily][]ServicePort{v1.IPv6Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("2001:db8:5::10"), Port: 80, Protocol: tcp},
		}},
	}, {
		name: "eTP Local on a ClusterIP service without external IPs is ignored",
		svc: makeService("ns/web", clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), eTPLocal(0),
			clientIPAffinity(ptr.To[int32](60))),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp, StickyMaxAgeSeconds: 60},
		}},
	}, {
		name: "eTP Local NodePort has no health check port",
		svc: makeService("ns/web", svcType(v1.ServiceTypeNodePort), clusterIPs("198.51.100.10"),
			svcPort("http", tcp, 80, 30080), eTPLocal(31000)),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp, NodePort: 30080, ExternalPolicyLocal: true},
		}},
	}, {
		name: "invalid values dropped and reported",
		svc: makeService("ns/web", clusterIPs("198.51.100.10", "bogus"),
			svcPort("http", tcp, 80, 70000), svcPort("big", tcp, 65536, 0), svcPort("icmp", "ICMP", 1, 0),
			externalIPs("203.0.113.300", "203.0.113.200", "2001:db8:6::1"),
			lbIngress("nope", nil), sourceRanges("192.0.2.0/33", "192.0.2.0/24"),
			clientIPAffinity(ptr.To[int32](0))),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {{
			Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp,
			ExternalIPs: addrs("203.0.113.200"), LoadBalancerSourceRanges: prefixes("192.0.2.0/24"), StickyMaxAgeSeconds: 10800,
		}}},
		problems: []string{
			"spec.clusterIPs[1]", "spec.externalIPs[0]", "spec.externalIPs[2]",
			"status.loadBalancer.ingress[0].ip", "spec.loadBalancerSourceRanges[0]",
			"spec.sessionAffinityConfig.clientIP.timeoutSeconds",
			"spec.ports[0].nodePort", "spec.ports[1].port", "spec.ports[2].protocol",
		},
	}, {
		name:     "legacy leading-zero IPs are accepted",
		svc:      makeService("ns/web", clusterIPs("198.51.100.010"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.0200")),
		families: v4,
		want: map[v1.IPFamily][]ServicePort{v1.IPv4Protocol: {
			{Name: web, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: tcp, ExternalIPs: addrs("203.0.113.200")},
		}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := parseService(tc.svc, tc.families)
			for _, f := range tc.families {
				want := tc.want[f]
				if len(got[f]) != len(want) {
					t.Fatalf("%s: got %d ports %+v, want %d", f, len(got[f]), got[f], len(want))
				}
				for i := range want {
					w := &want[i]
					if g := got[f][w.Name]; !servicePortEqual(g, w) {
						t.Errorf("%s %s:\n got %+v\nwant %+v", f, w.Name, g, w)
					}
				}
			}
			var fields []string
			for _, p := range problems {
				fields = append(fields, p.Field)
			}
			slices.Sort(fields)
			want := slices.Clone(tc.problems)
			slices.Sort(want)
			if !slices.Equal(fields, want) {
				t.Errorf("problems = %v, want %v", problems, want)
			}
		})
	}
}
