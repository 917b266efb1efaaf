package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
)

// Options configure the iptables data plane of one IP family.
type Options struct {
	// MasqueradeBit is the fwmark bit marking packets for SNAT
	// (--iptables-masquerade-bit; kube-proxy's default is 14 → 0x4000).
	MasqueradeBit int
	// MasqueradeAll marks all ClusterIP traffic for SNAT (--masquerade-all).
	MasqueradeAll bool
	// MasqueradeRandomFully adds --random-fully to MASQUERADE; set it when
	// the iptables binary and kernel support it.
	MasqueradeRandomFully bool
	// LocalDetector tells pod traffic apart (--detect-local-mode); the zero
	// value detects nothing.
	LocalDetector LocalDetector
	// LocalhostNodePorts serves NodePorts on 127.0.0.0/8 (IPv4 only; needs
	// route_localnet=1, set elsewhere). Ignored when NodePortAddresses
	// excludes loopback.
	LocalhostNodePorts bool
	// NodePortAddresses selects the addresses serving NodePorts; nil means all.
	NodePortAddresses *proxier.NodePortAddresses
	// ConntrackTCPBeLiberal is nf_conntrack_tcp_be_liberal != 0; then
	// INVALID packets are not dropped in KUBE-FORWARD.
	ConntrackTCPBeLiberal bool
	// NFAcctCTStateInvalid and NFAcctLocalhostNodePorts say the nfacct
	// counters of those names exist, so rules may count into them.
	NFAcctCTStateInvalid     bool
	NFAcctLocalhostNodePorts bool
	// BatchServices bounds how many services' chains go into one COMMIT
	// block on large syncs; all blocks go to the kernel in one restore call,
	// dispatch chains last. Negative means one block whatever the size. 0
	// picks by backend: DefaultBatchServices for nft (whose restore cost
	// grows far faster than linearly within one transaction: 1000 services
	// in one COMMIT cost 10-16 CPU-seconds here, in 100-service blocks 0.8)
	// and one block for legacy (which rewrites the whole table on every
	// commit) or an unknown kernel.
	BatchServices int
	// FullSyncPeriod forces a full sync when the last one is older; 0 means
	// DefaultFullSyncPeriod.
	FullSyncPeriod time.Duration
	// CanaryCheckPeriod: partial syncs check the KUBE-PROXY-CANARY chains
	// when the last check is older than this (0: every partial sync;
	// negative: never). Each check runs iptables three times, which is slow
	// on large nft rulesets; kube-proxy checks every syncPeriod. Callers that
	// want detection between syncs poll CanaryMissing and ForceFullSync.
	CanaryCheckPeriod time.Duration
	// Clock is for tests; nil means the real clock.
	Clock clock.PassiveClock
}

const (
	DefaultBatchServices     = 100
	DefaultFullSyncPeriod    = time.Hour
	DefaultCanaryCheckPeriod = 30 * time.Second
)

// DefaultOptions are kube-proxy's defaults (masquerade bit 14, localhost
// NodePorts), batching chosen by backend, and canary checks at most every
// 30s (kube-proxy's syncPeriod).
func DefaultOptions() Options {
	return Options{
		MasqueradeBit:      14,
		LocalhostNodePorts: true,
		FullSyncPeriod:     DefaultFullSyncPeriod,
		CanaryCheckPeriod:  DefaultCanaryCheckPeriod,
	}
}

// Proxier is the iptables data plane of one IP family; it implements
// proxier.DataPlane.
type Proxier struct {
	mu      sync.Mutex
	kernel  Kernel
	family  v1.IPFamily
	opts    Options
	clock   clock.PassiveClock
	builder *Builder

	needFull        bool
	needFullWhy     string
	lastFull        time.Time
	lastCanaryCheck time.Time
	lastNode        proxier.Node
	restoreBuf      []byte
	// servicesRules is how many rules the last sync wrote to nat
	// KUBE-SERVICES; a different count in the kernel means another program
	// changed it.
	servicesRules int
}

var _ proxier.DataPlane = (*Proxier)(nil)

