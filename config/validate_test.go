package config

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

func i32(v int32) *int32 { return &v }

// TestValidateInvalid changes one field of a defaulted configuration and
// expects exactly one line naming that field and its value.
func TestValidateInvalid(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *v1alpha1.KubeProxyConfiguration)
		want   string
	}{
		{"masquerade bit too high", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MasqueradeBit = i32(32) },
			`invalid configuration: iptables.masqueradeBit: 32: must be within [0, 31]`},
		{"masquerade bit negative", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MasqueradeBit = i32(-1) },
			`invalid configuration: iptables.masqueradeBit: -1: must be within [0, 31]`},
		{"nftables mode", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeNFTables },
			`invalid configuration: mode: "nftables": not supported yet by svcproxy (use iptables or ipvs)`},
		{"unknown mode", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "userspace" },
			`invalid configuration: mode: "userspace": must be iptables or ipvs (blank means iptables)`},
		{"bad cluster CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "203.0.113.0/33" },
			`invalid configuration: clusterCIDR: "203.0.113.0/33": must be a valid CIDR (e.g. 203.0.113.0/25) or an IPv4,IPv6 pair`},
		{"cluster CIDR pair of one family", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "203.0.113.0/25,198.51.100.0/24" },
			`invalid configuration: clusterCIDR: "203.0.113.0/25,198.51.100.0/24": two CIDRs must be one IPv4 and one IPv6`},
		{"three cluster CIDRs", func(c *v1alpha1.KubeProxyConfiguration) {
			c.ClusterCIDR = "203.0.113.0/25,2001:db8:1::/64,198.51.100.0/24"
		},
			`invalid configuration: clusterCIDR: "203.0.113.0/25,2001:db8:1::/64,198.51.100.0/24": must be one CIDR or an IPv4,IPv6 pair`},
		{"nodePortAddresses plain IP", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"192.0.2.0/24", "192.0.2.11"} },
			`invalid configuration: nodePortAddresses[1]: "192.0.2.11": must be a valid CIDR or one of primary, all, localhost`},
		{"nodePortAddresses primary mixed", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"192.0.2.0/24", "primary"} },
			`invalid configuration: nodePortAddresses[1]: "primary": "primary" can't be combined with other entries`},
		{"ipvs exclude CIDR", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.ExcludeCIDRs = []string{"198.18.0.0/15", "nonsense"}
		}, `invalid configuration: ipvs.excludeCIDRs[1]: "nonsense": must be a valid CIDR`},
		{"ipvs scheduler", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.Scheduler = "fifo" },
			`invalid configuration: ipvs.scheduler: "fifo": must be one of rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh (blank means rr)`},
		{"ipvs negative timeout", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.TCPFinTimeout.Duration = -time.Second
		},
			`invalid configuration: ipvs.tcpFinTimeout: -1s: must be greater than or equal to 0`},
		{"iptables zero sync period", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.SyncPeriod.Duration = 0
			c.IPTables.MinSyncPeriod.Duration = 0
		},
			`invalid configuration: iptables.syncPeriod: 0s: must be greater than 0`},
		{"iptables negative min sync period", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MinSyncPeriod.Duration = -time.Second },
			`invalid configuration: iptables.minSyncPeriod: -1s: must be greater than or equal to 0`},
		{"iptables min above sync", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MinSyncPeriod.Duration = time.Minute },
			`invalid configuration: iptables.minSyncPeriod: 1m0s: must be less than or equal to iptables.syncPeriod (30s)`},
		{"ipvs min above sync", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.MinSyncPeriod.Duration = 45 * time.Second
		},
			`invalid configuration: ipvs.minSyncPeriod: 45s: must be less than or equal to ipvs.syncPeriod (30s)`},
		{"zero config sync period", func(c *v1alpha1.KubeProxyConfiguration) { c.ConfigSyncPeriod.Duration = 0 },
			`invalid configuration: configSyncPeriod: 0s: must be greater than 0`},
		{"bind address", func(c *v1alpha1.KubeProxyConfiguration) { c.BindAddress = "node1" },
			`invalid configuration: bindAddress: "node1": must be a valid IP address`},
		{"healthz without port", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "0.0.0.0" },
			`invalid configuration: healthzBindAddress: "0.0.0.0": must be IP:port`},
		{"healthz hostname", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "localhost:10256" },
			`invalid configuration: healthzBindAddress: "localhost:10256": must be IP:port with a valid IP`},
		{"metrics port out of range", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "127.0.0.1:70000" },
			`invalid configuration: metricsBindAddress: "127.0.0.1:70000": must be IP:port with a port within [1, 65535]`},
		{"unknown detect-local mode", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "PodCIDR" },
			`invalid configuration: detectLocalMode: "PodCIDR": must be ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix`},
		{"bridge mode without bridge", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = LocalModeBridgeInterface },
			`invalid configuration: detectLocal.bridgeInterface: "": must be set when detectLocalMode is BridgeInterface`},
		{"prefix mode without prefix", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = LocalModeInterfaceNamePrefix },
			`invalid configuration: detectLocal.interfaceNamePrefix: "": must be set when detectLocalMode is InterfaceNamePrefix`},
		{"negative conntrack max per core", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.MaxPerCore = i32(-1) },
			`invalid configuration: conntrack.maxPerCore: -1: must be greater than or equal to 0`},
		{"negative conntrack min", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.Min = i32(-5) },
			`invalid configuration: conntrack.min: -5: must be greater than or equal to 0`},
		{"negative conntrack established", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: -time.Hour}
		}, `invalid configuration: conntrack.tcpEstablishedTimeout: -1h0m0s: must be greater than or equal to 0`},
		{"negative conntrack close wait", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: -time.Minute}
		}, `invalid configuration: conntrack.tcpCloseWaitTimeout: -1m0s: must be greater than or equal to 0`},
		{"negative conntrack udp", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.UDPTimeout.Duration = -time.Second },
			`invalid configuration: conntrack.udpTimeout: -1s: must be greater than or equal to 0`},
		{"negative conntrack udp stream", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.UDPStreamTimeout.Duration = -time.Second },
			`invalid configuration: conntrack.udpStreamTimeout: -1s: must be greater than or equal to 0`},
		{"oom score adj", func(c *v1alpha1.KubeProxyConfiguration) { c.OOMScoreAdj = i32(1001) },
			`invalid configuration: oomScoreAdj: 1001: must be within [-1000, 1000]`},
		{"negative burst", func(c *v1alpha1.KubeProxyConfiguration) { c.ClientConnection.Burst = -1 },
			`invalid configuration: clientConnection.burst: -1: must be greater than or equal to 0`},
		{"port range", func(c *v1alpha1.KubeProxyConfiguration) { c.PortRange = "30000-" },
			`invalid configuration: portRange: "30000-": must be a valid port range (e.g. 300-2000)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := NewDefault()
			tc.mutate(cfg)
			err := Validate(cfg)
			if err == nil {
				t.Fatalf("Validate accepted the configuration, want %q", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("Validate error\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

func TestValidateValid(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *v1alpha1.KubeProxyConfiguration)
	}{
		{"defaults", func(c *v1alpha1.KubeProxyConfiguration) {}},
		{"blank mode and detect-local mode", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ""; c.DetectLocalMode = "" }},
		{"dual-stack cluster CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "203.0.113.0/25,2001:db8:1::/64" }},
		{"nodePortAddresses keywords", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"primary"} }},
		{"nodePortAddresses localhost with CIDR", func(c *v1alpha1.KubeProxyConfiguration) {
			c.NodePortAddresses = []string{"localhost", "192.0.2.0/24", "2001:db8:2::/64"}
		}},
		{"disabled healthz and metrics", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = ""; c.MetricsBindAddress = "" }},
		{"IPv6 addresses", func(c *v1alpha1.KubeProxyConfiguration) {
			c.BindAddress = "2001:db8:2::11"
			c.HealthzBindAddress = "[::]:10256"
			c.MetricsBindAddress = "[::1]:10249"
		}},
		{"ipvs with every scheduler field", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.Scheduler = "mh"
			c.IPVS.ExcludeCIDRs = []string{"198.18.0.0/15", "2001:db8:6::/64"}
		}},
		// kube-proxy only looks at the section of the mode in use.
		{"ipvs section ignored in iptables mode", func(c *v1alpha1.KubeProxyConfiguration) { c.IPVS.Scheduler = "fifo" }},
		{"iptables periods ignored in ipvs mode", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPTables.MinSyncPeriod.Duration = time.Hour
		}},
		{"bridge mode with bridge", func(c *v1alpha1.KubeProxyConfiguration) {
			c.DetectLocalMode = LocalModeBridgeInterface
			c.DetectLocal.BridgeInterface = "cbr0"
		}},
		{"zero min sync period", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MinSyncPeriod.Duration = 0 }},
		{"conntrack zeros leave the kernel alone", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.MaxPerCore = i32(0)
			c.Conntrack.TCPEstablishedTimeout.Duration = 0
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := NewDefault()
			tc.mutate(cfg)
			if err := Validate(cfg); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	cfg := NewDefault()
	cfg.IPTables.MasqueradeBit = i32(40)
	cfg.Conntrack.Min = i32(-1)
	err := Validate(cfg)
	if err == nil {
		t.Fatal("Validate accepted two invalid values")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		"invalid configuration: iptables.masqueradeBit: 40: must be within [0, 31]",
		"invalid configuration: conntrack.min: -1: must be greater than or equal to 0",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("got lines %q, want %q", lines, want)
	}
	verr, ok := err.(ValidationError)
	if !ok || len(verr) != 2 || verr[1].Field != "conntrack.min" {
		t.Errorf("error is %T %v, want ValidationError with 2 fields", err, err)
	}
}
