package config

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// parse registers the flags on a fresh flag set, parses args and completes
// the configuration, as the svcproxy command does.
func parse(t *testing.T, args ...string) (*v1alpha1.KubeProxyConfiguration, *Options, *pflag.FlagSet, error) {
	t.Helper()
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	flagCfg, opts := &v1alpha1.KubeProxyConfiguration{}, &Options{}
	AddFlags(fs, flagCfg, opts)
	// klog's verbosity is process-global; put it back for later tests.
	t.Cleanup(func() {
		_ = fs.Lookup("v").Value.Set("0")
		_ = fs.Lookup("vmodule").Value.Set("")
	})
	if err := fs.Parse(args); err != nil {
		return nil, nil, fs, err
	}
	cfg, err := Complete(fs, flagCfg, opts)
	return cfg, opts, fs, err
}

func TestFlagNames(t *testing.T) {
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	AddFlags(fs, &v1alpha1.KubeProxyConfiguration{}, &Options{})
	want := []string{
		"kubeconfig", "master", "config", "write-config-to", "proxy-mode", "hostname-override",
		"bind-address", "bind-address-hard-fail", "healthz-bind-address", "metrics-bind-address",
		"cluster-cidr", "detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix",
		"masquerade-all", "iptables-masquerade-bit", "iptables-sync-period", "iptables-min-sync-period",
		"iptables-localhost-nodeports", "ipvs-scheduler", "ipvs-sync-period", "ipvs-min-sync-period",
		"ipvs-strict-arp", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout",
		"ipvs-exclude-cidrs", "nodeport-addresses", "conntrack-max-per-core", "conntrack-min",
		"conntrack-tcp-timeout-established", "conntrack-tcp-timeout-close-wait", "conntrack-tcp-be-liberal",
		"conntrack-udp-timeout", "conntrack-udp-timeout-stream", "config-sync-period", "oom-score-adj",
		"profiling", "kube-api-qps", "kube-api-burst", "kube-api-content-type", "cleanup", "init-only",
		"feature-gates", "v", "vmodule",
	}
	for _, name := range want {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	if f := fs.Lookup("v"); f != nil && f.Shorthand != "v" {
		t.Errorf("-v shorthand = %q", f.Shorthand)
	}
}

// TestFlagDefaultsMatchSetDefaults: with no flags the effective
// configuration is exactly kube-proxy's defaults.
func TestFlagDefaultsMatchSetDefaults(t *testing.T) {
	cfg, _, _, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if want := NewDefault(); !apiequality.Semantic.DeepEqual(cfg, want) {
		t.Errorf("flag defaults differ from SetDefaults:\ngot  %+v\nwant %+v", cfg, want)
	}
}

func TestFlagPrecedence(t *testing.T) {
	const kubeadm = "testdata/kubeadm-config.conf"
	tests := []struct {
		name  string
		args  []string
		check func(*v1alpha1.KubeProxyConfiguration, *Options) string
	}{
		{
			name: "flags make the config without --config",
			args: []string{"--proxy-mode=ipvs", "--ipvs-scheduler=wlc", "--cluster-cidr=203.0.113.0/25,2001:db8:1::/64",
				"--iptables-masquerade-bit=10", "--nodeport-addresses=192.0.2.0/24,2001:db8:2::/64",
				"--conntrack-max-per-core=0", "--ipvs-sync-period=10s", "--iptables-localhost-nodeports=false",
				"--kubeconfig=/etc/svcproxy/kubeconfig", "--conntrack-tcp-timeout-established=2h"},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if c.Mode != ModeIPVS || c.IPVS.Scheduler != "wlc" || c.ClusterCIDR != "203.0.113.0/25,2001:db8:1::/64" ||
					*c.IPTables.MasqueradeBit != 10 || strings.Join(c.NodePortAddresses, " ") != "192.0.2.0/24 2001:db8:2::/64" ||
					*c.Conntrack.MaxPerCore != 0 || c.IPVS.SyncPeriod.Duration != 10*time.Second ||
					*c.IPTables.LocalhostNodePorts || c.ClientConnection.Kubeconfig != "/etc/svcproxy/kubeconfig" ||
					c.Conntrack.TCPEstablishedTimeout.Duration != 2*time.Hour {
					return "flags not applied"
				}
				return ""
			},
		},
		{
			name: "empty --metrics-bind-address disables metrics",
			args: []string{"--metrics-bind-address="},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if c.MetricsBindAddress != "" {
					return "metricsBindAddress = " + c.MetricsBindAddress
				}
				return ""
			},
		},
		{
			name: "config file wins over config flags",
			args: []string{"--config", kubeadm, "--proxy-mode=ipvs", "--cluster-cidr=198.51.100.0/24",
				"--iptables-masquerade-bit=3", "--kubeconfig=/elsewhere", "--metrics-bind-address=0.0.0.0:9999"},
			check: func(c *v1alpha1.KubeProxyConfiguration, o *Options) string {
				if c.Mode != ModeIPTables || c.ClusterCIDR != "203.0.113.0/25" || *c.IPTables.MasqueradeBit != 14 ||
					c.ClientConnection.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" ||
					c.MetricsBindAddress != "127.0.0.1:10249" || o.ConfigFile != kubeadm {
					return "a flag overrode the config file"
				}
				return ""
			},
		},
		{
			name: "--hostname-override wins over the file, trimmed and lowercased",
			args: []string{"--config", kubeadm, "--hostname-override", "  Node1  "},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if c.HostnameOverride != "node1" {
					return "hostnameOverride = " + c.HostnameOverride
				}
				return ""
			},
		},
		{
			name: "non-config flags apply with --config",
			args: []string{"--config", kubeadm, "--master=https://192.0.2.1:6443", "--cleanup", "--init-only", "--write-config-to=-"},
			check: func(_ *v1alpha1.KubeProxyConfiguration, o *Options) string {
				if o.Master != "https://192.0.2.1:6443" || !o.Cleanup || !o.InitOnly || o.WriteConfigTo != "-" {
					return "options not set"
				}
				return ""
			},
		},
		{
			name: "-v wins over the file and is recorded in the config",
			args: []string{"--config", "testdata/ipvs-config.conf", "-v=4"},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if c.Logging.Verbosity != 4 {
					return "verbosity not taken from -v"
				}
				return ""
			},
		},
		{
			name: "deprecated port flags",
			args: []string{"--healthz-port=0", "--metrics-port=9999"},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if c.HealthzBindAddress != "" || c.MetricsBindAddress != "127.0.0.1:9999" {
					return "healthz=" + c.HealthzBindAddress + " metrics=" + c.MetricsBindAddress
				}
				return ""
			},
		},
		{
			name: "feature gates",
			args: []string{"--feature-gates=MultiCIDRServiceAllocator=true,PreferSameTrafficDistribution=false"},
			check: func(c *v1alpha1.KubeProxyConfiguration, _ *Options) string {
				if len(c.FeatureGates) != 2 || !c.FeatureGates["MultiCIDRServiceAllocator"] || c.FeatureGates["PreferSameTrafficDistribution"] {
					return "featureGates not parsed"
				}
				return ""
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, opts, _, err := parse(t, tc.args...)
			if err != nil {
				t.Fatalf("parse %v: %v", tc.args, err)
			}
			if msg := tc.check(cfg, opts); msg != "" {
				t.Errorf("%s: %+v", msg, cfg)
			}
		})
	}
}

func TestConfigVerbosityAppliedToKlog(t *testing.T) {
	_, _, fs, err := parse(t, "--config", "testdata/ipvs-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	if got := fs.Lookup("v").Value.String(); got != "2" {
		t.Errorf("klog -v = %s, want 2 from logging.verbosity", got)
	}
}

func TestCompleteErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"blank hostname override", []string{"--hostname-override=   "}, `invalid configuration: hostnameOverride: "   ": must not be blank`},
		{"missing config file", []string{"--config=testdata/absent.conf"}, "read config file"},
		{"bad integer", []string{"--iptables-masquerade-bit=abc"}, `invalid argument "abc" for "--iptables-masquerade-bit"`},
		{"bad feature gate", []string{"--feature-gates=Foo"}, "missing bool value for Foo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := parse(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want containing %q", err, tc.want)
			}
		})
	}
}
