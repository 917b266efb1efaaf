package bed

import (
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// setUpWithAddrs adds the CIDR addresses to link and sets it up. IPv6 addresses skip
// duplicate address detection so they are usable at once.
func setUpWithAddrs(h *netlink.Handle, link netlink.Link, addrs []string) error {
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("parse address %s: %w", a, err)
		}
		if addr.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, link.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	return nil
}

// addRoute routes cidr out of link, via gw when set, else directly on the link.
func addRoute(h *netlink.Handle, link netlink.Link, cidr, gw string) error {
	_, dst, err := net.ParseCIDR(cidr)
	if err != nil {
		return fmt.Errorf("parse route %s: %w", cidr, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst}
	if gw != "" {
		r.Gw = net.ParseIP(gw)
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %q dev %s: %w", cidr, gw, link.Attrs().Name, err)
	}
	return nil
}

// waitOperUp waits until the kernel reports link name operationally up. Until then (the
// kernel's link watcher can lag up to a second) a fresh veth has no queueing discipline
// attached and silently drops what is sent through it.
func waitOperUp(h *netlink.Handle, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after 5s (operstate %s)", name, l.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nthIP returns the n-th address of cidr (0 is the network address).
func nthIP(cidr *net.IPNet, n int) net.IP {
	base := new(big.Int).SetBytes(cidr.IP)
	ip := new(big.Int).Add(base, big.NewInt(int64(n))).Bytes()
	out := make(net.IP, len(cidr.IP))
	copy(out[len(out)-len(ip):], ip)
	if len(out) == net.IPv6len {
		return out
	}
	return out.To4()
}
