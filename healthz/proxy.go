// Package healthz serves svcproxy's health endpoints the way kube-proxy does:
// the proxy's own /healthz and /livez (ProxyHealthServer), and one HTTP server
// per Service with externalTrafficPolicy=Local on its healthCheckNodePort
// (ServiceHealthServer), which cloud load balancers probe to pick nodes.
package healthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/metrics"
)

// ToBeDeletedTaint is put on a node by the cluster autoscaler before it removes
// it; kube-proxy then fails /healthz so load balancers drain the node (KEP-3836).
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxierHealth is the health of the proxier of one IP family.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the /healthz and /livez body. Field names, order and
// omissions are kube-proxy's, so existing probes and scripts keep working.
type ProxyHealth struct {
	// LastUpdated is the most recent successful sync of any family.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set on /healthz only; /livez omits it.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is true when every family is healthy.
	Healthy bool                          `json:"healthy"`
	Status  map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// ProxyHealthServer tracks whether the proxiers keep up with queued changes
// and whether this node should receive load-balancer traffic, and serves both
// on /healthz and /livez. It implements the core's HealthRecorder.
type ProxyHealthServer struct {
	addr          string
	healthTimeout time.Duration
	clock         clock.Clock

	mu sync.RWMutex
	// families are shown in status from the start, in addition to any
	// family reported later through Updated or QueuedUpdate.
	families      []v1.IPFamily
	lastUpdated   map[v1.IPFamily]time.Time
	oldestPending map[v1.IPFamily]time.Time
	nodeEligible  bool
}

// NewProxyHealthServer returns a server for addr ("" or port 0 disables
// serving, not tracking). A family is unhealthy once an update has been
// queued for at least healthTimeout without a completed sync.
func NewProxyHealthServer(addr string, healthTimeout time.Duration, families []v1.IPFamily, clk clock.Clock) *ProxyHealthServer {
	return &ProxyHealthServer{
		addr:          addr,
		healthTimeout: healthTimeout,
		clock:         clk,
		families:      append([]v1.IPFamily(nil), families...),
		lastUpdated:   map[v1.IPFamily]time.Time{},
		oldestPending: map[v1.IPFamily]time.Time{},
		// As in kube-proxy before it had a node manager: eligible while
		// starting, until a node event says otherwise.
		nodeEligible: true,
	}
}

// QueuedUpdate records that family has changes not yet written to the
// kernel. Only the oldest pending time counts, so a steady stream of changes
// cannot hide a sync loop that never completes.
func (hs *ProxyHealthServer) QueuedUpdate(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, pending := hs.oldestPending[family]; !pending {
		hs.oldestPending[family] = hs.clock.Now()
	}
}

// Updated records a successful sync of family, clearing its pending update.
func (hs *ProxyHealthServer) Updated(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.oldestPending, family)
	hs.lastUpdated[family] = hs.clock.Now()
}

// SyncNode records whether this node may receive load-balancer traffic: not
// when its Node object is gone, being deleted, or tainted for removal by the
// cluster autoscaler.
func (hs *ProxyHealthServer) SyncNode(node *v1.Node) {
	eligible := nodeEligible(node)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if eligible != hs.nodeEligible {
		klog.InfoS("Node eligibility for load-balancer traffic changed", "eligible", eligible)
	}
	hs.nodeEligible = eligible
}

