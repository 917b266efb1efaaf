package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/iptables"
)

// knownVS is a virtual server as the kernel holds it, as far as we know.
type knownVS struct {
	vs VirtualServer
	rs map[netip.AddrPort]RealServer
}

// Reconciler makes the kernel match a DesiredState, writing only the
// difference. Between full reads it trusts its record of what it read and
// wrote; an object whose write failed is re-read and retried alone on the
// next Reconcile, and a failure never stops the other objects.
type Reconciler struct {
	k      Kernel
	family v1.IPFamily
	opts   Options

	loaded bool
	known  map[VSKey]*knownVS
	addrs  sets.Set[netip.Addr]
	ipsets map[string]*IPSet
	owned  sets.Set[string] // ipset names of this family

	// What must be re-read before the next diff.
	dirtyVSList bool
	dirtyVS     sets.Set[VSKey]
	dirtyAddrs  bool
	dirtyIPSets bool

	lastIPTables  []byte
	jumpsEnsured  bool
	graceful      *graceful
	forceGraceful bool
}

// NewReconciler returns a reconciler for k's family. k should already be
// wrapped for counting if calls are to be counted.
func NewReconciler(k Kernel, opts Options, clk clock.PassiveClock) *Reconciler {
	if clk == nil {
		clk = clock.RealClock{}
	}
	grace, check := opts.GracePeriod, opts.GraceCheckPeriod
	if grace <= 0 {
		grace = DefaultGracePeriod
	}
	if check <= 0 {
		check = DefaultGraceCheckPeriod
	}
	return &Reconciler{
		k: k, family: k.Family, opts: opts,
		owned:    sets.New(SetNames(k.Family)...),
		dirtyVS:  sets.New[VSKey](),
		graceful: newGraceful(clk, grace, check),
	}
}

// Terminating is the number of real servers in graceful termination.
func (r *Reconciler) Terminating() int { return r.graceful.Len() }

// Invalidate makes the next Reconcile re-read the whole kernel state and
// rewrite the iptables rules and jumps.
func (r *Reconciler) Invalidate() {
	r.loaded = false
	r.lastIPTables = nil
	r.jumpsEnsured = false
}

// ours reports whether the reconciler may delete or watch a virtual server at
// addr: one of its family outside ExcludeCIDRs.
func (r *Reconciler) ours(addr netip.Addr) bool {
	return r.ofFamily(addr) && !r.opts.excluded(addr)
}

func (r *Reconciler) ofFamily(addr netip.Addr) bool {
	return addr.Is4() == (r.family == v1.IPv4Protocol)
}

// knownOurs counts the known virtual servers that are ours; Drifted leaves
// excluded ones to whoever else manages them.
func (r *Reconciler) knownOurs() int {
	n := 0
	for key := range r.known {
		if r.ours(key.Address) {
			n++
		}
	}
	return n
}

