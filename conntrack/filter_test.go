package conntrack

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

func TestFilters(t *testing.T) {
	const dns = "default.dns:dns/UDP"
	tests := []struct {
		name   string
		family v1.IPFamily
		change change
		want   []Filter
	}{
		{
			name:   "no changes",
			change: change{services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53)}},
		},
		{
			name: "UDP lost endpoint matches its reply source",
			change: change{
				services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53)},
				lost:     map[string][]string{dns: {"203.0.113.5:5353"}},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53"), ReplySources: aps("203.0.113.5:5353")}},
		},
		{
			name: "lost endpoints are sorted and deduplicated",
			change: change{
				services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53)},
				lost:     map[string][]string{dns: {"203.0.113.9:5353", "203.0.113.5:5353", "203.0.113.9:5353"}},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53"), ReplySources: aps("203.0.113.5:5353", "203.0.113.9:5353")}},
		},
		{
			name: "UDP first endpoint matches any reply source",
			change: change{
				services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53)},
				first:    []string{dns},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonFirstEndpoint, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53")}},
		},
		{
			name: "SCTP is handled like UDP",
			change: change{
				services: []*proxier.ServicePort{svc("default.sig:sig/SCTP", "198.51.100.20", 3868)},
				lost:     map[string][]string{"default.sig:sig/SCTP": {"203.0.113.7:3868"}},
			},
			want: []Filter{{Service: spn("default.sig:sig/SCTP"), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolSCTP,
				Destinations: aps("198.51.100.20:3868"), ReplySources: aps("203.0.113.7:3868")}},
		},
		{
			name: "TCP is ignored in every kind of change",
			change: change{
				services: []*proxier.ServicePort{svc("default.web:http/TCP", "198.51.100.30", 80),
					svc("default.web2:http/TCP", "198.51.100.31", 80)},
				lost:    map[string][]string{"default.web:http/TCP": {"203.0.113.8:8080"}},
				first:   []string{"default.web2:http/TCP"},
				removed: []*proxier.ServicePort{svc("default.old:http/TCP", "198.51.100.32", 80)},
			},
		},
		{
			name: "NodePort",
			change: change{
				services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53, nodePort(30053))},
				lost:     map[string][]string{dns: {"203.0.113.5:5353"}},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53"), NodePort: 30053, ReplySources: aps("203.0.113.5:5353")}},
		},
		{
			name: "external and load balancer IPs, duplicates once",
			change: change{
				services: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53,
					externalIPs("203.0.113.200", "203.0.113.201"), lbIPs("203.0.113.201", "203.0.113.202"))},
				first: []string{dns},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonFirstEndpoint, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53", "203.0.113.200:53", "203.0.113.201:53", "203.0.113.202:53")}},
		},
		{
			name: "removed service gets one wide filter even with lost endpoints",
			change: change{
				lost:    map[string][]string{dns: {"203.0.113.5:5353"}},
				removed: []*proxier.ServicePort{svc(dns, "198.51.100.10", 53, nodePort(30053), lbIPs("203.0.113.210"))},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonRemoved, Protocol: v1.ProtocolUDP,
				Destinations: aps("198.51.100.10:53", "203.0.113.210:53"), NodePort: 30053}},
		},
		{
			name:   "lost endpoints of an unknown port are dropped",
			change: change{lost: map[string][]string{dns: {"203.0.113.5:5353"}}},
		},
		{
			name:   "IPv6",
			family: v1.IPv6Protocol,
			change: change{
				services: []*proxier.ServicePort{svc(dns, "2001:db8:5::10", 53, externalIPs("2001:db8:6::1"), nodePort(30053))},
				lost:     map[string][]string{dns: {"[2001:db8:1::5]:5353"}},
			},
			want: []Filter{{Service: spn(dns), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
				Destinations: aps("[2001:db8:5::10]:53", "[2001:db8:6::1]:53"), NodePort: 30053,
				ReplySources: aps("[2001:db8:1::5]:5353")}},
		},
		{
			name: "several services sorted by name then reason",
			change: change{
				services: []*proxier.ServicePort{svc("b.q:q/UDP", "198.51.100.41", 53), svc("a.p:p/UDP", "198.51.100.40", 53)},
				lost:     map[string][]string{"b.q:q/UDP": {"203.0.113.5:53"}, "a.p:p/UDP": {"203.0.113.6:53"}},
				first:    []string{"b.q:q/UDP"},
			},
			want: []Filter{
				{Service: spn("a.p:p/UDP"), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
					Destinations: aps("198.51.100.40:53"), ReplySources: aps("203.0.113.6:53")},
				{Service: spn("b.q:q/UDP"), Reason: ReasonFirstEndpoint, Protocol: v1.ProtocolUDP,
					Destinations: aps("198.51.100.41:53")},
				{Service: spn("b.q:q/UDP"), Reason: ReasonLostEndpoints, Protocol: v1.ProtocolUDP,
					Destinations: aps("198.51.100.41:53"), ReplySources: aps("203.0.113.5:53")},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			family := tc.family
			if family == "" {
				family = v1.IPv4Protocol
			}
			got := Filters(snapshot(family, tc.change))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Filters() =\n%s\nwant\n%s", lines(got), lines(tc.want))
			}
		})
	}
}

