package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// FieldError is one invalid value: the field's path in the YAML form of
// KubeProxyConfiguration, the value, and why it is wrong.
type FieldError struct {
	Field  string
	Value  string
	Detail string
}

func (e FieldError) Error() string {
	return fmt.Sprintf("invalid configuration: %s: %s: %s", e.Field, e.Value, e.Detail)
}

// ValidationError lists every invalid value, one line each.
type ValidationError []FieldError

func (v ValidationError) Error() string {
	lines := make([]string, len(v))
	for i, e := range v {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// IPVS schedulers the kernel ships (ip_vs_*.ko); "" means rr.
var ipvsSchedulers = map[string]bool{
	"": true, "rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true,
	"sh": true, "dh": true, "sed": true, "nq": true, "mh": true,
}

// validator collects FieldErrors; its methods each check one kind of value.
type validator struct{ errs ValidationError }

func (v *validator) add(field string, value any, detail string) {
	var s string
	switch x := value.(type) {
	case string:
		s = strconv.Quote(x)
	case metav1.Duration:
		s = x.Duration.String()
	default:
		s = fmt.Sprint(x)
	}
	v.errs = append(v.errs, FieldError{Field: field, Value: s, Detail: detail})
}

// Validate checks cfg (normally after SetDefaults) and returns a
// ValidationError naming every invalid value, or nil. It runs before
// anything touches the kernel.
func Validate(cfg *v1alpha1.KubeProxyConfiguration) error {
	v := &validator{}
	v.mode(cfg)
	v.syncPeriods(cfg)
	if cfg.IPTables.MasqueradeBit != nil && (*cfg.IPTables.MasqueradeBit < 0 || *cfg.IPTables.MasqueradeBit > 31) {
		v.add("iptables.masqueradeBit", *cfg.IPTables.MasqueradeBit, "must be within [0, 31]")
	}
	if cfg.Mode == ModeIPVS {
		v.ipvs(&cfg.IPVS)
	}
	v.conntrack(&cfg.Conntrack)
	v.addresses(cfg)
	v.localDetection(cfg)
	v.cidrList("nodePortAddresses", cfg.NodePortAddresses, true)

	if cfg.ClientConnection.Burst < 0 {
		v.add("clientConnection.burst", cfg.ClientConnection.Burst, "must be greater than or equal to 0")
	}
	if cfg.OOMScoreAdj != nil && (*cfg.OOMScoreAdj < -1000 || *cfg.OOMScoreAdj > 1000) {
		v.add("oomScoreAdj", *cfg.OOMScoreAdj, "must be within [-1000, 1000]")
	}
	v.positive("configSyncPeriod", cfg.ConfigSyncPeriod)
	if _, err := utilnet.ParsePortRange(cfg.PortRange); cfg.PortRange != "" && err != nil {
		v.add("portRange", cfg.PortRange, "must be a valid port range (e.g. 300-2000)")
	}
	if len(v.errs) == 0 {
		return nil
	}
	return v.errs
}

func (v *validator) mode(cfg *v1alpha1.KubeProxyConfiguration) {
	switch cfg.Mode {
	case "", ModeIPTables, ModeIPVS:
	case ModeNFTables:
		v.add("mode", string(cfg.Mode), "not supported yet by svcproxy (use iptables or ipvs)")
	default:
		v.add("mode", string(cfg.Mode), "must be iptables or ipvs (blank means iptables)")
	}
}

// syncPeriods checks the periods of the mode in use; kube-proxy folds the
// mode's section into one internal SyncPeriod/MinSyncPeriod and ignores the
// other sections.
func (v *validator) syncPeriods(cfg *v1alpha1.KubeProxyConfiguration) {
	section, sync, minSync := "iptables", cfg.IPTables.SyncPeriod, cfg.IPTables.MinSyncPeriod
	if cfg.Mode == ModeIPVS {
		section, sync, minSync = "ipvs", cfg.IPVS.SyncPeriod, cfg.IPVS.MinSyncPeriod
	}
	v.positive(section+".syncPeriod", sync)
	v.nonNegative(section+".minSyncPeriod", minSync)
	if sync.Duration > 0 && minSync.Duration > sync.Duration {
		v.add(section+".minSyncPeriod", minSync,
			fmt.Sprintf("must be less than or equal to %s.syncPeriod (%s)", section, sync.Duration))
	}
}

func (v *validator) ipvs(c *v1alpha1.KubeProxyIPVSConfiguration) {
	if !ipvsSchedulers[c.Scheduler] {
		v.add("ipvs.scheduler", c.Scheduler, "must be one of rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh (blank means rr)")
	}
	v.cidrList("ipvs.excludeCIDRs", c.ExcludeCIDRs, false)
	v.nonNegative("ipvs.tcpTimeout", c.TCPTimeout)
	v.nonNegative("ipvs.tcpFinTimeout", c.TCPFinTimeout)
	v.nonNegative("ipvs.udpTimeout", c.UDPTimeout)
}

func (v *validator) conntrack(c *v1alpha1.KubeProxyConntrackConfiguration) {
	if c.MaxPerCore != nil && *c.MaxPerCore < 0 {
		v.add("conntrack.maxPerCore", *c.MaxPerCore, "must be greater than or equal to 0")
	}
	if c.Min != nil && *c.Min < 0 {
		v.add("conntrack.min", *c.Min, "must be greater than or equal to 0")
	}
	if c.TCPEstablishedTimeout != nil {
		v.nonNegative("conntrack.tcpEstablishedTimeout", *c.TCPEstablishedTimeout)
	}
	if c.TCPCloseWaitTimeout != nil {
		v.nonNegative("conntrack.tcpCloseWaitTimeout", *c.TCPCloseWaitTimeout)
	}
	v.nonNegative("conntrack.udpTimeout", c.UDPTimeout)
	v.nonNegative("conntrack.udpStreamTimeout", c.UDPStreamTimeout)
}

func (v *validator) addresses(cfg *v1alpha1.KubeProxyConfiguration) {
	if net.ParseIP(cfg.BindAddress) == nil {
		v.add("bindAddress", cfg.BindAddress, "must be a valid IP address")
	}
	// An empty healthz or metrics address disables that server.
	if cfg.HealthzBindAddress != "" {
		v.hostPort("healthzBindAddress", cfg.HealthzBindAddress)
	}
	if cfg.MetricsBindAddress != "" {
		v.hostPort("metricsBindAddress", cfg.MetricsBindAddress)
	}
}

func (v *validator) hostPort(field, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(field, addr, "must be IP:port")
		return
	}
	if net.ParseIP(host) == nil {
		v.add(field, addr, "must be IP:port with a valid IP")
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		v.add(field, addr, "must be IP:port with a port within [1, 65535]")
	}
}

func (v *validator) localDetection(cfg *v1alpha1.KubeProxyConfiguration) {
	if cfg.ClusterCIDR != "" {
		v.clusterCIDR(cfg.ClusterCIDR)
	}
	switch cfg.DetectLocalMode {
	case "", LocalModeClusterCIDR, LocalModeNodeCIDR:
	case LocalModeBridgeInterface:
		if cfg.DetectLocal.BridgeInterface == "" {
			v.add("detectLocal.bridgeInterface", "", "must be set when detectLocalMode is BridgeInterface")
		}
	case LocalModeInterfaceNamePrefix:
		if cfg.DetectLocal.InterfaceNamePrefix == "" {
			v.add("detectLocal.interfaceNamePrefix", "", "must be set when detectLocalMode is InterfaceNamePrefix")
		}
	default:
		v.add("detectLocalMode", string(cfg.DetectLocalMode),
			"must be ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix")
	}
}

// clusterCIDR accepts one CIDR or a dual-stack pair separated by a comma.
func (v *validator) clusterCIDR(s string) {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		v.add("clusterCIDR", s, "must be one CIDR or an IPv4,IPv6 pair")
		return
	}
	var fams []bool
	for _, p := range parts {
		ip, _, err := net.ParseCIDR(strings.TrimSpace(p))
		if err != nil {
			v.add("clusterCIDR", s, "must be a valid CIDR (e.g. 203.0.113.0/25) or an IPv4,IPv6 pair")
			return
		}
		fams = append(fams, ip.To4() != nil)
	}
	if len(fams) == 2 && fams[0] == fams[1] {
		v.add("clusterCIDR", s, "two CIDRs must be one IPv4 and one IPv6")
	}
}

// cidrList checks a list of CIDRs; with keywords, nodePortAddresses may
// instead hold "primary" or "all" alone, and "localhost" among CIDRs.
func (v *validator) cidrList(field string, list []string, keywords bool) {
	for i, s := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		if keywords {
			switch s {
			case NodePortAddressesPrimary, NodePortAddressesAll:
				if len(list) != 1 {
					v.add(f, s, fmt.Sprintf("%q can't be combined with other entries", s))
				}
				continue
			case NodePortAddressesLocalhost:
				continue
			}
		}
		if _, _, err := net.ParseCIDR(s); err != nil {
			detail := "must be a valid CIDR"
			if keywords {
				detail = "must be a valid CIDR or one of primary, all, localhost"
			}
			v.add(f, s, detail)
		}
	}
}

func (v *validator) positive(field string, d metav1.Duration) {
	if d.Duration <= 0 {
		v.add(field, d, "must be greater than 0")
	}
}

func (v *validator) nonNegative(field string, d metav1.Duration) {
	if d.Duration < 0 {
		v.add(field, d, "must be greater than or equal to 0")
	}
}
