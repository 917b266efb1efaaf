package main

import (
	"errors"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

var errIPVSNotWired = errors.New("IPVS mode is not wired into this build yet")

func newIPVSDataPlane(cfg *v1alpha1.KubeProxyConfiguration, family v1.IPFamily, kernel iptables.Kernel, npa *proxier.NodePortAddresses, detector iptables.LocalDetector) (proxier.DataPlane, error) {
	return nil, errIPVSNotWired
}

func setupIPVSMode(cfg *v1alpha1.KubeProxyConfiguration, s sysctl.Setter, family v1.IPFamily) error {
	return errIPVSNotWired
}

func cleanupIPVS(families []v1.IPFamily, cfg *v1alpha1.KubeProxyConfiguration) error { return nil }
