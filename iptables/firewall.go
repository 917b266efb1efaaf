package iptables

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/proxier"
)

// writeFirewallChain writes KUBE-FW- for loadBalancerSourceRanges: allowed
// sources go on to EXT; anything else falls off the end un-DNATed and is
// dropped by the KUBE-PROXY-FIREWALL rule for the LB IP. NodePorts are not
// subject to source ranges (kube-proxy behaviour).
func (b *Builder) writeFirewallChain(rs *Ruleset, p *svcPlan, node proxier.Node) {
	w, n := &rs.svcRules, p.n
	var nodeIP netip.Addr
	if len(node.IPs) > 0 {
		nodeIP = node.IPs[0]
	}
	allowFromNode := false
	for _, cidr := range p.svc.LoadBalancerSourceRanges {
		w.rule(n.FW).comment(n.Name, " loadbalancer IP").prefix("-s", cidr.Masked()).jump(n.EXT)
		if nodeIP.IsValid() && cidr.Contains(nodeIP) {
			allowFromNode = true
		}
	}
	// An LB VIP is often also a local address of the node, so the node's
	// own requests loop back with the VIP as source; let them in when the
	// node is an allowed source.
	if allowFromNode {
		for _, ip := range p.svc.LoadBalancerVIPs {
			w.rule(n.FW).comment(n.Name, " loadbalancer IP").addr("-s", ip).jump(n.EXT)
		}
	}
	w.rule(n.FW).comment("other traffic to ", n.Name, " will be dropped by KUBE-PROXY-FIREWALL").end()
}

// writeFirewallDrop drops traffic to an LB IP that KUBE-FW- did not DNAT.
func (b *Builder) writeFirewallDrop(d *dispatchBufs, p *svcPlan, ip netip.Addr) {
	d.filter.rule(chainProxyFirewall).comment(p.n.Name, " traffic not accepted by ", p.n.FW).proto(p.n.Protocol).
		addr("-d", ip).num("--dport", p.svc.Port).jump("DROP")
}

// writeLocalhostGuard copies kubelet's anti-martian rule: route_localnet,
// which localhost NodePorts need, would otherwise let remote hosts reach
// services bound to 127.0.0.1 (https://issue.k8s.io/90259). The rule must
// stay identical to kubelet's, which installs the same one.
func (b *Builder) writeLocalhostGuard(rs *Ruleset) {
	if !b.localhostNodePorts {
		return
	}
	rs.filter.rule(chainKubeletFirewall).comment("block incoming localnet connections").
		a("-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT").
		jump("DROP")
}
