package config

import (
	goflag "flag"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

const ignoredWithConfig = " This parameter is ignored if a config file is specified by --config."

// AddFlags registers kube-proxy's flags, with its names and defaults, on fs.
// Config-bound flags write into cfg, which AddFlags first fills with
// defaults (so --help shows kube-proxy's); the others write into opts.
// klog's flags (-v, --vmodule, ...) are added too. After parsing, call
// Complete to get the effective configuration.
func AddFlags(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration, opts *Options) {
	SetDefaults(cfg)
	addOptionFlags(fs, opts)
	addGeneralFlags(fs, cfg)
	addProxyFlags(fs, cfg)
	addConntrackFlags(fs, cfg)

	gfs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(gfs)
	fs.AddGoFlagSet(gfs)
}

func addOptionFlags(fs *pflag.FlagSet, opts *Options) {
	fs.StringVar(&opts.ConfigFile, "config", opts.ConfigFile, "The path to the configuration file.")
	fs.StringVar(&opts.WriteConfigTo, "write-config-to", opts.WriteConfigTo, "If set, write the effective configuration to this file (- for stdout) and exit.")
	fs.BoolVar(&opts.Cleanup, "cleanup", opts.Cleanup, "If true cleanup iptables and ipvs rules and exit.")
	fs.BoolVar(&opts.InitOnly, "init-only", opts.InitOnly, "If true, perform any initialization steps that must be done with full root privileges, and then exit. After doing this, you can run svcproxy again with only the CAP_NET_ADMIN capability.")
	fs.StringVar(&opts.Master, "master", opts.Master, "The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&opts.HostnameOverride, "hostname-override", opts.HostnameOverride, "If non-empty, will be used as the name of the Node that svcproxy is running on. If unset, the node name is assumed to be the same as the node's hostname.")

	fs.Int32Var(&opts.HealthzPort, "healthz-port", healthzPort, "The port to bind the health check server. Use 0 to disable.")
	_ = fs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	fs.Int32Var(&opts.MetricsPort, "metrics-port", metricsPort, "The port to bind the metrics server. Use 0 to disable.")
	_ = fs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")
}

func addGeneralFlags(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration) {
	fs.Var(&featureGates{m: &cfg.FeatureGates}, "feature-gates", "A set of key=value pairs that describe feature gates for alpha/experimental features."+ignoredWithConfig)
	fs.StringVar(&cfg.ClientConnection.Kubeconfig, "kubeconfig", cfg.ClientConnection.Kubeconfig, "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag).")
	fs.StringVar(&cfg.ClientConnection.ContentType, "kube-api-content-type", cfg.ClientConnection.ContentType, "Content type of requests sent to apiserver.")
	fs.Int32Var(&cfg.ClientConnection.Burst, "kube-api-burst", cfg.ClientConnection.Burst, "Burst to use while talking with kubernetes apiserver")
	fs.Float32Var(&cfg.ClientConnection.QPS, "kube-api-qps", cfg.ClientConnection.QPS, "QPS to use while talking with kubernetes apiserver")

	fs.StringVar(&cfg.BindAddress, "bind-address", cfg.BindAddress, "Overrides svcproxy's idea of what its node's primary IP is. Note that the name is a historical artifact, and svcproxy does not actually bind any sockets to this IP."+ignoredWithConfig)
	fs.StringVar(&cfg.HealthzBindAddress, "healthz-bind-address", cfg.HealthzBindAddress, "The IP address and port for the health check server to serve on. Set empty to disable."+ignoredWithConfig)
	fs.StringVar(&cfg.MetricsBindAddress, "metrics-bind-address", cfg.MetricsBindAddress, "The IP address and port for the metrics server to serve on. (Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces.) Set empty to disable."+ignoredWithConfig)
	fs.BoolVar(&cfg.BindAddressHardFail, "bind-address-hard-fail", cfg.BindAddressHardFail, "If true svcproxy will treat failure to bind to a port as fatal and exit")
	fs.BoolVar(&cfg.EnableProfiling, "profiling", cfg.EnableProfiling, "If true enables profiling via web interface on /debug/pprof handler."+ignoredWithConfig)
	fs.StringVar(&cfg.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", cfg.ShowHiddenMetricsForVersion, "The previous version for which you want to show hidden metrics (<major>.<minor>, e.g. '1.35')."+ignoredWithConfig)
	fs.DurationVar(&cfg.ConfigSyncPeriod.Duration, "config-sync-period", cfg.ConfigSyncPeriod.Duration, "How often configuration from the apiserver is refreshed.  Must be greater than 0.")
	fs.Int32Var(cfg.OOMScoreAdj, "oom-score-adj", *cfg.OOMScoreAdj, "The oom-score-adj value for svcproxy process. Values must be within the range [-1000, 1000]."+ignoredWithConfig)
}

func addProxyFlags(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration) {
	fs.StringVar((*string)(&cfg.Mode), "proxy-mode", string(cfg.Mode), "Which proxy mode to use: 'iptables' (default) or 'ipvs'."+ignoredWithConfig)

	fs.Int32Var(cfg.IPTables.MasqueradeBit, "iptables-masquerade-bit", *cfg.IPTables.MasqueradeBit, "If using the iptables or ipvs proxy mode, the bit of the fwmark space to mark packets requiring SNAT with.  Must be within the range [0, 31].")
	fs.BoolVar(&cfg.IPTables.MasqueradeAll, "masquerade-all", cfg.IPTables.MasqueradeAll, "SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins.")
	fs.BoolVar(cfg.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *cfg.IPTables.LocalhostNodePorts, "If false, svcproxy will disable the legacy behavior of allowing NodePort services to be accessed via localhost. (Applies only to iptables mode and IPv4.)")
	fs.DurationVar(&cfg.IPTables.SyncPeriod.Duration, "iptables-sync-period", cfg.IPTables.SyncPeriod.Duration, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	fs.DurationVar(&cfg.IPTables.MinSyncPeriod.Duration, "iptables-min-sync-period", cfg.IPTables.MinSyncPeriod.Duration, "The minimum period between iptables rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate iptables resync.")

	fs.DurationVar(&cfg.IPVS.SyncPeriod.Duration, "ipvs-sync-period", cfg.IPVS.SyncPeriod.Duration, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	fs.DurationVar(&cfg.IPVS.MinSyncPeriod.Duration, "ipvs-min-sync-period", cfg.IPVS.MinSyncPeriod.Duration, "The minimum period between IPVS rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate IPVS resync.")
	fs.StringVar(&cfg.IPVS.Scheduler, "ipvs-scheduler", cfg.IPVS.Scheduler, "The ipvs scheduler type when proxy mode is ipvs")
	fs.StringSliceVar(&cfg.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", cfg.IPVS.ExcludeCIDRs, "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules.")
	fs.BoolVar(&cfg.IPVS.StrictARP, "ipvs-strict-arp", cfg.IPVS.StrictARP, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2")
	fs.DurationVar(&cfg.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", cfg.IPVS.TCPTimeout.Duration, "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&cfg.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", cfg.IPVS.TCPFinTimeout.Duration, "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&cfg.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", cfg.IPVS.UDPTimeout.Duration, "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")

	fs.StringVar((*string)(&cfg.DetectLocalMode), "detect-local-mode", string(cfg.DetectLocalMode), "Mode to use to detect local traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix."+ignoredWithConfig)
	fs.StringVar(&cfg.DetectLocal.BridgeInterface, "pod-bridge-interface", cfg.DetectLocal.BridgeInterface, "A bridge interface name. When --detect-local-mode is set to BridgeInterface, svcproxy will consider traffic to be local if it originates from this bridge.")
	fs.StringVar(&cfg.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", cfg.DetectLocal.InterfaceNamePrefix, "An interface name prefix. When --detect-local-mode is set to InterfaceNamePrefix, svcproxy will consider traffic to be local if it originates from any interface whose name begins with this prefix.")
	fs.StringVar(&cfg.ClusterCIDR, "cluster-cidr", cfg.ClusterCIDR, "The CIDR range of the pods in the cluster. (For dual-stack clusters, this can be a comma-separated dual-stack pair of CIDR ranges.). When --detect-local-mode is set to ClusterCIDR, svcproxy will consider traffic to be local if its source IP is in this range. (Otherwise it is not used.)"+ignoredWithConfig)
	fs.StringSliceVar(&cfg.NodePortAddresses, "nodeport-addresses", cfg.NodePortAddresses, "A list of CIDR ranges that contain valid node IPs, or alternatively, the single string 'primary'. If set to a list of CIDRs, connections to NodePort services will only be accepted on node IPs in one of the indicated ranges. If set to 'primary', NodePort services will only be accepted on the node's primary IP(s) according to the Node object. If unset, NodePort connections will be accepted on all local IPs."+ignoredWithConfig)
}

func addConntrackFlags(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration) {
	c := &cfg.Conntrack
	fs.Int32Var(c.MaxPerCore, "conntrack-max-per-core", *c.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(c.Min, "conntrack-min", *c.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&c.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", c.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&c.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", c.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	fs.BoolVar(&c.TCPBeLiberal, "conntrack-tcp-be-liberal", c.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&c.UDPTimeout.Duration, "conntrack-udp-timeout", c.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", c.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
}

// Complete resolves the parsed flags into the effective configuration, with
// kube-proxy's precedence: without --config the flags (bound into flagCfg)
// make the configuration; with --config the file wins over every
// config-bound flag except --hostname-override and klog's flags. The result
// is defaulted but not validated.
func Complete(fs *pflag.FlagSet, flagCfg *v1alpha1.KubeProxyConfiguration, opts *Options) (*v1alpha1.KubeProxyConfiguration, error) {
	var cfg *v1alpha1.KubeProxyConfiguration
	if opts.ConfigFile != "" {
		c, err := Load(opts.ConfigFile)
		if err != nil {
			return nil, err
		}
		SetDefaults(c)
		cfg = c
	} else {
		cfg = flagCfg.DeepCopy()
		applyDeprecatedPorts(fs, cfg, opts)
		applyModeDefaults(cfg)
	}
	cfg.APIVersion = v1alpha1.SchemeGroupVersion.String()
	cfg.Kind = "KubeProxyConfiguration"

	if opts.HostnameOverride != "" {
		name := strings.TrimSpace(opts.HostnameOverride)
		if name == "" {
			return nil, fmt.Errorf("invalid configuration: hostnameOverride: %q: must not be blank", opts.HostnameOverride)
		}
		cfg.HostnameOverride = name
	}
	cfg.HostnameOverride = strings.ToLower(strings.TrimSpace(cfg.HostnameOverride))

	if err := syncLogging(fs, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// applyDeprecatedPorts honours --healthz-port/--metrics-port when set
// explicitly: 0 disables the server, any other value replaces the port.
func applyDeprecatedPorts(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration, opts *Options) {
	if fs.Changed("healthz-port") {
		cfg.HealthzBindAddress = withPort(cfg.HealthzBindAddress, opts.HealthzPort)
	}
	if fs.Changed("metrics-port") {
		cfg.MetricsBindAddress = withPort(cfg.MetricsBindAddress, opts.MetricsPort)
	}
}

func withPort(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// syncLogging makes klog's -v/--vmodule and cfg.Logging agree: a flag given
// on the command line wins and is recorded in cfg; otherwise the value from
// the config file is applied to klog.
func syncLogging(fs *pflag.FlagSet, cfg *v1alpha1.KubeProxyConfiguration) error {
	if f := fs.Lookup("v"); f != nil {
		level := logsapi.VerbosityLevelPflag(&cfg.Logging.Verbosity)
		if err := syncFlag(f, level); err != nil {
			return err
		}
	}
	if f := fs.Lookup("vmodule"); f != nil {
		vmodule := logsapi.VModuleConfigurationPflag(&cfg.Logging.VModule)
		if err := syncFlag(f, vmodule); err != nil {
			return err
		}
	}
	return nil
}

func syncFlag(f *pflag.Flag, field pflag.Value) error {
	if f.Changed {
		if err := field.Set(f.Value.String()); err != nil {
			return fmt.Errorf("invalid configuration: logging from --%s: %q: %w", f.Name, f.Value.String(), err)
		}
		return nil
	}
	if v := field.String(); v != "" && v != "0" {
		if err := f.Value.Set(v); err != nil {
			return fmt.Errorf("apply logging %s %q: %w", f.Name, v, err)
		}
	}
	return nil
}

// featureGates is the --feature-gates value: comma-separated name=bool pairs.
type featureGates struct{ m *map[string]bool }

func (f *featureGates) String() string {
	if f.m == nil || len(*f.m) == 0 {
		return ""
	}
	pairs := make([]string, 0, len(*f.m))
	for k, v := range *f.m {
		pairs = append(pairs, k+"="+strconv.FormatBool(v))
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

func (f *featureGates) Set(s string) error {
	if *f.m == nil {
		*f.m = map[string]bool{}
	}
	for _, pair := range strings.Split(s, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return fmt.Errorf("missing bool value for %s", pair)
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("invalid value of %s=%s: %w", k, v, err)
		}
		(*f.m)[strings.TrimSpace(k)] = b
	}
	return nil
}

func (f *featureGates) Type() string { return "mapStringBool" }
