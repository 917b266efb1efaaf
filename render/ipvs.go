package render

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/trace"
)

// nodeLink is the interface the rendered node's IPs are on.
const nodeLink = "eth0"

// IPVSOptions are the IPVS data plane options svcproxy's defaults give
// for cfg.
func IPVSOptions(cfg Config) (ipvs.Options, error) {
	opts := ipvs.DefaultOptions()
	if cfg.IPVSScheduler != "" {
		opts.Scheduler = cfg.IPVSScheduler
	}
	opts.MasqueradeAll = cfg.MasqueradeAll
	opts.MasqueradeRandomFully = true
	d, err := cfg.LocalDetector()
	if err != nil {
		return opts, err
	}
	opts.LocalDetector = d
	return opts, nil
}

// IPVS runs the IPVS data plane's first sync of snap against stateful
// fake kernels (the node's IPs on eth0, loopback on lo) and returns what
// they hold afterwards.
func IPVS(snap *proxier.Snapshot, cfg Config) (*trace.IPVSState, error) {
	opts, err := IPVSOptions(cfg)
	if err != nil {
		return nil, err
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if snap.Family == v1.IPv6Protocol {
		lo = netip.IPv6Loopback()
	}
	links := ipvs.NewFakeLinks(map[string][]netip.Addr{nodeLink: snap.Node.IPs, "lo": {lo}})
	k := ipvs.Kernel{
		Family:   snap.Family,
		IPVS:     ipvs.NewFakeIPVS(),
		Links:    links,
		IPSets:   ipvs.NewFakeIPSets(),
		IPTables: iptables.NewFake(snap.Family),
	}
	if _, err := ipvs.NewProxier(k, opts, nil).Sync(snap); err != nil {
		return nil, fmt.Errorf("sync IPVS %s: %w", snap.Family, err)
	}
	st := &trace.IPVSState{
		Family:         snap.Family,
		IPSets:         map[string][]string{},
		DummyAddresses: links.Addresses(ipvs.DummyDevice),
		IPTables:       string(k.IPTables.(*iptables.Fake).SaveAll()),
	}
	st.LocalAddresses, _ = links.LocalAddresses(ipvs.DummyDevice, snap.Family)
	for vs, rss := range k.IPVS.(*ipvs.FakeIPVS).State() {
		st.VirtualServers = append(st.VirtualServers, trace.NewIPVSVirtualServer(vs, rss))
	}
	slices.SortFunc(st.VirtualServers, compareVS)
	sets := k.IPSets.(*ipvs.FakeIPSets)
	for _, name := range sets.Names() {
		st.IPSets[name] = sets.Members(name)
	}
	return st, nil
}

func compareVS(a, b trace.IPVSVirtualServer) int {
	if c := a.Address.Compare(b.Address); c != 0 {
		return c
	}
	if c := strings.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// FormatIPVS prints st in four sections: the IPVS table as `ipvsadm -Ln`
// lays it out, the kube-ipvs0 addresses, the ipsets with their members,
// and the iptables rules (iptables-save text).
func FormatIPVS(st *trace.IPVSState) []byte {
	var b bytes.Buffer
	b.WriteString("# IPVS virtual servers (ipvsadm -Ln)\n")
	b.WriteString("Prot LocalAddress:Port Scheduler Flags\n")
	b.WriteString("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
	for _, vs := range st.VirtualServers {
		fmt.Fprintf(&b, "%-4s %s %s", vs.Protocol, netip.AddrPortFrom(vs.Address, vs.Port), vs.Scheduler)
		if vs.Persistent {
			fmt.Fprintf(&b, " persistent %d", vs.Timeout)
		}
		b.WriteByte('\n')
		for _, rs := range vs.RealServers {
			fmt.Fprintf(&b, "  -> %-28s Masq    %-6d 0          0\n", rs.Address, rs.Weight)
		}
	}
	fmt.Fprintf(&b, "\n# %s addresses\n", ipvs.DummyDevice)
	for _, a := range st.DummyAddresses {
		fmt.Fprintf(&b, "%s\n", a)
	}
	b.WriteString("\n# ipsets: name, then its members as ipset save prints them\n")
	names := make([]string, 0, len(st.IPSets))
	for n := range st.IPSets {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s\n", n)
		for _, m := range st.IPSets[n] {
			fmt.Fprintf(&b, "  %s\n", m)
		}
	}
	b.WriteString("\n# iptables (iptables-save)\n")
	b.WriteString(st.IPTables)
	return b.Bytes()
}
