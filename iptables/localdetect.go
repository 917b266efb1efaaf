package iptables

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// DetectLocalMode is kube-proxy's --detect-local-mode.
type DetectLocalMode string

const (
	DetectLocalClusterCIDR         DetectLocalMode = "ClusterCIDR"
	DetectLocalNodeCIDR            DetectLocalMode = "NodeCIDR"
	DetectLocalBridgeInterface     DetectLocalMode = "BridgeInterface"
	DetectLocalInterfaceNamePrefix DetectLocalMode = "InterfaceNamePrefix"
)

// LocalDetector tells pod traffic from other traffic. Rules use it to
// masquerade traffic to a ClusterIP that does not come from a local pod, and
// to let pods reach eTP=Local services through their external addresses.
// The zero value is the no-op detector (IsImplemented false).
type LocalDetector struct {
	ifLocal    []string
	ifNotLocal []string
	// local and notLocal are the same arguments pre-joined, each with a
	// leading space, for the rule writer.
	local, notLocal string
}

func newLocalDetector(ifLocal, ifNotLocal []string) LocalDetector {
	return LocalDetector{
		ifLocal: ifLocal, ifNotLocal: ifNotLocal,
		local: " " + strings.Join(ifLocal, " "), notLocal: " " + strings.Join(ifNotLocal, " "),
	}
}

// NoOpLocalDetector detects nothing; no rule depends on it.
func NoOpLocalDetector() LocalDetector { return LocalDetector{} }

// LocalDetectorByCIDR treats sources inside cidr (the cluster or node pod CIDR) as local.
func LocalDetectorByCIDR(cidr netip.Prefix) LocalDetector {
	s := cidr.Masked().String()
	return newLocalDetector([]string{"-s", s}, []string{"!", "-s", s})
}

// LocalDetectorByBridgeInterface treats traffic entering from bridge as local.
func LocalDetectorByBridgeInterface(bridge string) LocalDetector {
	return newLocalDetector([]string{"-i", bridge}, []string{"!", "-i", bridge})
}

// LocalDetectorByInterfaceNamePrefix treats traffic entering from interfaces
// named prefix* (for example the veths of a CNI) as local.
func LocalDetectorByInterfaceNamePrefix(prefix string) LocalDetector {
	return newLocalDetector([]string{"-i", prefix + "+"}, []string{"!", "-i", prefix + "+"})
}

// IsImplemented is false for the no-op detector.
func (d LocalDetector) IsImplemented() bool { return len(d.ifLocal) > 0 }

// IfLocal returns iptables arguments matching local (pod) traffic.
func (d LocalDetector) IfLocal() []string { return d.ifLocal }

// IfNotLocal returns iptables arguments matching traffic not from local pods.
func (d LocalDetector) IfNotLocal() []string { return d.ifNotLocal }

// String is for logs.
func (d LocalDetector) String() string {
	if !d.IsImplemented() {
		return "no-op"
	}
	return strings.Join(d.ifLocal, " ")
}

// LocalDetectorConfig holds what each --detect-local-mode needs.
type LocalDetectorConfig struct {
	Mode DetectLocalMode
	// ClusterCIDRs (--cluster-cidr, possibly dual-stack) for ClusterCIDR mode.
	ClusterCIDRs []netip.Prefix
	// NodePodCIDRs (the Node's spec.podCIDRs) for NodeCIDR mode.
	NodePodCIDRs    []netip.Prefix
	BridgeInterface string
	InterfacePrefix string
}

// NewLocalDetector picks the detector of family for cfg, as kube-proxy's
// getLocalDetectors does: a CIDR mode without a CIDR of this family gives the
// no-op detector; the interface modes need their name.
func NewLocalDetector(family v1.IPFamily, cfg LocalDetectorConfig) (LocalDetector, error) {
	switch cfg.Mode {
	case DetectLocalClusterCIDR, "":
		return detectorForFamily(family, cfg.ClusterCIDRs), nil
	case DetectLocalNodeCIDR:
		return detectorForFamily(family, cfg.NodePodCIDRs), nil
	case DetectLocalBridgeInterface:
		if cfg.BridgeInterface == "" {
			return LocalDetector{}, fmt.Errorf("detect-local-mode %s needs a bridge interface name", cfg.Mode)
		}
		return LocalDetectorByBridgeInterface(cfg.BridgeInterface), nil
	case DetectLocalInterfaceNamePrefix:
		if cfg.InterfacePrefix == "" {
			return LocalDetector{}, fmt.Errorf("detect-local-mode %s needs an interface name prefix", cfg.Mode)
		}
		return LocalDetectorByInterfaceNamePrefix(cfg.InterfacePrefix), nil
	}
	return LocalDetector{}, fmt.Errorf("unknown detect-local-mode %q", cfg.Mode)
}

// detectorForFamily uses the first CIDR of family: "-s" takes one CIDR, and a
// list would turn "! -s" into an OR of negations.
func detectorForFamily(family v1.IPFamily, cidrs []netip.Prefix) LocalDetector {
	for _, c := range cidrs {
		if c.Addr().Is4() == (family == v1.IPv4Protocol) {
			return LocalDetectorByCIDR(c)
		}
	}
	return NoOpLocalDetector()
}
