package config

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Proxy modes and local-traffic detection modes kube-proxy knows.
const (
	ModeIPTables v1alpha1.ProxyMode = "iptables"
	ModeIPVS     v1alpha1.ProxyMode = "ipvs"
	ModeNFTables v1alpha1.ProxyMode = "nftables"

	LocalModeClusterCIDR         v1alpha1.LocalMode = "ClusterCIDR"
	LocalModeNodeCIDR            v1alpha1.LocalMode = "NodeCIDR"
	LocalModeBridgeInterface     v1alpha1.LocalMode = "BridgeInterface"
	LocalModeInterfaceNamePrefix v1alpha1.LocalMode = "InterfaceNamePrefix"
)

// nodePortAddresses keywords (kube-proxy server.go).
const (
	NodePortAddressesPrimary   = "primary"
	NodePortAddressesAll       = "all"
	NodePortAddressesLocalhost = "localhost"
)

const (
	healthzPort = 10256
	metricsPort = 10249
	// kube-proxy's qos.KubeProxyOOMScoreAdj: less likely to be OOM-killed
	// than pods, since losing it breaks every Service on the node.
	defaultOOMScoreAdj = -999
)

// NewDefault returns a KubeProxyConfiguration holding kube-proxy's defaults,
// with its TypeMeta set.
func NewDefault() *v1alpha1.KubeProxyConfiguration {
	cfg := &v1alpha1.KubeProxyConfiguration{}
	cfg.APIVersion = v1alpha1.SchemeGroupVersion.String()
	cfg.Kind = "KubeProxyConfiguration"
	SetDefaults(cfg)
	return cfg
}

// SetDefaults fills every unset field of cfg with kube-proxy's default:
// the scheme defaults of pkg/proxy/apis/config/v1alpha1 plus the Linux
// platform defaults (mode iptables, detectLocalMode ClusterCIDR).
func SetDefaults(cfg *v1alpha1.KubeProxyConfiguration) {
	if cfg.BindAddress == "" {
		cfg.BindAddress = "0.0.0.0"
	}
	anyAddr, loopback := "0.0.0.0", "127.0.0.1"
	if ip := net.ParseIP(cfg.BindAddress); ip != nil && ip.To4() == nil {
		anyAddr, loopback = "[::]", "[::1]"
	}
	cfg.HealthzBindAddress = defaultHostPort(cfg.HealthzBindAddress, anyAddr, healthzPort)
	cfg.MetricsBindAddress = defaultHostPort(cfg.MetricsBindAddress, loopback, metricsPort)

	setInt32(&cfg.OOMScoreAdj, defaultOOMScoreAdj)
	setDuration(&cfg.ConfigSyncPeriod, 15*time.Minute)

	if cfg.Mode == "" {
		cfg.Mode = ModeIPTables
	}
	if cfg.DetectLocalMode == "" {
		cfg.DetectLocalMode = LocalModeClusterCIDR
	}

	setInt32(&cfg.IPTables.MasqueradeBit, 14)
	if cfg.IPTables.LocalhostNodePorts == nil {
		t := true
		cfg.IPTables.LocalhostNodePorts = &t
	}
	setDuration(&cfg.IPTables.SyncPeriod, 30*time.Second)
	setDuration(&cfg.IPTables.MinSyncPeriod, time.Second)

	// ipvs.minSyncPeriod stays 0 (sync on every change) and an empty
	// scheduler means rr, applied by the IPVS data plane.
	setDuration(&cfg.IPVS.SyncPeriod, 30*time.Second)

	setInt32(&cfg.NFTables.MasqueradeBit, 14)
	setDuration(&cfg.NFTables.SyncPeriod, 30*time.Second)
	setDuration(&cfg.NFTables.MinSyncPeriod, time.Second)

	setInt32(&cfg.Conntrack.MaxPerCore, 32*1024)
	setInt32(&cfg.Conntrack.Min, 128*1024)
	if cfg.Conntrack.TCPEstablishedTimeout == nil {
		cfg.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if cfg.Conntrack.TCPCloseWaitTimeout == nil {
		// An expired CLOSE_WAIT entry leaves the local FIN un-SNATed (see
		// kubernetes#32551); an hour matches typical server timeouts.
		cfg.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: time.Hour}
	}

	if cfg.ClientConnection.ContentType == "" {
		cfg.ClientConnection.ContentType = "application/vnd.kubernetes.protobuf"
	}
	if cfg.ClientConnection.QPS == 0 {
		cfg.ClientConnection.QPS = 5
	}
	if cfg.ClientConnection.Burst == 0 {
		cfg.ClientConnection.Burst = 10
	}
	logsapi.SetRecommendedLoggingConfiguration(&cfg.Logging)
}

// applyModeDefaults applies only the defaults that depend on what the user
// chose, for the flag path where the scheme defaults were applied before the
// flags were parsed (re-running SetDefaults there would undo an explicit
// empty --metrics-bind-address, which disables the metrics server).
func applyModeDefaults(cfg *v1alpha1.KubeProxyConfiguration) {
	if cfg.Mode == "" {
		cfg.Mode = ModeIPTables
	}
	if cfg.DetectLocalMode == "" {
		cfg.DetectLocalMode = LocalModeClusterCIDR
	}
}

// defaultHostPort returns def:port for an empty address, appends port to a
// bare IP (kube-proxy's AppendPortIfNeeded), and leaves anything else alone.
func defaultHostPort(addr, def string, port int) string {
	if addr == "" {
		return def + ":" + strconv.Itoa(port)
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if ip := net.ParseIP(addr); ip != nil {
		return net.JoinHostPort(ip.String(), strconv.Itoa(port))
	}
	return addr
}

func setInt32(p **int32, v int32) {
	if *p == nil {
		*p = &v
	}
}

func setDuration(d *metav1.Duration, v time.Duration) {
	if d.Duration == 0 {
		d.Duration = v
	}
}

// NodeName returns the name of the Node this proxy runs on: hostnameOverride
// if set, else the machine's hostname, trimmed and lowercased as kube-proxy
// (nodeutil.GetHostname) does.
func NodeName(cfg *v1alpha1.KubeProxyConfiguration) (string, error) {
	name := cfg.HostnameOverride
	if strings.TrimSpace(name) == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("get hostname: %w", err)
		}
		name = h
	}
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return "", fmt.Errorf("empty hostname is invalid")
	}
	return name, nil
}