// NewProxier returns the data plane for kernel's family. The first Sync is full.
func NewProxier(kernel Kernel, opts Options) *Proxier {
	if opts.BatchServices == 0 {
		opts.BatchServices = -1
		if KernelBackend(kernel) == NFT {
			opts.BatchServices = DefaultBatchServices
		}
	}
	if opts.FullSyncPeriod <= 0 {
		opts.FullSyncPeriod = DefaultFullSyncPeriod
	}
	clk := opts.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	family := kernel.Family()
	return &Proxier{
		kernel: kernel, family: family, opts: opts, clock: clk,
		builder:  NewBuilder(family, opts),
		needFull: true, needFullWhy: "startup",
	}
}

// ForceFullSync makes the next Sync full (e.g. after CanaryMissing).
func (p *Proxier) ForceFullSync(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setNeedFull(reason)
}

func (p *Proxier) setNeedFull(reason string) {
	if !p.needFull {
		p.needFull, p.needFullWhy = true, reason
	}
}

// Verify implements proxier.Verifier: it reports whether the kernel lost
// rules of the last sync (a canary chain gone, or nat KUBE-SERVICES changed
// by another program, e.g. `iptables -t nat -F KUBE-SERVICES`), and if so
// makes the next sync full. It costs four iptables calls, no table dump.
func (p *Proxier) Verify() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.needFull {
		return true, nil
	}
	missing, _, err := p.checkCanaries()
	if err != nil {
		return false, err
	}
	if missing {
		klog.InfoS("Canary chain missing, iptables was flushed; resyncing", "ipFamily", p.family)
		p.setNeedFull("canary chain missing")
		return true, nil
	}
	n, err := p.kernel.CountRules(TableNAT, chainServices)
	if err != nil {
		return false, err
	}
	if n != p.servicesRules {
		klog.InfoS("KUBE-SERVICES was changed by another program; resyncing", "ipFamily", p.family, "rules", n, "want", p.servicesRules)
		p.setNeedFull("KUBE-SERVICES changed outside svcproxy")
		return true, nil
	}
	return false, nil
}

// lastBlockCount counts lines starting with prefix in the last block of data
// that starts with header (every sync rewrites the dispatch chains there).
func lastBlockCount(data []byte, header, prefix string) int {
	i := bytes.LastIndex(data, []byte(header))
	if i < 0 {
		return 0
	}
	block := data[i:]
	if end := bytes.Index(block, []byte("COMMIT\n")); end >= 0 {
		block = block[:end]
	}
	return bytes.Count(block, []byte("\n"+prefix))
}

// CanaryMissing reports whether a KUBE-PROXY-CANARY chain (mangle, nat or
// filter) has gone, i.e. something flushed iptables and a full sync is due.
func (p *Proxier) CanaryMissing() (bool, error) {
	missing, _, err := p.checkCanaries()
	return missing, err
}

func (p *Proxier) checkCanaries() (missing bool, calls int, err error) {
	for _, t := range []Table{TableMangle, TableNAT, TableFilter} {
		calls++
		ok, err := p.kernel.ChainExists(t, ChainCanary)
		if err != nil {
			return false, calls, fmt.Errorf("check canary chain in %s: %w", t, err)
		}
		if !ok {
			return true, calls, nil
		}
	}
	return false, calls, nil
}

