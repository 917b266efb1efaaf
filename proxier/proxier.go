package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier/runner"
)

// NodeWaitTimeout is how long Run waits for the Node before syncing without
// it, like kube-proxy's wait for node IPs.
const NodeWaitTimeout = 30 * time.Second

// Defaults for unset Options periods.
const (
	defaultRetryPeriod   = time.Second
	defaultMaxSyncPeriod = time.Hour
)

// Options configures a Proxier.
type Options struct {
	NodeName string
	// Families lists the IP families to proxy, primary first.
	Families   []v1.IPFamily
	DataPlanes map[v1.IPFamily]DataPlane
	// BindAddress, when set and not unspecified, is the primary node IP of its family.
	BindAddress   netip.Addr
	MinSyncPeriod time.Duration
	RetryPeriod   time.Duration
	MaxSyncPeriod time.Duration
	// VerifyPeriod is how often data planes that implement Verifier are
	// asked whether the kernel lost their rules; 0 disables it.
	VerifyPeriod  time.Duration
	Health        HealthRecorder
	ServiceHealth ServiceHealthSyncer
	Recorder      record.EventRecorder
	Clock         clock.Clock
	// OnNodeIPsChanged is called once if the node's IPs change after Run
	// started syncing; kube-proxy exits then, so the process can restart
	// with the new addresses.
	OnNodeIPsChanged func()
}

// Proxier ties the trackers to the data planes: informer handlers feed it,
// and Run syncs every family through the bounded-frequency runner.
type Proxier struct {
	opts    Options
	clock   clock.Clock
	tracker *Tracker
	runner  *runner.Runner
	ready   chan struct{} // signalled when a synced flag or the node arrives

	mu             sync.Mutex
	servicesSynced bool
	slicesSynced   bool
	nodeSeen       bool
	initialized    bool
	node           *v1.Node
	nodeIPs        map[v1.IPFamily][]netip.Addr // at initialization
	ipsChanged     bool

	// Touched only by the runner's goroutine.
	lastSynced   map[v1.IPFamily]*Snapshot
	healthPorts  map[types.NamespacedName]uint16
	healthCounts map[types.NamespacedName]int
	healthSent   bool
}

// New builds a Proxier; zero periods get defaults (no minimum, 1s retry, 1h maximum).
func New(opts Options) *Proxier {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.RetryPeriod <= 0 {
		opts.RetryPeriod = defaultRetryPeriod
	}
	if opts.MaxSyncPeriod <= 0 {
		opts.MaxSyncPeriod = defaultMaxSyncPeriod
	}
	p := &Proxier{
		opts:       opts,
		clock:      opts.Clock,
		tracker:    NewTracker(opts.NodeName, opts.Families, opts.Recorder, opts.Clock),
		ready:      make(chan struct{}, 1),
		lastSynced: map[v1.IPFamily]*Snapshot{},
	}
	for _, f := range opts.Families {
		p.tracker.SetNode(f, NewNode(opts.NodeName, nil, f, opts.BindAddress))
	}
	p.runner = runner.New("sync-runner", p.syncAll, opts.MinSyncPeriod, opts.RetryPeriod, opts.MaxSyncPeriod, opts.Clock)
	return p
}

// Tracker exposes the change tracker, for tests and debugging endpoints.
func (p *Proxier) Tracker() *Tracker { return p.tracker }

// Run waits until Services, EndpointSlices and the Node are known, then
// syncs until ctx is done. It returns ctx's error.
func (p *Proxier) Run(ctx context.Context) error {
	if err := p.waitForInitialState(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	p.initialized = true
	p.nodeIPs = p.currentNodeIPs()
	p.mu.Unlock()
	klog.InfoS("Starting to sync proxy rules", "node", p.opts.NodeName, "families", p.opts.Families)
	for _, f := range p.opts.Families {
		if p.opts.Health != nil {
			p.opts.Health.Updated(f)
		}
	}
	p.runner.Run()
	if p.opts.VerifyPeriod > 0 {
		go p.verifyLoop(ctx)
	}
	p.runner.Loop(ctx)
	return ctx.Err()
}

// verifyLoop asks each data plane that can tell whether the kernel still
// holds its rules, and queues a sync of the families that lost them (kube-proxy
// does this for its canary chains; we also notice a flushed dispatch chain).
func (p *Proxier) verifyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.clock.After(p.opts.VerifyPeriod):
		}
		var lost []v1.IPFamily
		for _, f := range p.opts.Families {
			v, ok := p.opts.DataPlanes[f].(Verifier)
			if !ok {
				continue
			}
			need, err := v.Verify()
			if err != nil {
				klog.ErrorS(err, "Failed to verify kernel state", "ipFamily", f)
				continue
			}
			if need {
				lost = append(lost, f)
			}
		}
		p.queue(lost)
	}
}