func nodeEligible(node *v1.Node) bool {
	if node == nil || !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// NodeEligible reports the node state last given to SyncNode.
func (hs *ProxyHealthServer) NodeEligible() bool {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	return hs.nodeEligible
}

// IsHealthy reports proxier health, ignoring node eligibility; it is what
// per-service health checks report as serviceProxyHealthy.
func (hs *ProxyHealthServer) IsHealthy() bool {
	return hs.Health().Healthy
}

// Health returns the proxier health without node eligibility (NodeEligible
// is nil). LastUpdated is the raw most recent sync; the HTTP handlers replace
// it with the current time when healthy, as kube-proxy does.
func (hs *ProxyHealthServer) Health() ProxyHealth {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	now := hs.clock.Now()
	health := ProxyHealth{CurrentTime: now, Healthy: true, Status: map[v1.IPFamily]ProxierHealth{}}
	for _, family := range hs.knownFamiliesLocked() {
		last := hs.lastUpdated[family]
		if last.After(health.LastUpdated) {
			health.LastUpdated = last
		}
		healthy := true
		if queued, pending := hs.oldestPending[family]; pending && now.Sub(queued) >= hs.healthTimeout {
			healthy = false
			health.Healthy = false
		}
		health.Status[family] = ProxierHealth{LastUpdated: last, Healthy: healthy}
	}
	return health
}

// knownFamiliesLocked lists the configured families and any other family the
// proxiers have reported, so that a family that never completed its first
// sync can still turn unhealthy.
func (hs *ProxyHealthServer) knownFamiliesLocked() []v1.IPFamily {
	families := append([]v1.IPFamily(nil), hs.families...)
	seen := map[v1.IPFamily]bool{}
	for _, f := range families {
		seen[f] = true
	}
	for _, m := range []map[v1.IPFamily]time.Time{hs.lastUpdated, hs.oldestPending} {
		for f := range m {
			if !seen[f] {
				seen[f] = true
				families = append(families, f)
			}
		}
	}
	return families
}

// Handler serves /healthz and /livez.
func (hs *ProxyHealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", hs.serveHealthz)
	mux.HandleFunc("/livez", hs.serveLivez)
	return mux
}

// HealthzHandler serves /healthz alone, for the metrics server to mount.
func (hs *ProxyHealthServer) HealthzHandler() http.Handler {
	return http.HandlerFunc(hs.serveHealthz)
}

// serveHealthz answers 200 only when the proxiers are healthy and the node is
// eligible, so load balancers stop sending to a node being drained.
func (hs *ProxyHealthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	eligible := hs.NodeEligible()
	health.NodeEligible = &eligible
	hs.write(w, health, health.Healthy && eligible, metrics.ProxyHealthzTotal)
}

// serveLivez ignores node eligibility: a drained node's proxy is still alive
// and must not be restarted for it.
func (hs *ProxyHealthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	hs.write(w, health, health.Healthy, metrics.ProxyLivezTotal)
}

func (hs *ProxyHealthServer) write(w http.ResponseWriter, health ProxyHealth, healthy bool, counter *prometheus.CounterVec) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusServiceUnavailable
	if healthy {
		code = http.StatusOK
		// Older kube-proxy reported the last sync-loop run, recent whenever
		// healthy; kube-proxy keeps that meaning and so do we.
		health.LastUpdated = health.CurrentTime
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()
	w.WriteHeader(code)
	body, err := json.Marshal(health)
	if err != nil {
		klog.ErrorS(err, "Failed to encode proxy health")
		return
	}
	_, _ = w.Write(body)
}

// Run listens on the configured address and serves until ctx is done. It
// returns nil at once when serving is disabled ("" or port 0), and the listen
// error when the address cannot be bound, so the caller can log it or exit
// (--bind-address-hard-fail).
func (hs *ProxyHealthServer) Run(ctx context.Context) error {
	enabled, err := addrEnabled(hs.addr)
	if err != nil {
		return fmt.Errorf("proxy healthz address: %w", err)
	}
	if !enabled {
		klog.V(2).InfoS("Proxy health server disabled", "address", hs.addr)
		return nil
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", hs.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil // cancelled while binding
		}
		return fmt.Errorf("start proxy healthz on %s: %w", hs.addr, err)
	}
	klog.InfoS("Serving proxy health", "address", l.Addr().String())
	return hs.Serve(ctx, l)
}

// Serve serves /healthz and /livez on l until ctx is done, then closes l.
func (hs *ProxyHealthServer) Serve(ctx context.Context, l net.Listener) error {
	if err := serveUntilDone(ctx, l, hs.Handler()); err != nil {
		return fmt.Errorf("proxy healthz on %s: %w", l.Addr(), err)
	}
	return nil
}
