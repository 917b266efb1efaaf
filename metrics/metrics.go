// Package metrics declares svcproxy's Prometheus metrics. Names and labels are
// kube-proxy's (kubeproxy_ prefix) so existing dashboards and alerts keep working;
// metrics of our own carry the svcproxy_ prefix.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const (
	kubeProxy = "kubeproxy"
	ours      = "svcproxy"
)

// Registry holds every svcproxy metric plus the Go and process collectors.
var Registry = prometheus.NewRegistry()

var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

func newHistogram(ns, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: name, Help: help, Buckets: buckets}, labels)
}

func newGauge(ns, name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, labels)
}

func newCounter(ns, name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, labels)
}

// networkProgrammingBuckets are kube-proxy's: fine below a minute, coarse up to five.
func networkProgrammingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

var (
	SyncProxyRulesLatency        = newHistogram(kubeProxy, "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets, "ip_family")
	SyncFullProxyRulesLatency    = newHistogram(kubeProxy, "sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets, "ip_family")
	SyncPartialProxyRulesLatency = newHistogram(kubeProxy, "sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets, "ip_family")
	SyncProxyRulesLastTimestamp  = newGauge(kubeProxy, "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", "ip_family")
	SyncProxyRulesLastQueued     = newGauge(kubeProxy, "sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", "ip_family")
	NetworkProgrammingLatency    = newHistogram(kubeProxy, "network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", networkProgrammingBuckets(), "ip_family")

	IPTablesRestoreFailuresTotal        = newCounter(kubeProxy, "sync_proxy_rules_iptables_restore_failures_total", "Cumulative proxy iptables restore failures", "ip_family")
	IPTablesPartialRestoreFailuresTotal = newCounter(kubeProxy, "sync_proxy_rules_iptables_partial_restore_failures_total", "Cumulative proxy iptables partial restore failures", "ip_family")
	IPTablesRulesTotal                  = newGauge(kubeProxy, "sync_proxy_rules_iptables_total", "Total number of iptables rules owned by svcproxy", "ip_family", "table")
	IPTablesRulesLastSync               = newGauge(kubeProxy, "sync_proxy_rules_iptables_last", "Number of iptables rules written by svcproxy in last sync", "ip_family", "table")
	SyncProxyRulesNoLocalEndpoints      = newGauge(kubeProxy, "sync_proxy_rules_no_local_endpoints_total", "Number of services with a Local traffic policy and no endpoints", "ip_family", "traffic_policy")

	EndpointChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: kubeProxy, Name: "sync_proxy_rules_endpoint_changes_pending", Help: "Pending proxy rules Endpoint changes"})
	EndpointChangesTotal   = prometheus.NewCounter(prometheus.CounterOpts{Namespace: kubeProxy, Name: "sync_proxy_rules_endpoint_changes_total", Help: "Cumulative proxy rules Endpoint changes"})
	ServiceChangesPending  = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: kubeProxy, Name: "sync_proxy_rules_service_changes_pending", Help: "Pending proxy rules Service changes"})
	ServiceChangesTotal    = prometheus.NewCounter(prometheus.CounterOpts{Namespace: kubeProxy, Name: "sync_proxy_rules_service_changes_total", Help: "Cumulative proxy rules Service changes"})

	ProxyHealthzTotal = newCounter(kubeProxy, "proxy_healthz_total", "Cumulative proxy healthz HTTP status", "code")
	ProxyLivezTotal   = newCounter(kubeProxy, "proxy_livez_total", "Cumulative proxy livez HTTP status", "code")

	ConntrackReconcilerSyncDuration = newHistogram(kubeProxy, "conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", syncBuckets, "ip_family")
	ConntrackReconcilerDeletedTotal = newCounter(kubeProxy, "conntrack_reconciler_deleted_entries_total", "Cumulative conntrack flows deleted by conntrack reconciler", "ip_family")

	// Ours: what each sync cost the kernel.
	SyncRestoreBytes  = newGauge(ours, "sync_proxy_rules_restore_bytes", "Bytes fed to iptables-restore in the last sync", "ip_family")
	IPVSKernelCalls   = newCounter(ours, "ipvs_kernel_calls_total", "Netlink calls made to program IPVS, ipsets and addresses", "ip_family", "operation")
	IPVSKernelErrors  = newCounter(ours, "ipvs_kernel_errors_total", "Failed netlink calls made to program IPVS, ipsets and addresses", "ip_family", "operation")
	SyncFailuresTotal = newCounter(ours, "sync_proxy_rules_failures_total", "Syncs that failed and will be retried", "ip_family")
)

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		SyncProxyRulesLatency, SyncFullProxyRulesLatency, SyncPartialProxyRulesLatency,
		SyncProxyRulesLastTimestamp, SyncProxyRulesLastQueued, NetworkProgrammingLatency,
		IPTablesRestoreFailuresTotal, IPTablesPartialRestoreFailuresTotal,
		IPTablesRulesTotal, IPTablesRulesLastSync, SyncProxyRulesNoLocalEndpoints,
		EndpointChangesPending, EndpointChangesTotal, ServiceChangesPending, ServiceChangesTotal,
		ProxyHealthzTotal, ProxyLivezTotal,
		ConntrackReconcilerSyncDuration, ConntrackReconcilerDeletedTotal,
		SyncRestoreBytes, IPVSKernelCalls, IPVSKernelErrors, SyncFailuresTotal,
	)
}
