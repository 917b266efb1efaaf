package conntrack

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ctnetlink attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaZone       = 18

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3
)

// We parse ctnetlink messages ourselves because the netlink library's parser
// only reads ports of TCP and UDP flows, and SCTP services need theirs.

type attr struct {
	typ uint16
	val []byte
}

// parseAttrs splits a netlink attribute stream, bounds-checked.
func parseAttrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil, fmt.Errorf("malformed netlink attribute %d: length %d, %d bytes left", typ, l, len(b))
		}
		out = append(out, attr{typ: typ, val: b[unix.SizeofRtAttr:l]})
		b = b[min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b)):]
	}
	return out, nil
}

// parseFlow decodes the attributes of one IPCTNL_MSG_CT_NEW message (after
// the nfgenmsg header).
func parseFlow(b []byte) (Flow, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return Flow{}, err
	}
	var f Flow
	for _, a := range attrs {
		switch a.typ {
		case ctaTupleOrig:
			f.Protocol, f.OrigSrc, f.OrigDst, err = parseTuple(a.val)
		case ctaTupleReply:
			_, f.ReplySrc, f.ReplyDst, err = parseTuple(a.val)
		case ctaZone:
			if len(a.val) >= 2 {
				f.Zone = binary.BigEndian.Uint16(a.val)
			}
		}
		if err != nil {
			return Flow{}, fmt.Errorf("conntrack tuple: %w", err)
		}
	}
	return f, nil
}

func parseTuple(b []byte) (proto uint8, src, dst netip.AddrPort, err error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return 0, src, dst, err
	}
	var srcIP, dstIP netip.Addr
	var sport, dport uint16
	for _, a := range attrs {
		switch a.typ {
		case ctaTupleIP:
			ips, err := parseAttrs(a.val)
			if err != nil {
				return 0, src, dst, err
			}
			for _, ip := range ips {
				addr, _ := netip.AddrFromSlice(ip.val)
				switch ip.typ {
				case ctaIPv4Src, ctaIPv6Src:
					srcIP = addr
				case ctaIPv4Dst, ctaIPv6Dst:
					dstIP = addr
				}
			}
		case ctaTupleProto:
			ps, err := parseAttrs(a.val)
			if err != nil {
				return 0, src, dst, err
			}
			for _, p := range ps {
				switch {
				case p.typ == ctaProtoNum && len(p.val) >= 1:
					proto = p.val[0]
				case p.typ == ctaProtoSrcPort && len(p.val) >= 2:
					sport = binary.BigEndian.Uint16(p.val)
				case p.typ == ctaProtoDstPort && len(p.val) >= 2:
					dport = binary.BigEndian.Uint16(p.val)
				}
			}
		}
	}
	return proto, netip.AddrPortFrom(srcIP, sport), netip.AddrPortFrom(dstIP, dport), nil
}

// tupleAttr encodes a tuple, as a delete request names its flow.
func tupleAttr(typ int, proto uint8, src, dst netip.AddrPort) *nl.RtAttr {
	srcType, dstType := ctaIPv4Src, ctaIPv4Dst
	if src.Addr().Is6() {
		srcType, dstType = ctaIPv6Src, ctaIPv6Dst
	}
	t := nl.NewRtAttr(unix.NLA_F_NESTED|typ, nil)
	ip := t.AddRtAttr(unix.NLA_F_NESTED|ctaTupleIP, nil)
	ip.AddChild(nl.NewRtAttr(srcType, src.Addr().AsSlice()))
	ip.AddChild(nl.NewRtAttr(dstType, dst.Addr().AsSlice()))
	p := t.AddRtAttr(unix.NLA_F_NESTED|ctaTupleProto, nil)
	p.AddChild(nl.NewRtAttr(ctaProtoNum, []byte{proto}))
	p.AddChild(nl.NewRtAttr(ctaProtoSrcPort, nl.BEUint16Attr(src.Port())))
	p.AddChild(nl.NewRtAttr(ctaProtoDstPort, nl.BEUint16Attr(dst.Port())))
	return t
}

// deleteAttrs are the attributes of a request deleting exactly f.
func deleteAttrs(f Flow) []nl.NetlinkRequestData {
	out := []nl.NetlinkRequestData{tupleAttr(ctaTupleOrig, f.Protocol, f.OrigSrc, f.OrigDst)}
	if f.Zone != 0 {
		out = append(out, nl.NewRtAttr(ctaZone, nl.BEUint16Attr(f.Zone)))
	}
	return out
}
