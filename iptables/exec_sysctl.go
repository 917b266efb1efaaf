package iptables

import (
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/sysctl"
)

// SetupIPTablesMode sets the sysctls iptables mode relies on: forwarding for
// family, route_localnet for IPv4 localhost NodePorts, and bridge netfilter
// so traffic between pods on one bridge still passes our rules. A missing
// bridge key (br_netfilter not loaded) is fine. Other failures are joined
// into the result; each wraps sysctl.ErrReadOnly or ErrNotExist when that is
// the cause, so the caller can decide to log and carry on.
func SetupIPTablesMode(s sysctl.Setter, family v1.IPFamily, localhostNodePorts bool) error {
	type want struct {
		name     string
		optional bool
	}
	wants := []want{{name: "net/ipv4/ip_forward"}, {name: "net/bridge/bridge-nf-call-iptables", optional: true}}
	if family == v1.IPv6Protocol {
		wants = []want{{name: "net/ipv6/conf/all/forwarding"}, {name: "net/bridge/bridge-nf-call-ip6tables", optional: true}}
	} else if localhostNodePorts {
		wants = append(wants, want{name: "net/ipv4/conf/all/route_localnet"})
	}
	var errs []error
	for _, w := range wants {
		changed, err := sysctl.EnsureValue(s, w.name, "1")
		switch {
		case err == nil && changed:
			klog.InfoS("Set sysctl for iptables mode", "name", w.name, "value", "1", "ipFamily", family)
		case err == nil:
			klog.V(2).InfoS("Sysctl already set", "name", w.name, "value", "1")
		case w.optional && errors.Is(err, sysctl.ErrNotExist):
			klog.V(2).InfoS("Optional sysctl missing, skipping", "name", w.name)
		default:
			errs = append(errs, fmt.Errorf("iptables mode sysctl: %w", err))
		}
	}
	return errors.Join(errs...)
}