// read loads the kernel state: everything when not loaded, else only what
// is dirty.
func (r *Reconciler) read() error {
	var errs []error
	full := !r.loaded
	if full {
		if err := r.k.Links.EnsureDummy(DummyDevice); err != nil {
			errs = append(errs, err)
		}
		r.dirtyVSList, r.dirtyAddrs, r.dirtyIPSets = true, true, true
	}
	if r.dirtyVSList {
		vss, err := r.k.IPVS.ListVirtualServers()
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		old := r.known
		r.known = make(map[VSKey]*knownVS, len(vss))
		for _, vs := range vss {
			// Excluded ones are known too, never deleted: a service may use
			// such an address, now or in any later partial sync, and its
			// virtual server must then be updated, not added again (EEXIST).
			if !r.ofFamily(vs.Address) {
				continue
			}
			kv := &knownVS{vs: vs}
			if o := old[vs.VSKey]; o != nil && !full && !r.dirtyVS.Has(vs.VSKey) {
				kv.rs = o.rs
			} else {
				r.dirtyVS.Insert(vs.VSKey)
			}
			r.known[vs.VSKey] = kv
		}
		r.dirtyVSList = false
	}
	for key := range r.dirtyVS {
		kv := r.known[key]
		if kv == nil {
			r.dirtyVS.Delete(key)
			continue
		}
		rss, err := r.k.IPVS.ListRealServers(key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		kv.rs = make(map[netip.AddrPort]RealServer, len(rss))
		for _, rs := range rss {
			kv.rs[rs.Addr] = rs
		}
		r.dirtyVS.Delete(key)
	}
	if r.dirtyAddrs {
		addrs, err := r.k.Links.ListAddresses(DummyDevice, r.family)
		if err != nil {
			errs = append(errs, err)
		} else {
			r.addrs = sets.New(addrs...)
			r.dirtyAddrs = false
		}
	}
	if r.dirtyIPSets {
		all, err := r.k.IPSets.List()
		if err != nil {
			errs = append(errs, err)
		} else {
			r.ipsets = map[string]*IPSet{}
			for name, s := range all {
				if r.owned.Has(name) {
					r.ipsets[name] = s
				}
			}
			r.dirtyIPSets = false
		}
	}
	if len(errs) == 0 {
		r.loaded = true
	}
	return errors.Join(errs...)
}

// Reconcile applies ds. With full set it first re-reads the whole kernel
// state and rewrites the iptables rules and jumps. The error joins every
// failed object; the others were applied.
func (r *Reconciler) Reconcile(ds *DesiredState, full bool) error {
	if full {
		r.Invalidate()
	}
	if err := r.read(); err != nil {
		// Without a trustworthy view of the kernel a diff could delete or
		// duplicate objects; try again next time.
		r.loaded = false
		return fmt.Errorf("read kernel state: %w", err)
	}
	var errs []error
	if err := r.syncIPSets(ds); err != nil {
		errs = append(errs, err)
	}
	if err := r.syncIPTables(ds); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.bindAddresses(ds)...)
	errs = append(errs, r.syncVirtualServers(ds)...)
	errs = append(errs, r.unbindAddresses(ds)...)
	if r.forceGraceful || r.graceful.due() {
		r.forceGraceful = false
		if err := r.graceful.process(r.k.IPVS, r.known); err != nil {
			errs = append(errs, fmt.Errorf("graceful termination: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Drifted lists the kernel's virtual servers (one dump) and counts the rules of
// nat KUBE-SERVICES, and reports whether either differs from what the reconciler
// left: a virtual server deleted, added or reconfigured by another program, or our
// iptables rules flushed. Real servers, addresses and ipsets are re-read by the
// full resyncs only; this check is cheap enough for every sync period.
func (r *Reconciler) Drifted() (bool, error) {
	if !r.loaded {
		return false, nil
	}
	vss, err := r.k.IPVS.ListVirtualServers()
	if err != nil {
		return false, fmt.Errorf("list virtual servers: %w", err)
	}
	n := 0
	for _, vs := range vss {
		if !r.ours(vs.Address) {
			continue
		}
		kv := r.known[vs.VSKey]
		if kv == nil || !kv.vs.sameConfig(vs) {
			return true, nil
		}
		n++
	}
	if n != r.knownOurs() {
		return true, nil
	}
	if r.k.IPTables == nil || r.lastIPTables == nil {
		return false, nil
	}
	have, err := r.k.IPTables.CountRules(iptables.TableNAT, ChainServices)
	if err != nil {
		return false, fmt.Errorf("count nat %s rules: %w", ChainServices, err)
	}
	return have != natRules(r.lastIPTables, ChainServices), nil
}

// natRules counts the rules of chain in the nat table of an iptables-restore input.
func natRules(input []byte, chain string) int {
	i := bytes.Index(input, []byte("*nat\n"))
	if i < 0 {
		return 0
	}
	return bytes.Count(input[i:], []byte("\n-A "+chain+" "))
}

// CheckGraceful makes the next Reconcile check terminating real servers
// whatever the check period.
func (r *Reconciler) CheckGraceful() { r.forceGraceful = true }

func (r *Reconciler) syncIPSets(ds *DesiredState) error {
	b := &IPSetBatch{}
	for _, s := range setInfo {
		name := SetName(s.name, r.family)
		want := ds.IPSets[name]
		have := r.ipsets[name]
		if have == nil {
			b.Create = append(b.Create, want)
			have = &IPSet{Members: sets.New[string]()}
		}
		for m := range want.Members {
			if !have.Members.Has(m) {
				b.Add = append(b.Add, IPSetMember{name, m})
			}
		}
		for m := range have.Members {
			if !want.Members.Has(m) {
				b.Del = append(b.Del, IPSetMember{name, m})
			}
		}
	}
	if b.Len() == 0 {
		return nil
	}
	err := r.k.IPSets.Apply(b)
	if err == nil {
		r.recordIPSets(b, b.Len())
		return nil
	}
	// Keep what was applied, then retry the rest without the failed
	// operation, so one bad member does not hold back the others.
	var be *BatchError
	if !errors.As(err, &be) {
		r.dirtyIPSets = true
		return fmt.Errorf("apply ipsets: %w", err)
	}
	r.recordIPSets(b, be.Index)
	errs := []error{fmt.Errorf("apply ipsets: %w", err)}
	rest := b.skip(be.Index + 1)
	if rest.Len() > 0 {
		if err := r.k.IPSets.Apply(rest); err != nil {
			errs = append(errs, fmt.Errorf("apply ipsets (rest of batch): %w", err))
		} else {
			r.recordIPSets(rest, rest.Len())
		}
	}
	r.dirtyIPSets = true
	return errors.Join(errs...)
}

// recordIPSets notes the first n operations of b as applied.
func (r *Reconciler) recordIPSets(b *IPSetBatch, n int) {
	for _, c := range b.Create {
		if n == 0 {
			return
		}
		r.ipsets[c.Name] = &IPSet{Name: c.Name, Type: c.Type, Family: c.Family, Members: sets.New[string]()}
		n--
	}
	for _, m := range b.Add {
		if n == 0 {
			return
		}
		if s := r.ipsets[m.Set]; s != nil {
			s.Members.Insert(m.Member)
		}
		n--
	}
	for _, m := range b.Del {
		if n == 0 {
			return
		}
		if s := r.ipsets[m.Set]; s != nil {
			s.Members.Delete(m.Member)
		}
		n--
	}
}

// skip returns b without its first n operations.
func (b *IPSetBatch) skip(n int) *IPSetBatch {
	out := &IPSetBatch{}
	take := func(l int) int { k := min(n, l); n -= k; return k }
	out.Create = b.Create[take(len(b.Create)):]
	out.Add = b.Add[take(len(b.Add)):]
	out.Del = b.Del[take(len(b.Del)):]
	out.Flush = b.Flush[take(len(b.Flush)):]
	out.Destroy = b.Destroy[take(len(b.Destroy)):]
	return out
}

// syncIPTables restores the rules when they changed (or after Invalidate)
// and ensures the jumps once.
func (r *Reconciler) syncIPTables(ds *DesiredState) error {
	if r.k.IPTables == nil {
		return nil
	}
	if r.lastIPTables == nil || !bytes.Equal(r.lastIPTables, ds.IPTables) {
		if err := r.k.IPTables.Restore(ds.IPTables); err != nil {
			r.lastIPTables = nil
			return fmt.Errorf("restore iptables rules: %w", err)
		}
		r.lastIPTables = ds.IPTables
	}
	if r.jumpsEnsured {
		return nil
	}
	var errs []error
	for _, j := range ds.Jumps {
		if err := r.k.IPTables.EnsureRule(iptables.Prepend, iptables.Table(j.Table), j.From, j.Args()...); err != nil {
			errs = append(errs, fmt.Errorf("ensure jump %s/%s -> %s: %w", j.Table, j.From, j.To, err))
		}
	}
	r.jumpsEnsured = len(errs) == 0
	return errors.Join(errs...)
}

func (r *Reconciler) bindAddresses(ds *DesiredState) []error {
	var errs []error
	for a := range ds.Addresses {
		if r.addrs.Has(a) {
			continue
		}
		if err := r.k.Links.AddAddress(DummyDevice, a); err != nil {
			errs = append(errs, err)
			r.dirtyAddrs = true
			continue
		}
		r.addrs.Insert(a)
	}
	return errs
}

func (r *Reconciler) unbindAddresses(ds *DesiredState) []error {
	var errs []error
	for a := range r.addrs {
		if ds.Addresses.Has(a) || r.opts.excluded(a) {
			continue
		}
		if err := r.k.Links.DeleteAddress(DummyDevice, a); err != nil {
			errs = append(errs, err)
			r.dirtyAddrs = true
			continue
		}
		r.addrs.Delete(a)
	}
	return errs
}

func logFailure(err error, msg string, kv ...any) {
	klog.ErrorS(err, msg, kv...)
}
