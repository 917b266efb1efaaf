package proxier

import (
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/metrics"
)

// Labels that take objects away from this proxy, as in kube-proxy.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
)

// Tracker keeps the current Services and EndpointSlices of every family and
// builds Snapshots from them. It is safe for concurrent use: informer handlers
// update it while the sync loop takes snapshots.
type Tracker struct {
	mu        sync.Mutex
	nodeName  string
	families  []v1.IPFamily
	recorder  record.EventRecorder
	startTime time.Time
	gen       uint64
	state     map[v1.IPFamily]*familyState
	// Problems of the last version of each object, so each is reported once.
	svcProblems   map[types.NamespacedName][]fieldProblem
	sliceProblems map[types.NamespacedName][]fieldProblem
	// claimers are the Services with external or ingress IPs, the ones
	// that can lose an address to another Service (see claims.go).
	claimers map[types.NamespacedName]*v1.Service
}

// NewTracker tracks families for the node nodeName. Invalid values are
// reported as Warning events through recorder (may be nil). Trigger times
// older than clk.Now() are not reported: they predate this process.
func NewTracker(nodeName string, families []v1.IPFamily, recorder record.EventRecorder, clk clock.PassiveClock) *Tracker {
	t := &Tracker{
		nodeName:      nodeName,
		families:      families,
		recorder:      recorder,
		startTime:     clk.Now(),
		state:         map[v1.IPFamily]*familyState{},
		svcProblems:   map[types.NamespacedName][]fieldProblem{},
		sliceProblems: map[types.NamespacedName][]fieldProblem{},
		claimers:      map[types.NamespacedName]*v1.Service{},
	}
	for _, f := range families {
		t.state[f] = newFamilyState(f, nodeName, newClaimIndex(t.claimers, recorder))
	}
	return t
}

// UpdateService records an add (old nil), update, or delete (cur nil) of a
// Service and returns the families whose model changed.
func (t *Tracker) UpdateService(old, cur *v1.Service) []v1.IPFamily {
	obj := cur
	if obj == nil {
		obj = old
	}
	if obj == nil {
		return nil
	}
	metrics.ServiceChangesTotal.Inc()
	nsn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	if cur != nil && cur.Labels[LabelServiceProxyName] != "" {
		cur = nil // handled by another proxy: as good as deleted for us
	}
	perFamily, problems := parseService(cur, t.families)

	t.mu.Lock()
	defer t.mu.Unlock()
	if cur != nil {
		reportProblems(t.recorder, cur, "Service", nsn.String(), problems, t.svcProblems[nsn])
		t.svcProblems[nsn] = problems
	} else {
		delete(t.svcProblems, nsn)
	}
	// A Service recreated under the same name may reach us as an update;
	// its claims must then take its new age.
	recreated := t.setClaimer(nsn, cur)
	var changed []v1.IPFamily
	for _, f := range t.families {
		st := t.state[f]
		ports := perFamily[f]
		if !recreated && servicePortsEqual(st.services[nsn], ports) {
			continue
		}
		if len(ports) == 0 {
			delete(st.services, nsn)
		} else {
			st.services[nsn] = ports
		}
		st.useServicePorts(nsn)
		t.gen++
		st.touch(nsn, t.gen, true)
		changed = append(changed, f)
	}
	t.updatePendingMetrics()
	return changed
}

// setClaimer keeps cur in t.claimers when it lists external or ingress IPs
// and reports whether its creation time differs from the version it replaces.
func (t *Tracker) setClaimer(nsn types.NamespacedName, cur *v1.Service) bool {
	prev := t.claimers[nsn]
	if cur == nil || len(cur.Spec.ExternalIPs) == 0 && len(cur.Status.LoadBalancer.Ingress) == 0 {
		delete(t.claimers, nsn)
		return false
	}
	t.claimers[nsn] = cur
	return prev != nil && !prev.CreationTimestamp.Equal(&cur.CreationTimestamp)
}

// UpdateEndpointSlice records an add (old nil), update, or delete (cur nil) of
// an EndpointSlice and returns the families whose model changed.
func (t *Tracker) UpdateEndpointSlice(old, cur *discovery.EndpointSlice) []v1.IPFamily {
	if old == nil && cur == nil {
		return nil
	}
	metrics.EndpointChangesTotal.Inc()
	if cur != nil && cur.Labels[LabelHeadless] != "" {
		cur = nil
	}
	var changed []v1.IPFamily
	// A slice whose service label or address type changed leaves its old
	// service; drop it there before adding it anew.
	if old != nil {
		oldF, _ := sliceFamily(old)
		oldSvc, _ := sliceService(old)
		curF, curSvc := oldF, oldSvc
		if cur != nil {
			curF, _ = sliceFamily(cur)
			curSvc, _ = sliceService(cur)
		}
		if cur == nil || oldF != curF || oldSvc != curSvc {
			changed = t.setSlice(old, nil)
		}
	}
	if cur != nil {
		changed = append(changed, t.setSlice(cur, cur)...)
	}
	return changed
}

