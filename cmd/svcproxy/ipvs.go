package main

import (
	"errors"
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

// ipvsOptions maps the configuration onto the IPVS data plane's options.
func ipvsOptions(cfg *v1alpha1.KubeProxyConfiguration, npa *proxier.NodePortAddresses, detector iptables.LocalDetector) (ipvs.Options, error) {
	opts := ipvs.DefaultOptions()
	if cfg.IPVS.Scheduler != "" {
		opts.Scheduler = cfg.IPVS.Scheduler
	}
	opts.StrictARP = cfg.IPVS.StrictARP
	opts.TCPTimeout = cfg.IPVS.TCPTimeout.Duration
	opts.TCPFinTimeout = cfg.IPVS.TCPFinTimeout.Duration
	opts.UDPTimeout = cfg.IPVS.UDPTimeout.Duration
	for _, s := range cfg.IPVS.ExcludeCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return opts, fmt.Errorf("ipvs.excludeCIDRs %q: %w", s, err)
		}
		opts.ExcludeCIDRs = append(opts.ExcludeCIDRs, p)
	}
	if cfg.IPTables.MasqueradeBit != nil {
		opts.MasqueradeBit = int(*cfg.IPTables.MasqueradeBit)
	}
	opts.MasqueradeAll = cfg.IPTables.MasqueradeAll
	opts.MasqueradeRandomFully = true
	opts.NodePortAddresses = npa
	opts.LocalDetector = detector
	// kube-proxy reads the whole IPVS table back every sync period. Here the
	// verify loop lists the virtual servers every sync period (one dump), so a
	// virtual server deleted by hand still comes back within it, and the whole
	// kernel state is re-read every ipvs.DefaultFullResyncPeriod: at 10k services
	// a full re-read takes most of a 30 s period (BENCHMARKS.md).
	return opts, nil
}

func newIPVSDataPlane(cfg *v1alpha1.KubeProxyConfiguration, family v1.IPFamily, ipt iptables.Kernel, npa *proxier.NodePortAddresses, detector iptables.LocalDetector) (proxier.DataPlane, error) {
	opts, err := ipvsOptions(cfg, npa, detector)
	if err != nil {
		return nil, err
	}
	k, err := ipvs.NewKernel(family, "", ipt)
	if err != nil {
		return nil, fmt.Errorf("IPVS kernel layer for %s: %w", family, err)
	}
	return ipvs.NewProxier(k, opts, clock.RealClock{}), nil
}

// checkIPVS refuses to start IPVS mode, with one line, when the kernel lacks
// IPVS or the scheduler, before anything is programmed.
func checkIPVS(cfg *v1alpha1.KubeProxyConfiguration) error {
	return ipvs.CanUseIPVS("", cfg.IPVS.Scheduler)
}

// setupIPVSMode sets IPVS's sysctls and timeouts; they are per namespace,
// not per family, so only the IPv4 pass does it.
func setupIPVSMode(cfg *v1alpha1.KubeProxyConfiguration, s sysctl.Setter, family v1.IPFamily) error {
	if family != v1.IPv4Protocol {
		return nil
	}
	opts, err := ipvsOptions(cfg, nil, iptables.LocalDetector{})
	if err != nil {
		return err
	}
	k, err := ipvs.NewIPVSKernel("")
	if err != nil {
		return fmt.Errorf("IPVS setup: %w", err)
	}
	return ipvs.Setup(k, s, opts)
}

// cleanupIPVS removes IPVS mode's virtual servers, kube-ipvs0, ipsets and
// iptables rules. A kernel without IPVS still gets its ipsets and rules
// cleaned.
func cleanupIPVS(families []v1.IPFamily, cfg *v1alpha1.KubeProxyConfiguration) error {
	opts, err := ipvsOptions(cfg, nil, iptables.LocalDetector{})
	if err != nil {
		return err
	}
	var errs []error
	for _, family := range families {
		// iptables rules first: an ipset cannot be destroyed while a rule
		// still matches on it.
		for _, backend := range []iptables.Backend{iptables.Legacy, iptables.NFT} {
			if !backendPresent(family, backend) {
				continue
			}
			ipt, err := iptables.NewKernel(family, backend)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := ipvs.Cleanup(ipvs.Kernel{Family: family, IPTables: ipt}, opts); err != nil {
				errs = append(errs, fmt.Errorf("clean up IPVS iptables rules %s %s: %w", backend, family, err))
			}
		}
		k := ipvs.Kernel{Family: family}
		if h, err := ipvs.NewIPVSKernel(""); err == nil {
			k.IPVS = h
		} else {
			klog.V(2).InfoS("No IPVS in this kernel; skipping virtual servers", "err", err)
		}
		if l, err := ipvs.NewLinks(""); err == nil {
			k.Links = l
		}
		if s, err := ipvs.NewIPSets(""); err == nil {
			k.IPSets = s
		}
		if err := ipvs.Cleanup(k, opts); err != nil {
			errs = append(errs, fmt.Errorf("clean up IPVS %s: %w", family, err))
		}
	}
	return errors.Join(errs...)
}
