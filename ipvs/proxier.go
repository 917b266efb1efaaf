package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/proxier"
)

// Proxier is the IPVS data plane of one IP family; it implements
// proxier.DataPlane.
type Proxier struct {
	mu      sync.Mutex
	k       Kernel
	counter *counter
	opts    Options
	clock   clock.PassiveClock
	rec     *Reconciler

	lastFull   time.Time
	needFull   bool
	localAddrs []netip.Addr
	lastNodeIP []netip.Addr
	last       SyncStats
}

var _ proxier.DataPlane = (*Proxier)(nil)

// SyncStats describes the last Sync, for tests and tools.
type SyncStats struct {
	Full     bool
	Calls    CallCounts
	Duration time.Duration
	// Build is the part of Duration spent computing the desired state.
	Build       time.Duration
	Terminating int
	Desired     *DesiredState
}

// NewProxier returns the data plane for k's family. Every kernel call it
// makes is counted in metrics.IPVSKernelCalls. clk may be nil (real clock).
// The first Sync reads the whole kernel state.
func NewProxier(k Kernel, opts Options, clk clock.PassiveClock) *Proxier {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if opts.FullResyncPeriod <= 0 {
		opts.FullResyncPeriod = DefaultFullResyncPeriod
	}
	c := &counter{family: string(k.Family)}
	ck := countedKernel(k, c)
	return &Proxier{
		k: ck, counter: c, opts: opts, clock: clk,
		rec:      NewReconciler(ck, opts, clk),
		needFull: true,
	}
}

// ForceFullSync makes the next Sync re-read the kernel and rewrite the
// iptables rules.
func (p *Proxier) ForceFullSync() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.needFull = true
}

// Verify implements proxier.Verifier: when the kernel's virtual servers are not
// those of the last sync (`ipvsadm -D`, another proxy) or nat KUBE-SERVICES lost
// rules (`iptables -F`), it makes the next sync a full one and asks for it. One
// netlink dump and one iptables listing per call.
func (p *Proxier) Verify() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.needFull {
		return true, nil
	}
	drifted, err := p.rec.Drifted()
	if err != nil || !drifted {
		return false, err
	}
	klog.InfoS("IPVS virtual servers or iptables rules changed outside svcproxy; resyncing", "ipFamily", p.k.Family)
	p.needFull = true
	return true, nil
}

// CheckGraceful makes the next Sync check terminating real servers.
func (p *Proxier) CheckGraceful() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.CheckGraceful()
}

// LastSync returns what the last Sync did.
func (p *Proxier) LastSync() SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Sync programs snap. Between full resyncs (every FullResyncPeriod) it
// writes only what changed since the previous Sync and reads nothing back,
// so a one-endpoint change costs one netlink call plus, when a hairpin
// ipset member changes, one ipset restore.
func (p *Proxier) Sync(snap *proxier.Snapshot) (proxier.SyncResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.clock.Now()
	full := p.needFull || start.Sub(p.lastFull) >= p.opts.FullResyncPeriod ||
		!slices.Equal(p.lastNodeIP, snap.Node.IPs)
	if full || p.localAddrs == nil {
		addrs, err := p.k.Links.LocalAddresses(DummyDevice, snap.Family)
		if err != nil {
			calls := p.counter.take()
			return proxier.SyncResult{Full: full, KernelCalls: calls.Total()}, fmt.Errorf("list node addresses: %w", err)
		}
		p.localAddrs = addrs
	}
	ds := Build(snap, p.localAddrs, p.opts)
	built := p.clock.Since(start)
	err := p.rec.Reconcile(ds, full)
	calls := p.counter.take()
	if full && err == nil {
		p.lastFull, p.needFull = start, false
		p.lastNodeIP = slices.Clone(snap.Node.IPs)
	}
	p.last = SyncStats{Full: full, Calls: calls, Duration: p.clock.Since(start), Build: built, Terminating: p.rec.Terminating(), Desired: ds}
	res := proxier.SyncResult{
		Full:             full,
		Rules:            ds.counts(),
		KernelCalls:      calls.Total(),
		NoLocalEndpoints: ds.NoLocalEndpoints,
	}
	if err != nil {
		return res, fmt.Errorf("sync IPVS %s: %w", snap.Family, err)
	}
	klog.V(3).InfoS("Synced IPVS", "ipFamily", snap.Family, "full", full, "reads", calls.Reads, "writes", calls.Writes,
		"virtualServers", len(ds.VirtualServers), "terminating", p.last.Terminating)
	return res, nil
}

// counts are the objects per kind, for SyncResult.Rules.
func (ds *DesiredState) counts() map[string]int {
	rs, members := 0, 0
	for _, vs := range ds.VirtualServers {
		rs += len(vs.RealServers)
	}
	for _, s := range ds.IPSets {
		members += s.Members.Len()
	}
	return map[string]int{
		"virtualServers": len(ds.VirtualServers),
		"realServers":    rs,
		"addresses":      ds.Addresses.Len(),
		"ipsetMembers":   members,
		"iptablesRules":  strings.Count(string(ds.IPTables), "\n-A "),
	}
}
