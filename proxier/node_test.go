package proxier

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNewNode(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"203.0.113.0/26", "2001:db8:1:0:1::/80"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: "node1"},
			{Type: v1.NodeExternalIP, Address: "198.18.0.11"},
			{Type: v1.NodeInternalIP, Address: "192.0.2.11"},
			{Type: v1.NodeInternalIP, Address: "2001:db8:2::11"},
		}},
	}
	deleting := node.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{}
	draining := node.DeepCopy()
	draining.Spec.Taints = []v1.Taint{{Key: TaintToBeDeletedByClusterAutoscaler, Effect: v1.TaintEffectNoSchedule}}

	tests := []struct {
		name         string
		node         *v1.Node
		family       v1.IPFamily
		bind         netip.Addr
		wantIPs      []netip.Addr
		wantCIDRs    []netip.Prefix
		wantEligible bool
	}{
		{"IPv4, InternalIP first", node, ipv4, netip.Addr{}, addrs("192.0.2.11", "198.18.0.11"), prefixes("203.0.113.0/26"), true},
		{"IPv6", node, ipv6, netip.Addr{}, addrs("2001:db8:2::11"), prefixes("2001:db8:1:0:1::/80"), true},
		{"bind address overrides primary", node, ipv4, netip.MustParseAddr("198.18.0.11"), addrs("198.18.0.11", "192.0.2.11"), prefixes("203.0.113.0/26"), true},
		{"bind address of the other family ignored", node, ipv6, netip.MustParseAddr("192.0.2.99"), addrs("2001:db8:2::11"), prefixes("2001:db8:1:0:1::/80"), true},
		{"unspecified bind address ignored", node, ipv4, netip.MustParseAddr("0.0.0.0"), addrs("192.0.2.11", "198.18.0.11"), prefixes("203.0.113.0/26"), true},
		{"missing node", nil, ipv4, netip.MustParseAddr("192.0.2.11"), addrs("192.0.2.11"), nil, false},
		{"being deleted", deleting, ipv4, netip.Addr{}, addrs("192.0.2.11", "198.18.0.11"), prefixes("203.0.113.0/26"), false},
		{"autoscaler taint", draining, ipv4, netip.Addr{}, addrs("192.0.2.11", "198.18.0.11"), prefixes("203.0.113.0/26"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNode("node1", tc.node, tc.family, tc.bind)
			if n.Name != "node1" || !slices.Equal(n.IPs, tc.wantIPs) || !slices.Equal(n.PodCIDRs, tc.wantCIDRs) || n.Eligible != tc.wantEligible {
				t.Errorf("got %+v, want IPs %v CIDRs %v eligible %v", n, tc.wantIPs, tc.wantCIDRs, tc.wantEligible)
			}
			if tc.node != nil && n.Zone() != "zone-a" {
				t.Errorf("zone %q, want zone-a", n.Zone())
			}
		})
	}
}
