package main

import (
	"errors"
	"fmt"
	"os/exec"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/iptables"
)

// cleanupAll removes what either mode installed, in every family and on
// every iptables backend present, so a node can switch modes or drop
// svcproxy. Nothing there is not an error.
func cleanupAll(families []v1.IPFamily, cfg *v1alpha1.KubeProxyConfiguration) error {
	var errs []error
	for _, family := range families {
		for _, backend := range []iptables.Backend{iptables.Legacy, iptables.NFT} {
			if !backendPresent(family, backend) {
				continue
			}
			kernel, err := iptables.NewKernel(family, backend)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := iptables.Cleanup(kernel); err != nil {
				errs = append(errs, fmt.Errorf("clean up iptables %s %s: %w", backend, family, err))
			}
		}
	}
	if err := cleanupIPVS(families, cfg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	klog.InfoS("Cleanup done")
	return nil
}

func backendPresent(family v1.IPFamily, backend iptables.Backend) bool {
	tool := "iptables-" + string(backend) + "-save"
	if family == v1.IPv6Protocol {
		tool = "ip6tables-" + string(backend) + "-save"
	}
	_, err := exec.LookPath(tool)
	return err == nil
}
