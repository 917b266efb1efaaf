package proxier

import (
	"maps"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
)

// TaintToBeDeletedByClusterAutoscaler marks a node the cluster autoscaler is
// draining; load balancers must stop sending traffic to it (KEP-3836).
const TaintToBeDeletedByClusterAutoscaler = "ToBeDeletedByClusterAutoscaler"

// NewNode reduces node (nil when missing) to what the proxy needs for family.
// IPs are the InternalIPs then ExternalIPs of the family; bindAddress, when
// set, of this family and not unspecified, becomes the primary IP, as
// kube-proxy's --bind-address does.
func NewNode(name string, node *v1.Node, family v1.IPFamily, bindAddress netip.Addr) Node {
	n := Node{Name: name}
	bind := bindAddress.Unmap()
	if bind.IsValid() && !bind.IsUnspecified() && addrFamily(bind) == family {
		n.IPs = append(n.IPs, bind)
	}
	if node == nil {
		return n
	}
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != typ {
				continue
			}
			ip, ok := parseIP(a.Address)
			if ok && addrFamily(ip) == family && !slices.Contains(n.IPs, ip) {
				n.IPs = append(n.IPs, ip)
			}
		}
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, ok := parsePrefix(c); ok && addrFamily(p.Addr()) == family {
			n.PodCIDRs = append(n.PodCIDRs, p)
		}
	}
	n.Labels = maps.Clone(node.Labels)
	n.Eligible = nodeEligible(node)
	return n
}

// nodeEligible is false for a node being deleted or drained by the autoscaler.
func nodeEligible(node *v1.Node) bool {
	if node == nil || node.DeletionTimestamp != nil {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == TaintToBeDeletedByClusterAutoscaler {
			return false
		}
	}
	return true
}

func nodeEqual(a, b Node) bool {
	return a.Name == b.Name && a.Eligible == b.Eligible && slices.Equal(a.IPs, b.IPs) &&
		slices.Equal(a.PodCIDRs, b.PodCIDRs) && maps.Equal(a.Labels, b.Labels)
}

// nodeRulesEqual compares what data planes program from a Node: its
// addresses, pod CIDRs and zone (topology).
func nodeRulesEqual(a, b Node) bool {
	return a.Name == b.Name && slices.Equal(a.IPs, b.IPs) && slices.Equal(a.PodCIDRs, b.PodCIDRs) && a.Zone() == b.Zone()
}
