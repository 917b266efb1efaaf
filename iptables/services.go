package iptables

import (
	"github.com/svcproxy/svcproxy/proxier"
)

// svcPlan is what kube-proxy's traffic-policy logic decides for one
// ServicePort: which chains exist and where each kind of traffic goes.
type svcPlan struct {
	svc *proxier.ServicePort
	n   *ServiceChainNames

	cluster, local, reachable []*proxier.Endpoint
	hasEndpoints              bool
	// hasInternal / hasExternal: traffic of that kind has an endpoint to go
	// to (false with a Local policy and no local endpoint).
	hasInternal, hasExternal bool
	internalChain            string // SVC, or SVL with iTP=Local
	externalPolicyChain      string // SVC, or SVL with eTP=Local
	externalLocal            bool
	usesCluster, usesLocal   bool
	usesEXT, usesFW          bool
	// Filter targets when there is no endpoint: REJECT (none at all) or
	// DROP (Local policy, none here), with their comment suffix.
	internalTarget, internalWhy string
	externalTarget, externalWhy string
}

func (b *Builder) plan(svc *proxier.ServicePort, n *ServiceChainNames, snap *proxier.Snapshot) svcPlan {
	p := svcPlan{svc: svc, n: n}
	p.cluster, p.local, p.reachable, p.hasEndpoints = proxier.CategorizeEndpoints(snap.Endpoints[svc.Name], svc, snap.Node)
	p.usesCluster = len(p.cluster) > 0 && svc.UsesClusterEndpoints()
	p.usesLocal = len(p.local) > 0 && svc.UsesLocalEndpoints()

	p.internalChain, p.hasInternal = n.SVC, p.hasEndpoints
	if svc.InternalPolicyLocal {
		p.internalChain = n.SVL
		p.hasInternal = p.hasInternal && len(p.local) > 0
	}
	p.externalLocal = svc.ExternalPolicyLocal && svc.ExternallyAccessible()
	p.externalPolicyChain, p.hasExternal = n.SVC, p.hasEndpoints
	if p.externalLocal {
		p.externalPolicyChain = n.SVL
		p.hasExternal = p.hasExternal && len(p.local) > 0
	}
	// EXT exists whenever there are endpoints anywhere: pods and the node
	// itself reach an eTP=Local service through it even with no local endpoint.
	p.usesEXT = p.hasEndpoints && svc.ExternallyAccessible()
	p.usesFW = p.hasEndpoints && len(svc.LoadBalancerVIPs) > 0 && len(svc.LoadBalancerSourceRanges) > 0

	switch {
	case !p.hasEndpoints:
		p.internalTarget, p.internalWhy = "REJECT", " has no endpoints"
		p.externalTarget, p.externalWhy = "REJECT", " has no endpoints"
	default:
		if !p.hasInternal {
			p.internalTarget, p.internalWhy = "DROP", " has no local endpoints"
		}
		if !p.hasExternal {
			p.externalTarget, p.externalWhy = "DROP", " has no local endpoints"
		}
	}
	return p
}

// dispatchBufs receive one service's rules in the top-level chains.
type dispatchBufs struct {
	natServices, natNodePorts, filter ruleBuf
}

