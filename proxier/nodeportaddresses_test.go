package proxier

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestNodePortAddresses(t *testing.T) {
	ifAddrs := []net.Addr{
		&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
		&net.IPNet{IP: net.ParseIP("::1"), Mask: net.CIDRMask(128, 128)},
		&net.IPNet{IP: net.ParseIP("192.0.2.11").To4(), Mask: net.CIDRMask(24, 32)},
		&net.IPNet{IP: net.ParseIP("198.18.0.5"), Mask: net.CIDRMask(15, 32)},
		&net.IPNet{IP: net.ParseIP("2001:db8:2::11"), Mask: net.CIDRMask(64, 128)},
		&net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)},
		&net.IPAddr{IP: net.ParseIP("192.0.2.11")}, // duplicate, other form
	}
	primary4 := netip.MustParseAddr("192.0.2.11")
	primary6 := netip.MustParseAddr("2001:db8:2::11")

	tests := []struct {
		name         string
		family       v1.IPFamily
		values       []string
		primary      netip.Addr
		wantAll      bool
		wantLoopback bool
		contains     map[string]bool
		wantLocal    []string
	}{{
		name: "unset matches all IPv4", family: v1.IPv4Protocol, primary: primary4,
		wantAll: true, wantLoopback: true,
		contains:  map[string]bool{"192.0.2.11": true, "127.0.0.1": true, "2001:db8:2::11": false},
		wantLocal: []string{"127.0.0.1", "192.0.2.11", "198.18.0.5"},
	}, {
		name: "unset matches all IPv6", family: v1.IPv6Protocol, primary: primary6,
		wantAll:   true,
		contains:  map[string]bool{"2001:db8:2::11": true, "192.0.2.11": false},
		wantLocal: []string{"::1", "2001:db8:2::11", "fe80::1"},
	}, {
		name: "all keyword", family: v1.IPv4Protocol, values: []string{"all"}, primary: primary4,
		wantAll: true, wantLoopback: true,
		wantLocal: []string{"127.0.0.1", "192.0.2.11", "198.18.0.5"},
	}, {
		name: "zero CIDR is all", family: v1.IPv4Protocol, values: []string{"0.0.0.0/0"}, primary: primary4,
		wantAll: true, wantLoopback: true,
		wantLocal: []string{"127.0.0.1", "192.0.2.11", "198.18.0.5"},
	}, {
		name: "CIDR of this family", family: v1.IPv4Protocol, values: []string{"192.0.2.0/24", "2001:db8:2::/64"}, primary: primary4,
		contains:  map[string]bool{"192.0.2.200": true, "198.18.0.5": false, "127.0.0.1": false},
		wantLocal: []string{"192.0.2.11"},
	}, {
		name: "CIDR of the other family only matches all, like kube-proxy", family: v1.IPv6Protocol, values: []string{"192.0.2.0/24"}, primary: primary6,
		wantAll: true, wantLocal: []string{"::1", "2001:db8:2::11", "fe80::1"},
	}, {
		name: "primary IPv4", family: v1.IPv4Protocol, values: []string{"primary"}, primary: primary4,
		contains:  map[string]bool{"192.0.2.11": true, "192.0.2.12": false},
		wantLocal: []string{"192.0.2.11"},
	}, {
		name: "primary IPv6", family: v1.IPv6Protocol, values: []string{"primary"}, primary: primary6,
		contains:  map[string]bool{"2001:db8:2::11": true, "2001:db8:2::12": false},
		wantLocal: []string{"2001:db8:2::11"},
	}, {
		name: "primary with no IP of this family matches all", family: v1.IPv6Protocol, values: []string{"primary"}, primary: primary4,
		wantAll: true, wantLocal: []string{"::1", "2001:db8:2::11", "fe80::1"},
	}, {
		name: "localhost IPv4", family: v1.IPv4Protocol, values: []string{"localhost"}, primary: primary4,
		wantLoopback: true, contains: map[string]bool{"127.0.0.53": true, "192.0.2.11": false},
		wantLocal: []string{"127.0.0.1"},
	}, {
		name: "localhost IPv6", family: v1.IPv6Protocol, values: []string{"localhost"}, primary: primary6,
		contains: map[string]bool{"::1": true}, wantLocal: []string{"::1"},
	}, {
		name: "primary plus loopback CIDR", family: v1.IPv4Protocol, values: []string{"primary", " 127.0.0.1/32 "}, primary: primary4,
		wantLoopback: true, wantLocal: []string{"127.0.0.1", "192.0.2.11"},
	}, {
		name: "CIDR containing loopback", family: v1.IPv4Protocol, values: []string{"96.0.0.0/3"}, primary: primary4,
		wantLoopback: true, wantLocal: []string{"127.0.0.1"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			npa, err := NewNodePortAddresses(tc.family, tc.values, tc.primary)
			if err != nil {
				t.Fatalf("NewNodePortAddresses: %v", err)
			}
			npa.interfaceAddrs = func() ([]net.Addr, error) { return ifAddrs, nil }
			if npa.MatchAll() != tc.wantAll {
				t.Errorf("MatchAll = %v, want %v", npa.MatchAll(), tc.wantAll)
			}
			if npa.ContainsIPv4Loopback() != tc.wantLoopback {
				t.Errorf("ContainsIPv4Loopback = %v, want %v", npa.ContainsIPv4Loopback(), tc.wantLoopback)
			}
			for ip, want := range tc.contains {
				if got := npa.Contains(netip.MustParseAddr(ip)); got != want {
					t.Errorf("Contains(%s) = %v, want %v", ip, got, want)
				}
			}
			addrs, err := npa.LocalAddresses()
			if err != nil {
				t.Fatalf("LocalAddresses: %v", err)
			}
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tc.wantLocal) {
				t.Errorf("LocalAddresses = %v, want %v", got, tc.wantLocal)
			}
		})
	}
}

func TestNodePortAddressesInvalid(t *testing.T) {
	for _, v := range []string{"192.0.2.0", "nonsense", "192.0.2.0/33"} {
		t.Run(v, func(t *testing.T) {
			if _, err := NewNodePortAddresses(v1.IPv4Protocol, []string{v}, netip.Addr{}); err == nil {
				t.Errorf("NewNodePortAddresses(%q) succeeded, want error", v)
			}
		})
	}
}
