package iptables

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// largeClusterEndpoints is kube-proxy's threshold above which per-endpoint
// comments are dropped: they make up ~40% of the restore input.
const largeClusterEndpoints = 1000

// Builder turns snapshots into iptables-restore input. It does no I/O. It
// keeps, per service, its chain names, what the last committed sync wrote
// into its chains, and its rules in the top-level chains, so a partial build
// only computes the changed services. Not safe for concurrent use.
type Builder struct {
	family v1.IPFamily
	opts   Options
	// markMasq is the masquerade mark ("0x00004000"); markMatch is "mark/mark".
	markMasq, markMatch string
	// localhostNodePorts: IPv4, enabled, and nodePortAddresses includes loopback.
	localhostNodePorts bool
	probabilities      []string

	svcs  map[proxier.ServicePortName]*svcEntry
	order []*svcEntry // sorted by name; what the last build wrote
	// uncommitted: the last Build was not committed, so cached fragments
	// may be ahead of the kernel and the next build must be full.
	uncommitted bool
	committed   bool // a build was committed: the kernel has our chains
	removed     []*svcEntry
	// committedSvc, committedNP and committedFilter are nat KUBE-SERVICES' and
	// KUBE-NODEPORTS' rules and the filter rules as the kernel holds them after the
	// last committed sync.
	committedSvc, committedNP, committedFilter []byte
	active                                     map[string]struct{}
	rs                                         Ruleset
	scratch                                    dispatchBufs
}

// svcEntry is the builder's memory of one ServicePort.
type svcEntry struct {
	name  proxier.ServicePortName
	names *ServiceChainNames
	// chains and rules: what its per-service chains hold in the kernel
	// after the last committed sync; next* after the current build.
	chains, nextChains []string
	rules, nextRules   int
	written            bool
	// frag holds the service's rules in the top-level chains, written by
	// the last build: nat KUBE-SERVICES [0:natSvcEnd), nat KUBE-NODEPORTS
	// [natSvcEnd:natNPEnd), filter [natNPEnd:).
	frag                                    []byte
	natSvcEnd, natNPEnd                     int
	natSvcRules, natNPRules, filterRules    int
	noLocalInternal, noLocalExternal, dirty bool
}

// BuildInput is what a build needs besides the snapshot.
type BuildInput struct {
	// Full rewrites every service's chains; otherwise only snap.Changed ones.
	Full bool
	// NodePortIPs are the local addresses accepting NodePorts when
	// Options.NodePortAddresses does not match all.
	NodePortIPs []netip.Addr
	// ExistingChains are chain names found in the kernel (iptables-save);
	// service chains among them that this build does not write are removed.
	ExistingChains []string
}

// NewBuilder returns a builder for family with opts (see Options).
func NewBuilder(family v1.IPFamily, opts Options) *Builder {
	mark := fmt.Sprintf("%#08x", uint32(1)<<uint(opts.MasqueradeBit))
	b := &Builder{
		family:    family,
		opts:      opts,
		markMasq:  mark,
		markMatch: mark + "/" + mark,
		svcs:      make(map[proxier.ServicePortName]*svcEntry),
		active:    make(map[string]struct{}),
	}
	b.localhostNodePorts = family == v1.IPv4Protocol && opts.LocalhostNodePorts &&
		(opts.NodePortAddresses == nil || opts.NodePortAddresses.ContainsIPv4Loopback())
	b.probability(64)
	return b
}

// probability returns 1/n formatted as kube-proxy does ("%0.10f").
func (b *Builder) probability(n int) string {
	for len(b.probabilities) <= n {
		i := len(b.probabilities)
		if i == 0 {
			b.probabilities = append(b.probabilities, "<bad value>")
			continue
		}
		b.probabilities = append(b.probabilities, fmt.Sprintf("%0.10f", 1.0/float64(i)))
	}
	return b.probabilities[n]
}

// Build computes the ruleset for snap. The result (and its buffers) stays
// valid until the next Build. Call Commit once the kernel accepted all of
// it; a Build after an uncommitted one is always full.
func (b *Builder) Build(snap *proxier.Snapshot, in BuildInput) *Ruleset {
	full := in.Full || b.uncommitted || !b.committed
	b.uncommitted = true
	rs := &b.rs
	rs.reset(full)
	rs.localhostGuard = b.localhostNodePorts
	b.writeStaticRules(rs)

	totalEndpoints := 0
	for _, eps := range snap.Endpoints {
		totalEndpoints += len(eps)
	}
	comments := totalEndpoints <= largeClusterEndpoints

	if !full {
		b.orderPartial(snap, rs)
		if len(b.order) != len(snap.Services) {
			// Changed missed a service coming or going: rebuild everything.
			klog.InfoS("Snapshot's changed services do not account for its services; building all", "ipFamily", b.family)
			full = true
			rs.reset(true)
			b.writeStaticRules(rs)
		}
	}
	if full {
		b.orderFull(snap)
	}
	for _, e := range b.order {
		if full || e.dirty {
			b.writeService(rs, e, snap, comments)
			e.written = true
			if !full {
				rs.Stale = appendMissing(rs.Stale, e.chains, e.nextChains)
			}
		} else {
			e.written = false
			rs.natTotal += e.rules
		}
		rs.appendDispatch(e)
	}
	if full {
		b.staleAfterFull(rs, in.ExistingChains)
	}
	slices.Sort(rs.Stale)

	b.writeNodePortsDispatch(rs, in.NodePortIPs)
	// An endpoint change leaves every dispatch rule as it was (they jump to stable
	// chain names): then the input leaves KUBE-SERVICES and KUBE-NODEPORTS alone, which
	// at 10k services is most of its size. Stale chains do not matter: a dispatch rule
	// that jumped to one would differ now.
	rs.skipDispatch = !full &&
		bytes.Equal(rs.natServices.b, b.committedSvc) && bytes.Equal(rs.natNodePorts.b, b.committedNP)
	b.writeFilterStatic(rs)
	// A service that goes without chains of its own (one without endpoints has only
	// a filter REJECT) changes nothing but the filter rules.
	rs.filterChanged = full || !bytes.Equal(rs.filter.b, b.committedFilter)
	rs.natTotal += rs.natStatic.rules + rs.natServices.rules + rs.natNodePorts.rules
	return rs
}