// writeService writes one ServicePort: its rules in the top-level chains
// (kept in e.frag for the next partial builds) and its own chains.
func (b *Builder) writeService(rs *Ruleset, e *svcEntry, snap *proxier.Snapshot, comments bool) {
	svc := snap.Services[e.name]
	p := b.plan(svc, e.names, snap)
	e.noLocalInternal = p.hasEndpoints && !p.hasInternal
	e.noLocalExternal = p.hasEndpoints && !p.hasExternal && p.externalLocal

	d := &b.scratch
	d.natServices.reset()
	d.natNodePorts.reset()
	d.filter.reset()
	b.writeClusterIPDispatch(d, &p)
	b.writeExternalIPDispatch(d, &p)
	b.writeLoadBalancerDispatch(d, &p)
	b.writeNodePort(d, &p)
	b.writeHealthCheckNodePort(d, &p)
	e.frag = append(append(append(e.frag[:0], d.natServices.b...), d.natNodePorts.b...), d.filter.b...)
	e.natSvcEnd = d.natServices.len()
	e.natNPEnd = e.natSvcEnd + d.natNodePorts.len()
	e.natSvcRules, e.natNPRules, e.filterRules = d.natServices.rules, d.natNodePorts.rules, d.filter.rules

	rulesBefore := rs.svcRules.rules
	n := e.names
	chains := e.nextChains[:0]
	b.writeInternalMasquerade(rs, &p)
	if p.usesEXT {
		chains = append(chains, n.EXT)
		b.writeExternalChain(rs, &p)
	}
	if p.usesFW {
		chains = append(chains, n.FW)
		b.writeFirewallChain(rs, &p, snap.Node)
	}
	if p.usesCluster {
		chains = append(chains, n.SVC)
		b.writeEndpointDispatch(rs, &p, n.SVC, p.cluster, comments)
	}
	if p.usesLocal {
		chains = append(chains, n.SVL)
		b.writeEndpointDispatch(rs, &p, n.SVL, p.local, comments)
	}
	chains = b.writeEndpointChains(rs, &p, chains, comments)
	for _, c := range chains {
		rs.svcChains.chainLine(c)
	}
	e.nextChains = chains
	e.nextRules = rs.svcRules.rules - rulesBefore
	rs.natTotal += e.nextRules
	n.pruneSEPs(snap.Endpoints[svc.Name])
	rs.endService()
}

// writeClusterIPDispatch captures the ClusterIP, or rejects it in filter.
func (b *Builder) writeClusterIPDispatch(d *dispatchBufs, p *svcPlan) {
	svc := p.svc
	if p.hasInternal {
		d.natServices.rule(chainServices).comment(p.n.Name, " cluster IP").proto(p.n.Protocol).
			addr("-d", svc.ClusterIP).num("--dport", svc.Port).jump(p.internalChain)
		return
	}
	d.filter.rule(chainServices).comment(p.n.Name, p.internalWhy).proto(p.n.Protocol).
		addr("-d", svc.ClusterIP).num("--dport", svc.Port).jump(p.internalTarget)
}

// writeExternalIPDispatch sends external IPs to EXT; when external traffic
// has no endpoint, filter rejects (or drops) what EXT did not short-circuit.
func (b *Builder) writeExternalIPDispatch(d *dispatchBufs, p *svcPlan) {
	svc := p.svc
	for _, ip := range svc.ExternalIPs {
		if p.hasEndpoints {
			d.natServices.rule(chainServices).comment(p.n.Name, " external IP").proto(p.n.Protocol).
				addr("-d", ip).num("--dport", svc.Port).jump(p.n.EXT)
		}
		if !p.hasExternal {
			d.filter.rule(chainExternalServices).comment(p.n.Name, p.externalWhy).proto(p.n.Protocol).
				addr("-d", ip).num("--dport", svc.Port).jump(p.externalTarget)
		}
	}
}

// writeLoadBalancerDispatch sends LB IPs to FW (with source ranges) or EXT.
func (b *Builder) writeLoadBalancerDispatch(d *dispatchBufs, p *svcPlan) {
	svc := p.svc
	target := p.n.EXT
	if p.usesFW {
		target = p.n.FW
	}
	for _, ip := range svc.LoadBalancerVIPs {
		if p.hasEndpoints {
			d.natServices.rule(chainServices).comment(p.n.Name, " loadbalancer IP").proto(p.n.Protocol).
				addr("-d", ip).num("--dport", svc.Port).jump(target)
		}
		if p.usesFW {
			b.writeFirewallDrop(d, p, ip)
		}
	}
	if p.hasExternal {
		return
	}
	for _, ip := range svc.LoadBalancerVIPs {
		d.filter.rule(chainExternalServices).comment(p.n.Name, p.externalWhy).proto(p.n.Protocol).
			addr("-d", ip).num("--dport", svc.Port).jump(p.externalTarget)
	}
}
