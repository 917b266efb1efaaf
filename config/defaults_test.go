package config

import (
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"
)

func TestSetDefaults(t *testing.T) {
	c := NewDefault()
	checks := []struct {
		field     string
		got, want any
	}{
		{"apiVersion", c.APIVersion, "kubeproxy.config.k8s.io/v1alpha1"},
		{"kind", c.Kind, "KubeProxyConfiguration"},
		{"bindAddress", c.BindAddress, "0.0.0.0"},
		{"healthzBindAddress", c.HealthzBindAddress, "0.0.0.0:10256"},
		{"metricsBindAddress", c.MetricsBindAddress, "127.0.0.1:10249"},
		{"mode", c.Mode, ModeIPTables},
		{"detectLocalMode", c.DetectLocalMode, LocalModeClusterCIDR},
		{"iptables.masqueradeBit", *c.IPTables.MasqueradeBit, int32(14)},
		{"iptables.localhostNodePorts", *c.IPTables.LocalhostNodePorts, true},
		{"iptables.syncPeriod", c.IPTables.SyncPeriod.Duration, 30 * time.Second},
		{"iptables.minSyncPeriod", c.IPTables.MinSyncPeriod.Duration, time.Second},
		{"ipvs.syncPeriod", c.IPVS.SyncPeriod.Duration, 30 * time.Second},
		{"ipvs.minSyncPeriod", c.IPVS.MinSyncPeriod.Duration, time.Duration(0)},
		{"ipvs.scheduler", c.IPVS.Scheduler, ""},
		{"conntrack.maxPerCore", *c.Conntrack.MaxPerCore, int32(32768)},
		{"conntrack.min", *c.Conntrack.Min, int32(131072)},
		{"conntrack.tcpEstablishedTimeout", c.Conntrack.TCPEstablishedTimeout.Duration, 24 * time.Hour},
		{"conntrack.tcpCloseWaitTimeout", c.Conntrack.TCPCloseWaitTimeout.Duration, time.Hour},
		{"conntrack.udpTimeout", c.Conntrack.UDPTimeout.Duration, time.Duration(0)},
		{"configSyncPeriod", c.ConfigSyncPeriod.Duration, 15 * time.Minute},
		{"oomScoreAdj", *c.OOMScoreAdj, int32(-999)},
		{"clientConnection.qps", c.ClientConnection.QPS, float32(5)},
		{"clientConnection.burst", c.ClientConnection.Burst, int32(10)},
		{"clientConnection.contentType", c.ClientConnection.ContentType, "application/vnd.kubernetes.protobuf"},
		{"portRange", c.PortRange, ""},
		{"nodePortAddresses", len(c.NodePortAddresses), 0},
		{"logging.format", c.Logging.Format, "text"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.field, ch.got, ch.want)
		}
	}
}

func TestSetDefaultsKeepsSetValues(t *testing.T) {
	c := &v1alpha1.KubeProxyConfiguration{Mode: ModeIPVS}
	c.IPTables.MasqueradeBit = i32(0) // 0 is a valid bit, not "unset"
	c.Conntrack.MaxPerCore = i32(0)   // 0 means leave nf_conntrack_max alone
	c.IPVS.Scheduler = "wlc"
	SetDefaults(c)
	if c.Mode != ModeIPVS || *c.IPTables.MasqueradeBit != 0 || *c.Conntrack.MaxPerCore != 0 || c.IPVS.Scheduler != "wlc" {
		t.Errorf("SetDefaults overwrote set values: mode=%s bit=%d maxPerCore=%d scheduler=%s",
			c.Mode, *c.IPTables.MasqueradeBit, *c.Conntrack.MaxPerCore, c.IPVS.Scheduler)
	}
}

func TestDefaultBindAddresses(t *testing.T) {
	tests := []struct {
		name                     string
		bind, healthz, metrics   string
		wantHealthz, wantMetrics string
	}{
		{"IPv4", "192.0.2.11", "", "", "0.0.0.0:10256", "127.0.0.1:10249"},
		{"IPv6 bind address picks IPv6 wildcards", "2001:db8:2::11", "", "", "[::]:10256", "[::1]:10249"},
		{"bare IP gets the default port", "", "192.0.2.11", "::1", "192.0.2.11:10256", "[::1]:10249"},
		{"host:port kept", "", "192.0.2.11:9000", "0.0.0.0:9001", "192.0.2.11:9000", "0.0.0.0:9001"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &v1alpha1.KubeProxyConfiguration{BindAddress: tc.bind, HealthzBindAddress: tc.healthz, MetricsBindAddress: tc.metrics}
			SetDefaults(c)
			if c.HealthzBindAddress != tc.wantHealthz || c.MetricsBindAddress != tc.wantMetrics {
				t.Errorf("healthz=%q metrics=%q, want %q %q", c.HealthzBindAddress, c.MetricsBindAddress, tc.wantHealthz, tc.wantMetrics)
			}
		})
	}
}

func TestNodeName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ override, want string }{
		{"node1", "node1"},
		{"  Node1.Example  ", "node1.example"},
		{"", strings.ToLower(strings.TrimSpace(host))},
		{"   ", strings.ToLower(strings.TrimSpace(host))},
	}
	for _, tc := range tests {
		t.Run(tc.override, func(t *testing.T) {
			got, err := NodeName(&v1alpha1.KubeProxyConfiguration{HostnameOverride: tc.override})
			if err != nil || got != tc.want {
				t.Errorf("NodeName(%q) = %q, %v; want %q", tc.override, got, err, tc.want)
			}
		})
	}
}