// orderFull sets b.order to every service of snap, creating entries.
func (b *Builder) orderFull(snap *proxier.Snapshot) {
	b.order = b.order[:0]
	b.removed = b.removed[:0]
	for name := range snap.Services {
		b.order = append(b.order, b.entry(name))
	}
	slices.SortFunc(b.order, compareEntries)
	if len(b.order) == len(b.svcs) {
		return
	}
	for name, e := range b.svcs {
		if _, ok := snap.Services[name]; !ok {
			b.removed = append(b.removed, e)
		}
	}
}

// orderPartial marks snap.Changed's services for rewriting, and updates
// b.order when services came or went; removed services' chains are stale.
func (b *Builder) orderPartial(snap *proxier.Snapshot, rs *Ruleset) {
	b.removed = b.removed[:0]
	for _, e := range b.order {
		e.dirty = false
	}
	reorder := false
	for name := range snap.Changed {
		e, known := b.svcs[name]
		if _, ok := snap.Services[name]; !ok {
			if known {
				b.removed = append(b.removed, e)
				rs.Stale = append(rs.Stale, e.chains...)
				reorder = true
			}
			continue
		}
		if !known {
			e = b.entry(name)
			reorder = true
		}
		e.dirty = true
	}
	if !reorder {
		return
	}
	b.order = b.order[:0]
	for name, e := range b.svcs {
		if _, ok := snap.Services[name]; ok {
			b.order = append(b.order, e)
		} else if !slices.Contains(b.removed, e) {
			b.removed = append(b.removed, e)
			rs.Stale = append(rs.Stale, e.chains...)
		}
	}
	slices.SortFunc(b.order, compareEntries)
}

func (b *Builder) entry(name proxier.ServicePortName) *svcEntry {
	e, ok := b.svcs[name]
	if !ok {
		e = &svcEntry{name: name, names: NewServiceChainNames(name)}
		b.svcs[name] = e
	}
	return e
}

// staleAfterFull lists every service chain known to exist (committed by
// earlier syncs or seen in the kernel) that this full build did not write.
func (b *Builder) staleAfterFull(rs *Ruleset, existing []string) {
	for _, e := range b.order {
		rs.Stale = appendMissing(rs.Stale, e.chains, e.nextChains)
	}
	for _, e := range b.removed {
		rs.Stale = append(rs.Stale, e.chains...)
	}
	if len(existing) == 0 {
		return
	}
	// Chains the kernel has and no entry knows of: left by a failed batch
	// or an earlier run. The set costs ~100ns per chain; only full syncs
	// with a kernel listing pay it.
	clear(b.active)
	for _, e := range b.order {
		for _, c := range e.nextChains {
			b.active[c] = struct{}{}
		}
	}
	for _, c := range rs.Stale {
		b.active[c] = struct{}{}
	}
	for _, c := range existing {
		if _, ok := b.active[c]; ok || !IsServiceChain(c) {
			continue
		}
		b.active[c] = struct{}{}
		rs.Stale = append(rs.Stale, c)
	}
}

// Commit records that the kernel now holds the last Build's output.
func (b *Builder) Commit() {
	if !b.uncommitted {
		return
	}
	b.uncommitted, b.committed = false, true
	if !b.rs.skipDispatch {
		b.committedSvc = append(b.committedSvc[:0], b.rs.natServices.b...)
		b.committedNP = append(b.committedNP[:0], b.rs.natNodePorts.b...)
	}
	b.committedFilter = append(b.committedFilter[:0], b.rs.filter.b...)
	for _, e := range b.removed {
		delete(b.svcs, e.name)
	}
	b.removed = b.removed[:0]
	for _, e := range b.order {
		if e.written {
			e.chains, e.nextChains = e.nextChains, e.chains[:0]
			e.rules = e.nextRules
		}
		e.dirty = false
	}
}

// appendMissing appends the entries of old that are not in cur (both short).
func appendMissing(dst, old, cur []string) []string {
	for _, c := range old {
		if !slices.Contains(cur, c) {
			dst = append(dst, c)
		}
	}
	return dst
}

func compareEntries(x, y *svcEntry) int {
	a, b := &x.name, &y.name
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := strings.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return strings.Compare(string(a.Protocol), string(b.Protocol))
}
