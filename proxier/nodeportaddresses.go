package proxier

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Keywords accepted in --nodeport-addresses besides CIDRs.
const (
	NodePortAddressesPrimary   = "primary"
	NodePortAddressesAll       = "all"
	NodePortAddressesLocalhost = "localhost"
)

var ipv4Loopback = netip.MustParseAddr("127.0.0.1")

// NodePortAddresses says which local addresses of one IP family accept
// NodePort traffic, from --nodeport-addresses.
type NodePortAddresses struct {
	family   v1.IPFamily
	prefixes []netip.Prefix
	matchAll bool
	// interfaceAddrs lists the node's addresses; replaced in tests.
	interfaceAddrs func() ([]net.Addr, error)
}

// NewNodePortAddresses resolves values for family. CIDRs of the other family
// are ignored; "primary" is primaryIP as a host prefix (skipped when invalid
// or loopback, as kube-proxy does); "localhost" is the loopback range; "all"
// and an unset list match every address. As in kube-proxy, a list with nothing
// left for this family matches every address of the family.
func NewNodePortAddresses(family v1.IPFamily, values []string, primaryIP netip.Addr) (*NodePortAddresses, error) {
	npa := &NodePortAddresses{family: family, interfaceAddrs: net.InterfaceAddrs}
	for _, raw := range values {
		v := strings.TrimSpace(raw)
		switch v {
		case NodePortAddressesAll:
			npa.matchAll = true
		case NodePortAddressesPrimary:
			ip := primaryIP.Unmap()
			if ip.IsValid() && addrFamily(ip) == family && !ip.IsLoopback() {
				npa.prefixes = append(npa.prefixes, netip.PrefixFrom(ip, ip.BitLen()))
			}
		case NodePortAddressesLocalhost:
			if family == v1.IPv4Protocol {
				npa.prefixes = append(npa.prefixes, netip.MustParsePrefix("127.0.0.0/8"))
			} else {
				npa.prefixes = append(npa.prefixes, netip.MustParsePrefix("::1/128"))
			}
		default:
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("parse nodePortAddresses value %q: %w", raw, err)
			}
			if addrFamily(p.Addr()) == family {
				npa.prefixes = append(npa.prefixes, p.Masked())
			}
		}
	}
	if len(npa.prefixes) == 0 {
		npa.matchAll = true
	}
	for _, p := range npa.prefixes {
		if p.Bits() == 0 {
			npa.matchAll = true
		}
	}
	if npa.matchAll {
		npa.prefixes = nil
	}
	return npa, nil
}

// MatchAll reports whether every local address of the family accepts NodePorts.
func (n *NodePortAddresses) MatchAll() bool { return n.matchAll }

// Prefixes returns the configured prefixes of the family; nil when MatchAll.
func (n *NodePortAddresses) Prefixes() []netip.Prefix { return n.prefixes }

// Contains reports whether ip (of this family) accepts NodePort traffic.
func (n *NodePortAddresses) Contains(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || addrFamily(ip) != n.family {
		return false
	}
	if n.matchAll {
		return true
	}
	for _, p := range n.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ContainsIPv4Loopback reports whether NodePorts are reachable on
// 127.0.0.0/8, which needs route_localnet in iptables mode.
func (n *NodePortAddresses) ContainsIPv4Loopback() bool {
	if n.family != v1.IPv4Protocol {
		return false
	}
	if n.matchAll {
		return true
	}
	for _, p := range n.prefixes {
		if p.Contains(ipv4Loopback) || p.Addr().IsLoopback() {
			return true
		}
	}
	return false
}

// LocalAddresses returns the node's interface addresses of this family that
// accept NodePort traffic, sorted and without duplicates.
func (n *NodePortAddresses) LocalAddresses() ([]netip.Addr, error) {
	addrs, err := n.interfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	seen := make(map[netip.Addr]bool)
	var out []netip.Addr
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		default:
			continue
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		if n.Contains(addr) && !seen[addr] {
			seen[addr] = true
			out = append(out, addr)
		}
	}
	sortAddrs(out)
	return out, nil
}

// String is for logs.
func (n *NodePortAddresses) String() string {
	if n.matchAll {
		return fmt.Sprintf("%s:all", n.family)
	}
	return fmt.Sprintf("%s:%v", n.family, n.prefixes)
}

// addrFamily returns the IP family of a valid, unmapped address.
func addrFamily(ip netip.Addr) v1.IPFamily {
	if ip.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

func sortAddrs(addrs []netip.Addr) { slices.SortFunc(addrs, netip.Addr.Compare) }
