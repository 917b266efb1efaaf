package trace

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
)

// This file reads the live state of the current network namespace. It
// only reads: iptables-save, netlink address and IPVS dumps, ipset save.

// LiveLocalAddresses returns every address of family on the namespace's
// interfaces (kube-ipvs0 included): what `--dst-type LOCAL` matches.
func LiveLocalAddresses(family v1.IPFamily) ([]netip.Addr, error) {
	fam := netlink.FAMILY_V4
	if family == v1.IPv6Protocol {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, fam)
	if err != nil {
		return nil, fmt.Errorf("list local addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// LiveIPTables returns iptables-save text of the filter, nat and mangle
// tables of family, from the backend (legacy or nft) the node uses.
func LiveIPTables(family v1.IPFamily) ([]byte, error) {
	backend, err := iptables.DetectBackend(family)
	if err != nil {
		return nil, fmt.Errorf("detect iptables backend: %w", err)
	}
	k, err := iptables.NewKernel(family, backend)
	if err != nil {
		return nil, fmt.Errorf("iptables %s: %w", family, err)
	}
	var out []byte
	for _, t := range []iptables.Table{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle} {
		data, err := k.Save(t)
		if err != nil {
			if t == iptables.TableMangle {
				continue // optional: the tracer treats a missing table as empty
			}
			return nil, fmt.Errorf("read iptables: %w", err)
		}
		out = append(out, data...)
	}
	return out, nil
}

// LiveIPVSVirtualServers reports how many IPVS virtual servers of family
// the kernel holds; ErrIPVSUnavailable when it has no IPVS.
func LiveIPVSVirtualServers(family v1.IPFamily) (int, error) {
	k, err := ipvs.NewIPVSKernel("")
	if err != nil {
		return 0, ipvsUnavailable(err)
	}
	vss, err := k.ListVirtualServers()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, vs := range vss {
		if vs.Address.Is4() == (family == v1.IPv4Protocol) {
			n++
		}
	}
	return n, nil
}

// LiveIPVS reads the IPVS table, ipsets, addresses and iptables rules of
// family.
func LiveIPVS(family v1.IPFamily) (*IPVSState, error) {
	k, err := ipvs.NewIPVSKernel("")
	if err != nil {
		return nil, ipvsUnavailable(err)
	}
	sets, err := ipvs.NewIPSets("")
	if err != nil {
		return nil, ipvsUnavailable(err)
	}
	links, err := ipvs.NewLinks("")
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	st := &IPVSState{Family: family, IPSets: map[string][]string{}}
	vss, err := k.ListVirtualServers()
	if err != nil {
		return nil, err
	}
	for _, vs := range vss {
		if vs.Address.Is4() != (family == v1.IPv4Protocol) {
			continue
		}
		rss, err := k.ListRealServers(vs.VSKey)
		if err != nil {
			return nil, err
		}
		st.VirtualServers = append(st.VirtualServers, NewIPVSVirtualServer(vs, rss))
	}
	all, err := sets.List()
	if err != nil {
		return nil, fmt.Errorf("read ipsets: %w", err)
	}
	for name, s := range all {
		members := s.Members.UnsortedList()
		slices.Sort(members)
		st.IPSets[name] = members
	}
	if st.DummyAddresses, err = links.ListAddresses(ipvs.DummyDevice, family); err != nil {
		return nil, fmt.Errorf("read %s addresses: %w", ipvs.DummyDevice, err)
	}
	if st.LocalAddresses, err = links.LocalAddresses(ipvs.DummyDevice, family); err != nil {
		return nil, fmt.Errorf("read local addresses: %w", err)
	}
	ipt, err := LiveIPTables(family)
	if err != nil {
		return nil, err
	}
	st.IPTables = string(ipt)
	return st, nil
}

func ipvsUnavailable(err error) error {
	return fmt.Errorf("%w: %v", ErrIPVSUnavailable, err)
}
