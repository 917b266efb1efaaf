package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

// newDataPlanes builds one data plane per IP family for cfg.Mode.
func newDataPlanes(cfg *v1alpha1.KubeProxyConfiguration, families []v1.IPFamily, node *v1.Node, nodeName string, bind netip.Addr) (map[v1.IPFamily]proxier.DataPlane, error) {
	planes := map[v1.IPFamily]proxier.DataPlane{}
	for _, family := range families {
		info := proxier.NewNode(nodeName, node, family, bind)
		var primary netip.Addr
		if len(info.IPs) > 0 {
			primary = info.IPs[0]
		}
		npa, err := proxier.NewNodePortAddresses(family, cfg.NodePortAddresses, primary)
		if err != nil {
			return nil, fmt.Errorf("nodePortAddresses: %w", err)
		}
		detector, err := localDetector(cfg, family, info)
		if err != nil {
			return nil, err
		}
		kernel, err := iptablesKernel(family)
		if err != nil {
			return nil, err
		}
		switch cfg.Mode {
		case config.ModeIPVS:
			dp, err := newIPVSDataPlane(cfg, family, kernel, npa, detector)
			if err != nil {
				return nil, err
			}
			planes[family] = withConntrackCleanup(family, dp)
		default:
			opts := iptables.DefaultOptions()
			if cfg.IPTables.MasqueradeBit != nil {
				opts.MasqueradeBit = int(*cfg.IPTables.MasqueradeBit)
			}
			opts.MasqueradeAll = cfg.IPTables.MasqueradeAll
			// Debian's iptables and every kernel we support have --random-fully.
			opts.MasqueradeRandomFully = true
			opts.LocalhostNodePorts = family == v1.IPv4Protocol && cfg.IPTables.LocalhostNodePorts != nil && *cfg.IPTables.LocalhostNodePorts
			opts.NodePortAddresses = npa
			opts.LocalDetector = detector
			opts.ConntrackTCPBeLiberal = cfg.Conntrack.TCPBeLiberal
			planes[family] = withConntrackCleanup(family, iptables.NewProxier(kernel, opts))
		}
		klog.InfoS("Data plane ready", "mode", cfg.Mode, "ipFamily", family, "nodeIPs", info.IPs,
			"nodePortAddresses", npa.String(), "localDetector", detector.String())
	}
	return planes, nil
}

func iptablesKernel(family v1.IPFamily) (iptables.Kernel, error) {
	backend, err := iptables.DetectBackend(family)
	if err != nil {
		return nil, fmt.Errorf("detect iptables backend for %s: %w", family, err)
	}
	kernel, err := iptables.NewKernel(family, backend)
	if err != nil {
		return nil, fmt.Errorf("iptables for %s: %w", family, err)
	}
	return kernel, nil
}

func localDetector(cfg *v1alpha1.KubeProxyConfiguration, family v1.IPFamily, node proxier.Node) (iptables.LocalDetector, error) {
	var cidrs []netip.Prefix
	for _, s := range strings.Split(cfg.ClusterCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return iptables.LocalDetector{}, fmt.Errorf("clusterCIDR %q: %w", s, err)
		}
		cidrs = append(cidrs, p)
	}
	d, err := iptables.NewLocalDetector(family, iptables.LocalDetectorConfig{
		Mode:            iptables.DetectLocalMode(cfg.DetectLocalMode),
		ClusterCIDRs:    cidrs,
		NodePodCIDRs:    node.PodCIDRs,
		BridgeInterface: cfg.DetectLocal.BridgeInterface,
		InterfacePrefix: cfg.DetectLocal.InterfaceNamePrefix,
	})
	if err != nil {
		return iptables.LocalDetector{}, fmt.Errorf("detect-local-mode: %w", err)
	}
	return d, nil
}

// platformSetup sets the sysctls the mode needs. A read-only /proc/sys is
// reported and tolerated, as in a container without privileges the operator
// may have set them already.
func platformSetup(cfg *v1alpha1.KubeProxyConfiguration, families []v1.IPFamily) error {
	s := sysctl.New()
	var errs []error
	for _, family := range families {
		var err error
		if cfg.Mode == config.ModeIPVS {
			err = setupIPVSMode(cfg, s, family)
		} else {
			localhost := family == v1.IPv4Protocol && cfg.IPTables.LocalhostNodePorts != nil && *cfg.IPTables.LocalhostNodePorts
			err = iptables.SetupIPTablesMode(s, family, localhost)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := setupConntrack(cfg, s); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if err != nil && (errors.Is(err, sysctl.ErrReadOnly) || errors.Is(err, sysctl.ErrNotExist)) {
		klog.ErrorS(err, "Some sysctls could not be set; continuing")
		return nil
	}
	return err
}

// healthCheckAddresses are the addresses the per-service health servers
// listen on: every address when nodePortAddresses allows all.
func healthCheckAddresses(cfg *v1alpha1.KubeProxyConfiguration, families []v1.IPFamily, node *v1.Node, bind netip.Addr) []netip.Addr {
	var addrs []netip.Addr
	for _, family := range families {
		info := proxier.NewNode("", node, family, bind)
		var primary netip.Addr
		if len(info.IPs) > 0 {
			primary = info.IPs[0]
		}
		npa, err := proxier.NewNodePortAddresses(family, cfg.NodePortAddresses, primary)
		if err != nil || npa.MatchAll() {
			return nil
		}
		local, err := npa.LocalAddresses()
		if err != nil {
			klog.ErrorS(err, "List node addresses for health checks", "ipFamily", family)
			continue
		}
		addrs = append(addrs, local...)
	}
	return addrs
}
