package ipvs

import (
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/metrics"
)

// CallCounts counts kernel calls: reads, writes of IPVS objects, ipset
// members and addresses, and ensures (idempotent calls that leave the
// kernel unchanged when it already matches: the dummy link, the iptables
// jumps, and the iptables restore of full resyncs).
type CallCounts struct {
	Reads, Writes, Ensures, Errors int
}

// Total is every call made.
func (c CallCounts) Total() int { return c.Reads + c.Writes + c.Ensures }

type callKind int

const (
	read callKind = iota
	write
	ensure
)

// counter records every kernel call in the metrics and in its counts.
type counter struct {
	family string
	counts CallCounts
}

func (c *counter) note(op string, kind callKind, err error) error {
	metrics.IPVSKernelCalls.WithLabelValues(c.family, op).Inc()
	switch kind {
	case read:
		c.counts.Reads++
	case write:
		c.counts.Writes++
	default:
		c.counts.Ensures++
	}
	if err != nil {
		c.counts.Errors++
		metrics.IPVSKernelErrors.WithLabelValues(c.family, op).Inc()
	}
	return err
}

// take returns the counts since the last take.
func (c *counter) take() CallCounts {
	out := c.counts
	c.counts = CallCounts{}
	return out
}

// countedKernel wraps every layer of a Kernel with one counter.
func countedKernel(k Kernel, c *counter) Kernel {
	out := k
	out.IPVS = &countedIPVS{k.IPVS, c}
	out.Links = &countedLinks{k.Links, c}
	out.IPSets = &countedIPSets{k.IPSets, c}
	if k.IPTables != nil {
		out.IPTables = &countedIPTables{k.IPTables, c}
	}
	return out
}

type countedIPVS struct {
	k IPVSKernel
	c *counter
}

func (w *countedIPVS) ListVirtualServers() ([]VirtualServer, error) {
	v, err := w.k.ListVirtualServers()
	return v, w.c.note("list_virtual_servers", read, err)
}

func (w *countedIPVS) ListRealServers(vs VSKey) ([]RealServer, error) {
	v, err := w.k.ListRealServers(vs)
	return v, w.c.note("list_real_servers", read, err)
}

func (w *countedIPVS) AddVirtualServer(vs VirtualServer) error {
	return w.c.note("add_virtual_server", write, w.k.AddVirtualServer(vs))
}

func (w *countedIPVS) UpdateVirtualServer(vs VirtualServer) error {
	return w.c.note("update_virtual_server", write, w.k.UpdateVirtualServer(vs))
}

func (w *countedIPVS) DeleteVirtualServer(vs VSKey) error {
	return w.c.note("delete_virtual_server", write, w.k.DeleteVirtualServer(vs))
}

func (w *countedIPVS) AddRealServer(vs VSKey, rs RealServer) error {
	return w.c.note("add_real_server", write, w.k.AddRealServer(vs, rs))
}

func (w *countedIPVS) UpdateRealServer(vs VSKey, rs RealServer) error {
	return w.c.note("update_real_server", write, w.k.UpdateRealServer(vs, rs))
}

func (w *countedIPVS) DeleteRealServer(vs VSKey, rs netip.AddrPort) error {
	return w.c.note("delete_real_server", write, w.k.DeleteRealServer(vs, rs))
}

func (w *countedIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	return w.c.note("set_timeouts", write, w.k.SetTimeouts(tcp, tcpFin, udp))
}

type countedLinks struct {
	k Links
	c *counter
}

func (w *countedLinks) EnsureDummy(name string) error {
	return w.c.note("ensure_dummy", ensure, w.k.EnsureDummy(name))
}

func (w *countedLinks) DeleteLink(name string) error {
	return w.c.note("delete_link", write, w.k.DeleteLink(name))
}

func (w *countedLinks) ListAddresses(link string, family v1.IPFamily) ([]netip.Addr, error) {
	v, err := w.k.ListAddresses(link, family)
	return v, w.c.note("list_addresses", read, err)
}

func (w *countedLinks) AddAddress(link string, addr netip.Addr) error {
	return w.c.note("add_address", write, w.k.AddAddress(link, addr))
}

func (w *countedLinks) DeleteAddress(link string, addr netip.Addr) error {
	return w.c.note("delete_address", write, w.k.DeleteAddress(link, addr))
}

func (w *countedLinks) LocalAddresses(except string, family v1.IPFamily) ([]netip.Addr, error) {
	v, err := w.k.LocalAddresses(except, family)
	return v, w.c.note("local_addresses", read, err)
}

type countedIPSets struct {
	k IPSets
	c *counter
}

func (w *countedIPSets) List() (map[string]*IPSet, error) {
	v, err := w.k.List()
	return v, w.c.note("ipset_list", read, err)
}

func (w *countedIPSets) Apply(b *IPSetBatch) error {
	return w.c.note("ipset_apply", write, w.k.Apply(b))
}

type countedIPTables struct {
	iptables.Kernel
	c *counter
}

func (w *countedIPTables) Restore(data []byte) error {
	return w.c.note("iptables_restore", ensure, w.Kernel.Restore(data))
}

func (w *countedIPTables) EnsureRule(pos iptables.Position, table iptables.Table, chain string, args ...string) error {
	return w.c.note("iptables_ensure_rule", ensure, w.Kernel.EnsureRule(pos, table, chain, args...))
}

func (w *countedIPTables) DeleteRule(table iptables.Table, chain string, args ...string) error {
	return w.c.note("iptables_delete_rule", write, w.Kernel.DeleteRule(table, chain, args...))
}

func (w *countedIPTables) FlushChain(table iptables.Table, chain string) error {
	return w.c.note("iptables_flush_chain", write, w.Kernel.FlushChain(table, chain))
}

func (w *countedIPTables) DeleteChain(table iptables.Table, chain string) error {
	return w.c.note("iptables_delete_chain", write, w.Kernel.DeleteChain(table, chain))
}

func (w *countedIPTables) ChainExists(table iptables.Table, chain string) (bool, error) {
	v, err := w.Kernel.ChainExists(table, chain)
	return v, w.c.note("iptables_chain_exists", read, err)
}