// Sync programs snap. See proxier.DataPlane.
func (p *Proxier) Sync(snap *proxier.Snapshot) (proxier.SyncResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	res := proxier.SyncResult{Rules: map[string]int{}, NoLocalEndpoints: map[string]int{}}
	if snap.Family != p.family {
		return res, fmt.Errorf("snapshot of family %s given to the %s iptables data plane", snap.Family, p.family)
	}
	full, why := p.decideFull(snap, &res)
	res.Full = full
	if full {
		klog.V(2).InfoS("Full iptables sync", "ipFamily", p.family, "reason", why)
		if err := p.ensureTopLevel(&res); err != nil {
			p.setNeedFull("failed to ensure top-level chains")
			return res, err
		}
	}

	in := BuildInput{Full: full}
	if full {
		in.ExistingChains = p.existingServiceChains(&res)
	}
	if npa := p.opts.NodePortAddresses; npa != nil && !npa.MatchAll() {
		ips, err := npa.LocalAddresses()
		if err != nil {
			klog.ErrorS(err, "Failed to list node addresses for NodePorts; NodePorts may not work", "ipFamily", p.family, "nodePortAddresses", npa)
		}
		in.NodePortIPs = ips
	}
	rs := p.builder.Build(snap, in)
	res.Full = rs.Full // the builder rebuilds all when Changed does not add up

	// One restore call: its COMMIT blocks apply in order, so a failure in a
	// later block leaves the old dispatch chains (always last) in place.
	data := p.restoreBuf[:0]
	if rs.Changes() {
		for block := range rs.Inputs(p.opts.BatchServices) {
			data = append(data, block...)
		}
		p.restoreBuf = data
		res.KernelCalls++
		res.Bytes += len(data)
		if err := p.kernel.Restore(data); err != nil {
			p.restoreFailed(err, data, rs.Full)
			return res, fmt.Errorf("restore %s iptables rules (%d blocks): %w", p.family, rs.InputCount(p.opts.BatchServices), err)
		}
	}
	p.builder.Commit()
	p.needFull, p.needFullWhy = false, ""
	if rs.DispatchWritten() {
		p.servicesRules = lastBlockCount(data, "*nat\n", "-A "+chainServices+" ")
	}
	if rs.Full {
		p.lastFull = p.clock.Now()
	}
	p.lastNode = snap.Node

	if rs.Changes() {
		res.Rules["nat"] = rs.NATRules()
		res.Rules["filter"] = rs.FilterRules()
	}
	maps.Copy(res.NoLocalEndpoints, rs.NoLocalEndpoints)
	fam := string(p.family)
	metrics.IPTablesRulesTotal.WithLabelValues(fam, "nat").Set(float64(rs.NATRulesTotal()))
	metrics.IPTablesRulesTotal.WithLabelValues(fam, "filter").Set(float64(rs.FilterRules()))
	// The last-sync gauges describe the last restore: a sync that needed none
	// leaves them.
	if rs.Changes() {
		metrics.IPTablesRulesLastSync.WithLabelValues(fam, "nat").Set(float64(res.Rules["nat"]))
		metrics.IPTablesRulesLastSync.WithLabelValues(fam, "filter").Set(float64(res.Rules["filter"]))
		metrics.SyncRestoreBytes.WithLabelValues(fam).Set(float64(res.Bytes))
	}
	klog.V(2).InfoS("Synced iptables rules", "ipFamily", p.family, "full", rs.Full,
		"services", len(snap.Services), "servicesWritten", rs.ServicesWritten(), "staleChains", len(rs.Stale),
		"natRules", res.Rules["nat"], "filterRules", res.Rules["filter"], "bytes", res.Bytes, "commitBlocks", rs.InputCount(p.opts.BatchServices))
	return res, nil
}

// decideFull says whether this sync must be full, and why.
func (p *Proxier) decideFull(snap *proxier.Snapshot, res *proxier.SyncResult) (bool, string) {
	now := p.clock.Now()
	switch {
	case p.needFull:
		return true, p.needFullWhy
	case now.Sub(p.lastFull) > p.opts.FullSyncPeriod:
		return true, "full sync period elapsed"
	case !sameNode(p.lastNode, snap.Node):
		// Topology hints and the LB firewall's node IP depend on the Node.
		return true, "node changed"
	}
	if p.opts.CanaryCheckPeriod < 0 || now.Sub(p.lastCanaryCheck) < p.opts.CanaryCheckPeriod {
		return false, ""
	}
	p.lastCanaryCheck = now
	missing, calls, err := p.checkCanaries()
	res.KernelCalls += calls
	if err != nil {
		// Most often the xtables lock was held past the tools' wait (kubelet, a CNI
		// plugin): that says nothing about the canaries, and a full sync costs tens of
		// seconds at 10k Services. Check again at the next sync.
		klog.InfoS("Could not check the canary chains; checking again at the next sync", "ipFamily", p.family, "err", err)
		p.lastCanaryCheck = time.Time{}
	}
	if missing {
		klog.InfoS("Canary chain missing, iptables was flushed; doing a full sync", "ipFamily", p.family)
		return true, "canary chain missing"
	}
	return false, ""
}

