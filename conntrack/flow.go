package conntrack

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// IP protocol numbers as conntrack reports them.
const (
	protoTCP  uint8 = 6
	protoUDP  uint8 = 17
	protoSCTP uint8 = 132
)

// protoNumber maps a Service protocol to its IP protocol number; 0 for unknown.
func protoNumber(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolTCP:
		return protoTCP
	case v1.ProtocolUDP:
		return protoUDP
	case v1.ProtocolSCTP:
		return protoSCTP
	}
	return 0
}

func protoName(n uint8) string {
	switch n {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", n)
}

// Flow is one conntrack entry, reduced to what cleanup decides on. The
// original tuple is the packet as the client sent it (destination: the
// service address); the reply tuple is the answer the kernel expects, so after
// DNAT its source is the endpoint the flow was sent to.
type Flow struct {
	Protocol uint8
	OrigSrc  netip.AddrPort
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
	ReplyDst netip.AddrPort
	Zone     uint16
}

// Family is the flow's IP family, from its original source address.
func (f Flow) Family() v1.IPFamily {
	if f.OrigSrc.Addr().Is6() && !f.OrigSrc.Addr().Is4In6() {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

// String reads like conntrack -L: "udp 192.0.2.101:40000->198.51.100.10:53 reply 203.0.113.5:5353->192.0.2.101:40000".
func (f Flow) String() string {
	s := fmt.Sprintf("%s %s->%s reply %s->%s", protoName(f.Protocol), f.OrigSrc, f.OrigDst, f.ReplySrc, f.ReplyDst)
	if f.Zone != 0 {
		s += fmt.Sprintf(" zone %d", f.Zone)
	}
	return s
}

// Handle is the kernel's conntrack table for cleanup. Implementations:
// NetlinkHandle (the kernel) and Fake (in memory, keeps its flows).
type Handle interface {
	// List returns every flow of the family.
	List(family v1.IPFamily) ([]Flow, error)
	// Delete removes exactly these flows (flows already gone are not an
	// error) and returns how many it removed.
	Delete(family v1.IPFamily, flows []Flow) (int, error)
}

var (
	_ Handle = (*NetlinkHandle)(nil)
	_ Handle = (*Fake)(nil)
)