func (p *Proxier) waitForInitialState(ctx context.Context) error {
	nodeTimer := p.clock.NewTimer(NodeWaitTimeout)
	defer nodeTimer.Stop()
	nodeTimedOut := false
	for {
		p.mu.Lock()
		done := p.servicesSynced && p.slicesSynced && (p.nodeSeen || nodeTimedOut)
		p.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.ready:
		case <-nodeTimer.C():
			nodeTimedOut = true
			klog.InfoS("Node not found, syncing without it; set --bind-address if node IPs are wrong", "node", p.opts.NodeName, "timeout", NodeWaitTimeout)
		}
	}
}

func (p *Proxier) signalReady() {
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

// queue requests a sync for families that changed, once initialized.
func (p *Proxier) queue(families []v1.IPFamily) {
	if len(families) == 0 {
		return
	}
	p.mu.Lock()
	initialized := p.initialized
	p.mu.Unlock()
	if !initialized {
		return // the first sync covers everything
	}
	now := float64(p.clock.Now().UnixNano()) / 1e9
	for _, f := range families {
		if p.opts.Health != nil {
			p.opts.Health.QueuedUpdate(f)
		}
		metrics.SyncProxyRulesLastQueued.WithLabelValues(string(f)).Set(now)
	}
	p.runner.Run()
}

// syncAll syncs every family; one failing does not stop the others. An error
// makes the runner retry.
func (p *Proxier) syncAll() error {
	var errs []error
	for _, f := range p.opts.Families {
		if err := p.syncFamily(f); err != nil {
			errs = append(errs, fmt.Errorf("sync %s: %w", f, err))
		}
	}
	p.syncServiceHealth()
	return errors.Join(errs...)
}

func (p *Proxier) syncFamily(family v1.IPFamily) error {
	dp := p.opts.DataPlanes[family]
	if dp == nil {
		metrics.SyncFailuresTotal.WithLabelValues(string(family)).Inc()
		return errors.New("no data plane configured")
	}
	snap := p.tracker.Snapshot(family)
	start := p.clock.Now()
	result, err := dp.Sync(snap)
	elapsed := p.clock.Since(start)
	metrics.SyncProxyRulesLatency.WithLabelValues(string(family)).Observe(elapsed.Seconds())
	if err != nil {
		metrics.SyncFailuresTotal.WithLabelValues(string(family)).Inc()
		return err
	}
	if err := p.tracker.Commit(snap); err != nil {
		return err
	}
	p.lastSynced[family] = snap
	if p.opts.Health != nil {
		p.opts.Health.Updated(family)
		// A change that came in while this sync ran is not in snap: it still waits
		// (counted from now, at the latest), whatever its own sync will do.
		if p.tracker.Pending(family) {
			p.opts.Health.QueuedUpdate(family)
		}
	}
	p.recordSyncMetrics(snap, result, elapsed)
	klog.V(2).InfoS("Synced proxy rules", "ipFamily", family, "full", result.Full, "elapsed", elapsed,
		"services", len(snap.Services), "changed", snap.Changed.Len(), "removed", len(snap.Removed))
	return nil
}

// iptablesTables are the SyncResult.Rules keys reported as iptables rule counts.
var iptablesTables = []string{"filter", "nat", "mangle", "raw", "security"}

func (p *Proxier) recordSyncMetrics(snap *Snapshot, result SyncResult, elapsed time.Duration) {
	family := string(snap.Family)
	if result.Full {
		metrics.SyncFullProxyRulesLatency.WithLabelValues(family).Observe(elapsed.Seconds())
	} else {
		metrics.SyncPartialProxyRulesLatency.WithLabelValues(family).Observe(elapsed.Seconds())
	}
	now := p.clock.Now()
	metrics.SyncProxyRulesLastTimestamp.WithLabelValues(family).Set(float64(now.UnixNano()) / 1e9)
	for _, times := range snap.TriggerTimes {
		for _, t := range times {
			metrics.NetworkProgrammingLatency.WithLabelValues(family).Observe(now.Sub(t).Seconds())
		}
	}
	for table, n := range result.Rules {
		if !slices.Contains(iptablesTables, table) {
			continue
		}
		metrics.IPTablesRulesLastSync.WithLabelValues(family, table).Set(float64(n))
		// A full sync writes every rule, so it also gives the total.
		if result.Full {
			metrics.IPTablesRulesTotal.WithLabelValues(family, table).Set(float64(n))
		}
	}
	if result.Bytes > 0 {
		metrics.SyncRestoreBytes.WithLabelValues(family).Set(float64(result.Bytes))
	}
	if result.NoLocalEndpoints != nil {
		for _, policy := range []string{"internal", "external"} {
			metrics.SyncProxyRulesNoLocalEndpoints.WithLabelValues(family, policy).Set(float64(result.NoLocalEndpoints[policy]))
		}
	}
}

func logSyncError(err error, msg string) { klog.ErrorS(err, msg) }
