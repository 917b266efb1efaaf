// Package conntrack keeps the kernel's connection tracking in step with the
// proxy rules: it deletes UDP and SCTP flows that still point at endpoints
// or rules that are gone, and sets the conntrack sysctls kube-proxy sets.
// It serves both iptables and IPVS modes and knows neither.
package conntrack

import (
	"fmt"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
)

// DisableEnv is the test hook read by DisableFromEnv.
const DisableEnv = "SVCPROXY_DISABLE_CONNTRACK_CLEANUP"

// Cleaner deletes stale conntrack flows of one IP family after each
// successful data-plane sync.
type Cleaner struct {
	family   v1.IPFamily
	h        Handle
	disabled bool
}

// Option configures a Cleaner.
type Option func(*Cleaner)

// DisableFromEnv is a TEST HOOK, not a feature: when the environment variable
// SVCPROXY_DISABLE_CONNTRACK_CLEANUP is "1" at construction time (read once),
// the Cleaner computes its filters but deletes nothing. End-to-end tests use
// it to show that a UDP client gets stuck on a replaced backend without
// cleanup. Production wiring passes it so tests can flip it without a flag.
func DisableFromEnv() Option {
	disabled := os.Getenv(DisableEnv) == "1"
	return func(c *Cleaner) { c.disabled = c.disabled || disabled }
}

// NewCleaner returns a Cleaner of family's flows over h.
func NewCleaner(family v1.IPFamily, h Handle, opts ...Option) *Cleaner {
	c := &Cleaner{family: family, h: h}
	for _, o := range opts {
		o(c)
	}
	if c.disabled {
		klog.InfoS("Conntrack cleanup DISABLED by test hook; UDP and SCTP clients may stick to removed endpoints",
			"ipFamily", family, "env", DisableEnv)
	}
	return c
}

// CleanStale deletes the flows Filters(snap) selects and returns how many it
// deleted. Call it only after snap was synced to the data plane: deleting
// earlier lets the next packet recreate the flow through the old rules.
// The table is listed once, every filter matched in one pass, and the
// matching flows deleted in one batch.
func (c *Cleaner) CleanStale(snap *proxier.Snapshot) (deleted int, err error) {
	if snap.Family != c.family {
		return 0, fmt.Errorf("clean stale %s conntrack flows: snapshot is %s", c.family, snap.Family)
	}
	filters := Filters(snap)
	if len(filters) == 0 {
		return 0, nil
	}
	if c.disabled {
		klog.V(2).InfoS("Skipping conntrack cleanup (test hook)", "ipFamily", c.family, "filters", len(filters))
		return 0, nil
	}
	family := string(c.family)
	start := time.Now()
	defer func() {
		metrics.ConntrackReconcilerSyncDuration.WithLabelValues(family).Observe(time.Since(start).Seconds())
		metrics.ConntrackReconcilerDeletedTotal.WithLabelValues(family).Add(float64(deleted))
	}()

	flows, err := c.h.List(c.family)
	if err != nil {
		return 0, fmt.Errorf("clean stale %s conntrack flows: %w", c.family, err)
	}
	stale := Select(filters, flows)
	if klogV := klog.V(4); klogV.Enabled() {
		for _, fl := range stale {
			klogV.InfoS("Deleting stale conntrack flow", "ipFamily", c.family, "flow", fl.String())
		}
	}
	if len(stale) > 0 {
		deleted, err = c.h.Delete(c.family, stale)
	}
	klog.V(2).InfoS("Cleaned stale conntrack flows", "ipFamily", c.family, "filters", len(filters),
		"flows", len(flows), "matched", len(stale), "deleted", deleted, "elapsed", time.Since(start))
	if err != nil {
		return deleted, fmt.Errorf("clean stale %s conntrack flows: %w", c.family, err)
	}
	return deleted, nil
}

// Wrap returns a DataPlane that runs dp.Sync and, when it succeeds, cleans
// stale flows of the synced snapshot. A cleanup error is logged, not
// returned: the rules are in place, and failing the sync would only force a
// full resync without making the next cleanup any likelier to work.
func (c *Cleaner) Wrap(dp proxier.DataPlane) proxier.DataPlane {
	return &cleaningDataPlane{dp: dp, c: c}
}

type cleaningDataPlane struct {
	dp proxier.DataPlane
	c  *Cleaner
}

func (d *cleaningDataPlane) Sync(snap *proxier.Snapshot) (proxier.SyncResult, error) {
	res, err := d.dp.Sync(snap)
	if err != nil {
		return res, err
	}
	if _, cerr := d.c.CleanStale(snap); cerr != nil {
		klog.ErrorS(cerr, "Failed to clean stale conntrack flows; UDP/SCTP clients may keep using removed endpoints until their flows time out",
			"ipFamily", snap.Family)
	}
	return res, nil
}

// Verify passes the wrapped data plane's proxier.Verifier through, so
// wrapping does not hide it from the core's verification loop.
func (d *cleaningDataPlane) Verify() (bool, error) {
	if v, ok := d.dp.(proxier.Verifier); ok {
		return v.Verify()
	}
	return false, nil
}
