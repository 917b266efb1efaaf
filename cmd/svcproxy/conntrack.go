package main

import (
	"runtime"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

// withConntrackCleanup deletes stale UDP/SCTP flows after each successful
// sync of dp. Without conntrack netlink the proxy still works, so that is
// logged rather than fatal.
func withConntrackCleanup(family v1.IPFamily, dp proxier.DataPlane) proxier.DataPlane {
	h, err := conntrack.NewNetlinkHandle()
	if err != nil {
		klog.ErrorS(err, "Conntrack cleanup disabled: cannot open conntrack netlink", "ipFamily", family)
		return dp
	}
	return conntrack.NewCleaner(family, h, conntrack.DisableFromEnv()).Wrap(dp)
}

func setupConntrack(cfg *v1alpha1.KubeProxyConfiguration, s sysctl.Setter) error {
	return conntrack.ApplySysctls(s, cfg.Conntrack, runtime.NumCPU())
}
