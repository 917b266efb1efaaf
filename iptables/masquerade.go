package iptables

// writeStaticRules writes KUBE-POSTROUTING and KUBE-MARK-MASQ. Service
// chains only mark packets; the one MASQUERADE rule acts on the mark, so
// the mark value can change in one place.
func (b *Builder) writeStaticRules(rs *Ruleset) {
	w := &rs.natStatic
	w.rule(chainPostrouting).a("-m", "mark", "!", "--mark", b.markMatch).jump("RETURN")
	// Clear the mark so a packet that traverses the stack again (e.g.
	// through a tunnel) is not masqueraded twice.
	w.rule(chainPostrouting).a("-j", "MARK", "--xor-mark", b.markMasq).end()
	w.rule(chainPostrouting).comment("kubernetes service traffic requiring SNAT").raw(" -j MASQUERADE")
	if b.opts.MasqueradeRandomFully {
		w.raw(" --random-fully")
	}
	w.end()
	w.rule(chainMarkMasq).a("-j", "MARK", "--or-mark", b.markMasq).end()
}

// writeInternalMasquerade marks ClusterIP traffic for masquerade: all of it
// with masquerade-all, else what does not come from a local pod (for
// example a client routed to the service CIDR through this node), since the
// reply may otherwise bypass this node.
func (b *Builder) writeInternalMasquerade(rs *Ruleset, p *svcPlan) {
	if !p.hasInternal {
		return
	}
	if !b.opts.MasqueradeAll && !b.opts.LocalDetector.IsImplemented() {
		return
	}
	svc := p.svc
	w := rs.svcRules.rule(p.internalChain).comment(p.n.Name, " cluster IP").proto(p.n.Protocol).
		addr("-d", svc.ClusterIP).num("--dport", svc.Port)
	if !b.opts.MasqueradeAll {
		w.raw(b.opts.LocalDetector.notLocal)
	}
	w.jump(chainMarkMasq)
}

// writeExternalChain writes KUBE-EXT-, where NodePort, external IP and LB
// traffic goes. With eTP=Cluster it masquerades (the endpoint may be on
// another node). With eTP=Local it keeps the client source: pod traffic is
// short-circuited to all endpoints (as if it had gone out to the load
// balancer and back), traffic from the node itself is masqueraded (its
// source would be the LB IP) and sent to all endpoints, and the rest goes
// to the local endpoints only.
func (b *Builder) writeExternalChain(rs *Ruleset, p *svcPlan) {
	w, n := &rs.svcRules, p.n
	if !p.externalLocal {
		w.rule(n.EXT).comment("masquerade traffic for ", n.Name, " external destinations").jump(chainMarkMasq)
	} else {
		if b.opts.LocalDetector.IsImplemented() {
			w.rule(n.EXT).comment("pod traffic for ", n.Name, " external destinations").
				raw(b.opts.LocalDetector.local).jump(n.SVC)
		}
		w.rule(n.EXT).comment("masquerade LOCAL traffic for ", n.Name, " external destinations").
			a("-m", "addrtype", "--src-type", "LOCAL").jump(chainMarkMasq)
		w.rule(n.EXT).comment("route LOCAL traffic for ", n.Name, " external destinations").
			a("-m", "addrtype", "--src-type", "LOCAL").jump(n.SVC)
	}
	if p.hasExternal {
		w.rule(n.EXT).jump(p.externalPolicyChain)
	}
}
