package iptables

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

const nodePortsComment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"

// writeNodePort sends a NodePort to EXT, or rejects/drops it in filter when
// external traffic has no endpoint.
func (b *Builder) writeNodePort(d *dispatchBufs, p *svcPlan) {
	svc, n := p.svc, p.n
	if svc.NodePort == 0 {
		return
	}
	if p.hasEndpoints {
		// Counts localhost NodePort use for
		// kubeproxy_iptables_localhost_nodeports_accepted_packets_total.
		if b.localhostNodePorts && b.opts.NFAcctLocalhostNodePorts {
			d.natNodePorts.rule(chainNodePorts).comment(n.Name).proto(n.Protocol).
				a("-d", "127.0.0.0/8").num("--dport", svc.NodePort).
				a("-m", "nfacct", "--nfacct-name", NFAcctLocalhostNodePortAccepts).jump(n.EXT)
		}
		d.natNodePorts.rule(chainNodePorts).comment(n.Name).proto(n.Protocol).
			num("--dport", svc.NodePort).jump(n.EXT)
	}
	if !p.hasExternal {
		d.filter.rule(chainExternalServices).comment(n.Name, p.externalWhy).
			a("-m", "addrtype", "--dst-type", "LOCAL").proto(n.Protocol).
			num("--dport", svc.NodePort).jump(p.externalTarget)
	}
}

// writeHealthCheckNodePort accepts the eTP=Local health check port whether
// or not there are local endpoints: load balancers must get an answer.
func (b *Builder) writeHealthCheckNodePort(d *dispatchBufs, p *svcPlan) {
	if p.svc.HealthCheckNodePort == 0 {
		return
	}
	d.filter.rule(chainNodePorts).comment(p.n.Name, " health check node port").proto("tcp").
		num("--dport", p.svc.HealthCheckNodePort).jump("ACCEPT")
}

// writeNodePortsDispatch ends KUBE-SERVICES with the jump to KUBE-NODEPORTS:
// for every local address when nodePortAddresses matches all, else for each
// matching node address. Localhost NodePorts never work on IPv6 and on
// IPv4 only with route_localnet (localhostNodePorts).
func (b *Builder) writeNodePortsDispatch(rs *Ruleset, nodePortIPs []netip.Addr) {
	w := &rs.natServices
	if b.opts.NodePortAddresses == nil || b.opts.NodePortAddresses.MatchAll() {
		w.rule(chainServices).comment(nodePortsComment).a("-m", "addrtype", "--dst-type", "LOCAL")
		if b.family == v1.IPv6Protocol {
			w.a("!", "-d", "::1/128")
		} else if !b.localhostNodePorts {
			w.a("!", "-d", "127.0.0.0/8")
		}
		w.jump(chainNodePorts)
		return
	}
	for _, ip := range nodePortIPs {
		if ip.IsLoopback() {
			if b.family == v1.IPv6Protocol {
				klog.ErrorS(nil, "nodePortAddresses includes localhost but localhost NodePorts are not supported on IPv6", "address", ip)
				continue
			}
			if !b.localhostNodePorts {
				klog.ErrorS(nil, "nodePortAddresses includes localhost but localhost NodePorts are disabled", "address", ip)
				continue
			}
		}
		w.rule(chainServices).comment(nodePortsComment).addr("-d", ip).jump(chainNodePorts)
	}
}
