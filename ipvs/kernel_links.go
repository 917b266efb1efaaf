package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// netlinkLinks is the real Links over rtnetlink.
type netlinkLinks struct {
	h *netlink.Handle
}

// NewLinks returns the real Links for the namespace at netnsPath ("" for the
// current one). Only NETLINK_ROUTE is opened: a handle with no families
// also opens XFRM, which fails where xfrm_user is not loaded.
func NewLinks(netnsPath string) (Links, error) {
	h, err := newNetlinkHandle(netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	return &netlinkLinks{h: h}, nil
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf)
}

func (l *netlinkLinks) EnsureDummy(name string) error {
	link, err := l.h.LinkByName(name)
	if isNotFound(err) {
		if err := l.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create dummy link %s: %w", name, err)
		}
		link, err = l.h.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if link.Type() != "dummy" {
		return fmt.Errorf("link %s exists with type %s, want dummy", name, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set link %s up: %w", name, err)
		}
	}
	return nil
}

func (l *netlinkLinks) DeleteLink(name string) error {
	link, err := l.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := l.h.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func nlFamily(f v1.IPFamily) int {
	if f == v1.IPv6Protocol {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func (l *netlinkLinks) ListAddresses(name string, family v1.IPFamily) ([]netip.Addr, error) {
	link, err := l.h.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", name, err)
	}
	addrs, err := l.h.AddrList(link, nlFamily(family))
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	return boundAddrs(toAddrs(addrs)), nil
}

// boundAddrs drops the fe80:: address the kernel gives an IPv6-enabled link
// that is up: we never bind it, and deleting it as a /128 fails, which made
// every IPv6 sync fail.
func boundAddrs(addrs []netip.Addr) []netip.Addr {
	out := addrs[:0]
	for _, a := range addrs {
		if !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

func toAddrs(addrs []netlink.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func hostAddr(addr netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}}
	if addr.Is6() {
		// No duplicate address detection: the address must be usable at once.
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func (l *netlinkLinks) AddAddress(name string, addr netip.Addr) error {
	link, err := l.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := l.h.AddrAdd(link, hostAddr(addr)); err != nil {
		return fmt.Errorf("add address %s to %s: %w", addr, name, err)
	}
	return nil
}

func (l *netlinkLinks) DeleteAddress(name string, addr netip.Addr) error {
	link, err := l.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := l.h.AddrDel(link, hostAddr(addr)); err != nil {
		return fmt.Errorf("delete address %s from %s: %w", addr, name, err)
	}
	return nil
}

func (l *netlinkLinks) LocalAddresses(except string, family v1.IPFamily) ([]netip.Addr, error) {
	skip := -1
	if link, err := l.h.LinkByName(except); err == nil {
		skip = link.Attrs().Index
	} else if !isNotFound(err) {
		return nil, fmt.Errorf("find link %s: %w", except, err)
	}
	addrs, err := l.h.AddrList(nil, nlFamily(family))
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	kept := addrs[:0]
	for _, a := range addrs {
		if a.LinkIndex != skip {
			kept = append(kept, a)
		}
	}
	return toAddrs(kept), nil
}