func sameNode(a, b proxier.Node) bool {
	return a.Name == b.Name && slices.Equal(a.IPs, b.IPs) && maps.Equal(a.Labels, b.Labels)
}

// ensureTopLevel creates our top-level chains, the jumps to them from the
// built-in chains, and the canaries.
func (p *Proxier) ensureTopLevel(res *proxier.SyncResult) error {
	jumps := jumpRules
	if p.builder.localhostNodePorts {
		jumps = append(slices.Clip(jumps), kubeletJumpRules...)
	}
	for _, j := range jumps {
		res.KernelCalls += 2
		if err := p.kernel.EnsureChain(j.table, j.to); err != nil {
			return fmt.Errorf("ensure chain %s in %s: %w", j.to, j.table, err)
		}
		if err := p.kernel.EnsureRule(Prepend, j.table, j.from, j.args()...); err != nil {
			return fmt.Errorf("ensure jump from %s to %s in %s: %w", j.from, j.to, j.table, err)
		}
	}
	for _, t := range []Table{TableMangle, TableNAT, TableFilter} {
		res.KernelCalls++
		if err := p.kernel.EnsureChain(t, ChainCanary); err != nil {
			return fmt.Errorf("ensure canary chain in %s: %w", t, err)
		}
	}
	return nil
}

// existingServiceChains lists the service chains in the kernel's nat and
// filter tables, left by earlier syncs, failed batches or older runs.
func (p *Proxier) existingServiceChains(res *proxier.SyncResult) []string {
	var out []string
	for _, t := range []Table{TableNAT, TableFilter} {
		res.KernelCalls++
		data, err := p.kernel.Save(t)
		if err != nil {
			klog.ErrorS(err, "Failed to read iptables; stale chains will not be deleted", "ipFamily", p.family, "table", t)
			continue
		}
		for _, c := range savedChains(data) {
			if IsServiceChain(c) {
				out = append(out, c)
			}
		}
	}
	return out
}

// savedChains returns the chain names declared in iptables-save output.
func savedChains(data []byte) []string {
	var out []string
	for line := range bytes.Lines(data) {
		if len(line) < 2 || line[0] != ':' {
			continue
		}
		if end := bytes.IndexByte(line, ' '); end > 1 {
			out = append(out, string(line[1:end]))
		}
	}
	return out
}

// restoreFailed logs and counts a refused restore. The kernel keeps the
// previous rules of the refused table; the next sync must be full.
func (p *Proxier) restoreFailed(err error, data []byte, full bool) {
	fam := string(p.family)
	metrics.IPTablesRestoreFailuresTotal.WithLabelValues(fam).Inc()
	if !full {
		metrics.IPTablesPartialRestoreFailuresTotal.WithLabelValues(fam).Inc()
	}
	p.setNeedFull("previous restore failed")
	var rerr *RestoreError
	if errors.As(err, &rerr) && rerr.Line > 0 {
		klog.ErrorS(err, "Failed to execute iptables-restore", "ipFamily", p.family, "line", rerr.Line,
			"rule", rerr.Rule, "context", inputContext(data, rerr.Line, 3))
		return
	}
	klog.ErrorS(err, "Failed to execute iptables-restore", "ipFamily", p.family)
}

// inputContext returns the lines around line (1-based) of data, numbered.
func inputContext(data []byte, line, around int) []string {
	var out []string
	n := 0
	for l := range bytes.Lines(data) {
		n++
		if n >= line-around && n <= line+around {
			out = append(out, fmt.Sprintf("%d: %s", n, bytes.TrimRight(l, "\n")))
		}
		if n > line+around {
			break
		}
	}
	return out
}
