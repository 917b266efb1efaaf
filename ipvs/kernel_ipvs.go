package ipvs

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// ProbeIPVS reports ErrNoIPVS when the kernel of the namespace at
// netnsPath ("" for the current one) has no IPVS generic netlink family.
// moby/ipvs does not notice by itself: on such a kernel its calls succeed
// and do nothing.
func ProbeIPVS(netnsPath string) error {
	h, err := newNetlinkHandle(netnsPath, unix.NETLINK_GENERIC)
	if err != nil {
		return fmt.Errorf("probe IPVS: %w", err)
	}
	defer h.Close()
	if _, err := h.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("%w: generic netlink family IPVS: %v", ErrNoIPVS, err)
	}
	return nil
}

func newNetlinkHandle(netnsPath string, family int) (*netlink.Handle, error) {
	if netnsPath == "" {
		return netlink.NewHandle(family)
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns, family)
}

// netlinkIPVS is the real IPVSKernel over moby/ipvs. Not safe for
// concurrent use (the handle's sequence numbers), like the data plane.
type netlinkIPVS struct {
	h *mobyipvs.Handle
}

// NewIPVSKernel returns the real IPVS kernel layer for the namespace at
// netnsPath ("" for the current one). It fails with ErrNoIPVS when the
// kernel lacks IPVS.
func NewIPVSKernel(netnsPath string) (IPVSKernel, error) {
	if err := ProbeIPVS(netnsPath); err != nil {
		return nil, err
	}
	h, err := mobyipvs.New(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink socket: %w", err)
	}
	return &netlinkIPVS{h: h}, nil
}

var protoNumbers = map[v1.Protocol]uint16{v1.ProtocolTCP: unix.IPPROTO_TCP, v1.ProtocolUDP: unix.IPPROTO_UDP, v1.ProtocolSCTP: unix.IPPROTO_SCTP}

func toService(vs VirtualServer) *mobyipvs.Service {
	s := &mobyipvs.Service{
		Address: net.IP(vs.Address.AsSlice()), Protocol: protoNumbers[vs.Protocol], Port: vs.Port,
		SchedName: vs.Scheduler, Flags: vs.Flags, Timeout: vs.Timeout,
		AddressFamily: unix.AF_INET, Netmask: 0xffffffff,
	}
	if vs.Address.Is6() {
		s.AddressFamily, s.Netmask = unix.AF_INET6, 128
	}
	return s
}

func toDestination(rs RealServer) *mobyipvs.Destination {
	d := &mobyipvs.Destination{
		Address: net.IP(rs.Addr.Addr().AsSlice()), Port: rs.Addr.Port(), Weight: rs.Weight,
		ConnectionFlags: mobyipvs.ConnFwdMasq, AddressFamily: unix.AF_INET,
	}
	if rs.Addr.Addr().Is6() {
		d.AddressFamily = unix.AF_INET6
	}
	return d
}

func (k *netlinkIPVS) ListVirtualServers() ([]VirtualServer, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		addr, ok := netip.AddrFromSlice(s.Address)
		if s.FWMark != 0 || !ok {
			continue // fwmark services are not ours
		}
		var proto v1.Protocol
		for p, n := range protoNumbers {
			if n == s.Protocol {
				proto = p
			}
		}
		if proto == "" {
			continue
		}
		out = append(out, VirtualServer{
			VSKey:     VSKey{Address: addr.Unmap(), Protocol: proto, Port: s.Port},
			Scheduler: s.SchedName, Flags: s.Flags, Timeout: s.Timeout,
		})
	}
	return out, nil
}

func (k *netlinkIPVS) ListRealServers(vs VSKey) ([]RealServer, error) {
	dsts, err := k.h.GetDestinations(toService(VirtualServer{VSKey: vs}))
	if err != nil {
		return nil, fmt.Errorf("list real servers of %s: %w", vs, err)
	}
	out := make([]RealServer, 0, len(dsts))
	for _, d := range dsts {
		addr, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			continue
		}
		out = append(out, RealServer{
			Addr: netip.AddrPortFrom(addr.Unmap(), d.Port), Weight: d.Weight,
			ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections,
		})
	}
	return out, nil
}

func (k *netlinkIPVS) AddVirtualServer(vs VirtualServer) error {
	if err := k.h.NewService(toService(vs)); err != nil {
		return fmt.Errorf("add virtual server %s (scheduler %s): %w", vs.VSKey, vs.Scheduler, err)
	}
	return nil
}

func (k *netlinkIPVS) UpdateVirtualServer(vs VirtualServer) error {
	if err := k.h.UpdateService(toService(vs)); err != nil {
		return fmt.Errorf("update virtual server %s: %w", vs.VSKey, err)
	}
	return nil
}

func (k *netlinkIPVS) DeleteVirtualServer(vs VSKey) error {
	if err := k.h.DelService(toService(VirtualServer{VSKey: vs})); err != nil {
		return fmt.Errorf("delete virtual server %s: %w", vs, err)
	}
	return nil
}

func (k *netlinkIPVS) AddRealServer(vs VSKey, rs RealServer) error {
	if err := k.h.NewDestination(toService(VirtualServer{VSKey: vs}), toDestination(rs)); err != nil {
		return fmt.Errorf("add real server %s to %s: %w", rs.Addr, vs, err)
	}
	return nil
}

func (k *netlinkIPVS) UpdateRealServer(vs VSKey, rs RealServer) error {
	if err := k.h.UpdateDestination(toService(VirtualServer{VSKey: vs}), toDestination(rs)); err != nil {
		return fmt.Errorf("update real server %s of %s: %w", rs.Addr, vs, err)
	}
	return nil
}

func (k *netlinkIPVS) DeleteRealServer(vs VSKey, rs netip.AddrPort) error {
	if err := k.h.DelDestination(toService(VirtualServer{VSKey: vs}), toDestination(RealServer{Addr: rs})); err != nil {
		return fmt.Errorf("delete real server %s of %s: %w", rs, vs, err)
	}
	return nil
}

func (k *netlinkIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	if err := k.h.SetConfig(&mobyipvs.Config{TimeoutTCP: tcp, TimeoutTCPFin: tcpFin, TimeoutUDP: udp}); err != nil {
		return fmt.Errorf("set IPVS timeouts: %w", err)
	}
	return nil
}