func TestFilterMatches(t *testing.T) {
	f := Filter{Protocol: v1.ProtocolUDP, Destinations: aps("198.51.100.10:53"), NodePort: 30053,
		ReplySources: aps("203.0.113.5:5353")}
	any := f
	any.ReplySources = nil
	tests := []struct {
		flow          string
		want, wantAny bool
	}{
		{"udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353", true, true},
		{"udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.6:5353", false, true},
		{"udp 192.0.2.101:40000 198.51.100.10:53 198.51.100.10:53", false, true},
		{"udp 192.0.2.101:40000 192.0.2.11:30053 203.0.113.5:5353", true, true},
		{"udp 192.0.2.101:40000 127.0.0.1:30053 203.0.113.5:5353", true, true},
		{"udp 192.0.2.101:40000 198.51.100.10:54 203.0.113.5:5353", false, false},
		{"udp 192.0.2.101:40000 198.51.100.11:53 203.0.113.5:5353", false, false},
		{"tcp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353", false, false},
		{"sctp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.flow, func(t *testing.T) {
			fl := flow(tc.flow)
			if got := f.Matches(fl); got != tc.want {
				t.Errorf("lost-endpoint filter Matches = %v, want %v", got, tc.want)
			}
			if got := any.Matches(fl); got != tc.wantAny {
				t.Errorf("any-reply filter Matches = %v, want %v", got, tc.wantAny)
			}
		})
	}
}

// TestSelectAgreesWithMatches checks the indexed one-pass matcher against
// the plain definition: a flow is selected iff some filter matches it.
func TestSelectAgreesWithMatches(t *testing.T) {
	filters := []Filter{
		{Protocol: v1.ProtocolUDP, Destinations: aps("198.51.100.10:53", "203.0.113.200:53"), NodePort: 30053,
			ReplySources: aps("203.0.113.5:5353")},
		{Protocol: v1.ProtocolSCTP, Destinations: aps("198.51.100.20:3868")},
		{Protocol: v1.ProtocolUDP, NodePort: 30054},
	}
	var flows []Flow
	protos := []string{"udp", "sctp", "tcp"}
	dsts := []string{"198.51.100.10:53", "203.0.113.200:53", "198.51.100.20:3868", "192.0.2.11:30053", "192.0.2.11:30054", "198.51.100.99:53"}
	replies := []string{"203.0.113.5:5353", "203.0.113.6:5353", "203.0.113.7:3868"}
	for _, p := range protos {
		for _, d := range dsts {
			for _, r := range replies {
				flows = append(flows, flow(fmt.Sprintf("%s 192.0.2.101:40000 %s %s", p, d, r)))
			}
		}
	}
	var want []Flow
	for _, fl := range flows {
		if slices.ContainsFunc(filters, func(f Filter) bool { return f.Matches(fl) }) {
			want = append(want, fl)
		}
	}
	got := Select(filters, flows)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Select() =\n%s\nwant\n%s", lines(got), lines(want))
	}
	// 2 UDP destinations + NodePort 30053 with one reply source, SCTP
	// destination with any reply, UDP NodePort 30054 with any reply.
	if len(got) != 3+3+3 {
		t.Errorf("Select() picked %d flows, want 9: %v", len(got), got)
	}
}

func lines[T fmt.Stringer](xs []T) string {
	var b strings.Builder
	for _, x := range xs {
		fmt.Fprintf(&b, "  %s\n", x)
	}
	return b.String()
}
