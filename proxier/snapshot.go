package proxier

import (
	"fmt"
	"maps"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// trigger is one last-change-trigger-time, with the change that carried it.
type trigger struct {
	at  time.Time
	gen uint64
}

// pendingChange says a service was touched since the last successful sync.
type pendingChange struct {
	gen      uint64 // of the latest change
	service  bool
	endpoint bool
	triggers []trigger
}

// familyState is the Tracker's state for one IP family. Snapshots are built
// incrementally: only services touched since the previous snapshot are
// recomputed, and only services touched since the last successful sync are
// compared with the synced state.
type familyState struct {
	family    v1.IPFamily
	services  map[types.NamespacedName]servicePorts
	claims    *claimIndex
	slices    *endpointSliceCache
	endpoints map[types.NamespacedName]map[ServicePortName][]*Endpoint
	node      Node

	// Flat maps as of the last snapshot, updated from dirty.
	dirty         sets.Set[types.NamespacedName]
	builtServices map[ServicePortName]*ServicePort
	builtEps      map[ServicePortName][]*Endpoint
	builtNames    map[types.NamespacedName][]ServicePortName

	pending          map[types.NamespacedName]*pendingChange
	pendingServices  int
	pendingEndpoints int

	// The last successfully synced model.
	synced      *Snapshot
	syncedNames map[types.NamespacedName][]ServicePortName

	// What the latest snapshot included, for Commit.
	taken     *Snapshot
	takenGen  uint64
	takenNsns map[types.NamespacedName][]ServicePortName
}

func newFamilyState(family v1.IPFamily, nodeName string, claims *claimIndex) *familyState {
	return &familyState{
		family:        family,
		services:      map[types.NamespacedName]servicePorts{},
		claims:        claims,
		slices:        newEndpointSliceCache(),
		endpoints:     map[types.NamespacedName]map[ServicePortName][]*Endpoint{},
		node:          Node{Name: nodeName},
		dirty:         sets.New[types.NamespacedName](),
		builtServices: map[ServicePortName]*ServicePort{},
		builtEps:      map[ServicePortName][]*Endpoint{},
		builtNames:    map[types.NamespacedName][]ServicePortName{},
		pending:       map[types.NamespacedName]*pendingChange{},
		syncedNames:   map[types.NamespacedName][]ServicePortName{},
	}
}

// touch marks nsn changed by change gen.
func (st *familyState) touch(nsn types.NamespacedName, gen uint64, service bool) *pendingChange {
	st.dirty.Insert(nsn)
	return st.markPending(nsn, gen, service)
}

// markPending records that nsn's model changed since the last successful
// sync, for the next snapshot to compare it with the synced state.
func (st *familyState) markPending(nsn types.NamespacedName, gen uint64, service bool) *pendingChange {
	pc := st.pending[nsn]
	if pc == nil {
		pc = &pendingChange{}
		st.pending[nsn] = pc
	}
	pc.gen = gen
	if service && !pc.service {
		pc.service = true
		st.pendingServices++
	}
	if !service && !pc.endpoint {
		pc.endpoint = true
		st.pendingEndpoints++
	}
	return pc
}

// rebuild brings the flat maps and the claims up to date for the dirty
// services. A port whose ServicePort is the same object as before only had
// its endpoints change and keeps its claims.
func (st *familyState) rebuild(gen uint64) {
	for nsn := range st.dirty {
		ports := st.services[nsn]
		for _, name := range st.builtNames[nsn] {
			if old := st.builtServices[name]; ports[name] != old {
				st.claims.remove(old)
			}
			if ports[name] == nil {
				delete(st.builtServices, name)
			}
			delete(st.builtEps, name)
		}
		if len(ports) == 0 {
			delete(st.builtNames, nsn)
			continue
		}
		var created time.Time
		if svc := st.claims.objects[nsn]; svc != nil {
			created = svc.CreationTimestamp.Time
		}
		names := make([]ServicePortName, 0, len(ports))
		eps := st.endpoints[nsn]
		for name, sp := range ports {
			names = append(names, name)
			if st.builtServices[name] != sp {
				st.claims.add(sp, created)
				st.builtServices[name] = sp
			}
			// Endpoints of ports the Service does not have are useless to a
			// data plane, so only ports of existing services get endpoints.
			if e := eps[name]; len(e) > 0 {
				st.builtEps[name] = e
			}
		}
		st.builtNames[nsn] = names
	}
	clear(st.dirty)
	st.resolveClaims(gen)
}

func (st *familyState) snapshot(gen uint64) *Snapshot {
	st.rebuild(gen)
	snap := &Snapshot{
		Family:         st.family,
		Services:       maps.Clone(st.builtServices),
		Endpoints:      maps.Clone(st.builtEps),
		Node:           st.node,
		Changed:        sets.New[ServicePortName](),
		StaleEndpoints: map[ServicePortName][]netip.AddrPort{},
		StaleServices:  sets.New[ServicePortName](),
		Removed:        map[ServicePortName]*ServicePort{},
		TriggerTimes:   map[types.NamespacedName][]time.Time{},
	}
	for name, sp := range st.claims.overrides {
		snap.Services[name] = sp
	}
	old := st.synced
	if old == nil {
		old = &Snapshot{}
	}
	taken := make(map[types.NamespacedName][]ServicePortName, len(st.pending))
	for nsn, pc := range st.pending {
		taken[nsn] = st.builtNames[nsn]
		for _, name := range st.syncedNames[nsn] {
			diffPort(snap, old, name)
		}
		for _, name := range st.builtNames[nsn] {
			if _, synced := old.Services[name]; !synced {
				diffPort(snap, old, name)
			}
		}
		for _, tr := range pc.triggers {
			snap.TriggerTimes[nsn] = append(snap.TriggerTimes[nsn], tr.at)
		}
	}
	// Topology and node addresses shape every port's rules.
	if st.synced == nil || !nodeRulesEqual(st.synced.Node, st.node) {
		for name := range snap.Services {
			snap.Changed.Insert(name)
		}
		for name := range old.Services {
			snap.Changed.Insert(name)
		}
	}
	st.taken, st.takenGen, st.takenNsns = snap, gen, taken
	return snap
}

// diffPort compares one ServicePort of snap with the synced state old.
func diffPort(snap, old *Snapshot, name ServicePortName) {
	oldSP, newSP := old.Services[name], snap.Services[name]
	if oldSP == nil && newSP == nil {
		return
	}
	oldEps, newEps := old.Endpoints[name], snap.Endpoints[name]
	epsChanged := !endpointsEqual(oldEps, newEps)
	if !epsChanged && servicePortEqual(oldSP, newSP) {
		return
	}
	snap.Changed.Insert(name)
	if newSP == nil {
		snap.Removed[name] = oldSP
	}
	// Conntrack only keeps stale flows for connectionless protocols; a removed
	// port's flows are cleaned up through Removed.
	if name.Protocol != v1.ProtocolUDP && name.Protocol != v1.ProtocolSCTP || !epsChanged || newSP == nil {
		return
	}
	serving := make(map[netip.AddrPort]bool, len(newEps))
	for _, ep := range newEps {
		if ep.Serving {
			serving[ep.AddrPort()] = true
		}
	}
	oldServing := 0
	for _, ep := range oldEps {
		if !ep.Serving {
			continue
		}
		oldServing++
		if !serving[ep.AddrPort()] {
			snap.StaleEndpoints[name] = append(snap.StaleEndpoints[name], ep.AddrPort())
		}
	}
	if newSP != nil && oldServing == 0 && len(serving) > 0 {
		snap.StaleServices.Insert(name)
	}
}

func (st *familyState) commit(snap *Snapshot) error {
	if snap != st.taken {
		return fmt.Errorf("commit %s snapshot: not the latest one taken", snap.Family)
	}
	st.synced = snap
	for nsn, names := range st.takenNsns {
		if len(names) == 0 {
			delete(st.syncedNames, nsn)
		} else {
			st.syncedNames[nsn] = names
		}
	}
	for nsn, pc := range st.pending {
		if pc.gen <= st.takenGen {
			st.dropPending(nsn, pc)
			continue
		}
		// Touched again after the snapshot: keep it, minus reported triggers.
		kept := pc.triggers[:0]
		for _, tr := range pc.triggers {
			if tr.gen > st.takenGen {
				kept = append(kept, tr)
			}
		}
		pc.triggers = kept
	}
	st.taken, st.takenNsns = nil, nil
	return nil
}

func (st *familyState) dropPending(nsn types.NamespacedName, pc *pendingChange) {
	if pc.service {
		st.pendingServices--
	}
	if pc.endpoint {
		st.pendingEndpoints--
	}
	delete(st.pending, nsn)
}