// setSlice stores cur (nil deletes) under slice's family, service and name.
func (t *Tracker) setSlice(slice, cur *discovery.EndpointSlice) []v1.IPFamily {
	family, ok := sliceFamily(slice)
	if !ok {
		return nil
	}
	svc, ok := sliceService(slice)
	if !ok {
		klog.V(4).InfoS("Ignoring EndpointSlice without service name label", "endpointSlice", klog.KObj(slice))
		return nil
	}
	sliceKey := types.NamespacedName{Namespace: slice.Namespace, Name: slice.Name}
	var parsed *parsedSlice
	var problems []fieldProblem
	if cur != nil {
		parsed, problems = parseEndpointSlice(cur, family, t.nodeName)
		if v, ok := cur.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				field := "metadata.annotations[" + v1.EndpointsLastChangeTriggerTime + "]"
				problems = append(problems, fieldProblem{Field: field, Value: v, Reason: "not an RFC 3339 time"})
			}
		}
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if cur != nil {
		reportProblems(t.recorder, cur, "EndpointSlice", sliceKey.String(), problems, t.sliceProblems[sliceKey])
		t.sliceProblems[sliceKey] = problems
	} else {
		delete(t.sliceProblems, sliceKey)
	}
	st := t.state[family]
	if st == nil {
		return nil
	}
	if !st.setSlice(svc, slice.Name, parsed) {
		return nil
	}
	t.gen++
	pc := st.touch(svc, t.gen, false)
	if cur != nil {
		if tt, ok := t.triggerTime(cur); ok {
			pc.triggers = append(pc.triggers, trigger{at: tt, gen: t.gen})
		}
	}
	t.updatePendingMetrics()
	return []v1.IPFamily{family}
}

// triggerTime reads endpoints.kubernetes.io/last-change-trigger-time, the
// start of the network programming latency SLI.
func (t *Tracker) triggerTime(slice *discovery.EndpointSlice) (time.Time, bool) {
	s, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	tt, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		klog.V(4).InfoS("Ignoring unparseable trigger time", "endpointSlice", klog.KObj(slice), "value", s, "err", err)
		return time.Time{}, false
	}
	// Older triggers happened before we watched; counting them would report
	// this process's start-up as network programming latency.
	if !tt.After(t.startTime) {
		return time.Time{}, false
	}
	return tt, true
}

// SetNode records what this node looks like for family and reports whether
// it changed. A changed node makes the next snapshot mark every ServicePort
// changed, since topology and node addresses affect all of them.
func (t *Tracker) SetNode(family v1.IPFamily, node Node) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state[family]
	if st == nil || nodeEqual(st.node, node) {
		return false
	}
	st.node = node
	return true
}

// Snapshot builds the model of family as of now, with what changed since the
// last committed snapshot. It returns nil for a family not tracked.
func (t *Tracker) Snapshot(family v1.IPFamily) *Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state[family]
	if st == nil {
		return nil
	}
	return st.snapshot(t.gen)
}

// Commit records that snap, the latest snapshot of its family, was synced
// successfully: the changes it included are no longer pending. Changes of a
// snapshot that is never committed stay pending for the next one.
func (t *Tracker) Commit(snap *Snapshot) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state[snap.Family]
	if st == nil {
		return fmt.Errorf("commit snapshot: family %q not tracked", snap.Family)
	}
	if err := st.commit(snap); err != nil {
		return err
	}
	t.updatePendingMetrics()
	return nil
}

// Pending reports whether family has changes that no committed snapshot holds.
func (t *Tracker) Pending(family v1.IPFamily) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state[family]
	return st != nil && len(st.pending) > 0
}

// updatePendingMetrics reports the family with the most pending changes; the
// metrics have no family label.
func (t *Tracker) updatePendingMetrics() {
	var svcs, eps int
	for _, st := range t.state {
		svcs = max(svcs, st.pendingServices)
		eps = max(eps, st.pendingEndpoints)
	}
	metrics.ServiceChangesPending.Set(float64(svcs))
	metrics.EndpointChangesPending.Set(float64(eps))
}
