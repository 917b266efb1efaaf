package iptables

import (
	"strconv"

	"github.com/svcproxy/svcproxy/proxier"
)

// writeEndpointDispatch fills a KUBE-SVC- or KUBE-SVL- chain: ClientIP
// affinity checks first, then one rule per endpoint where rule i of n
// matches with probability 1/(n-i), so each endpoint gets 1/n overall and
// the last rule catches the rest.
func (b *Builder) writeEndpointDispatch(rs *Ruleset, p *svcPlan, chain string, eps []*proxier.Endpoint, comments bool) {
	w, n := &rs.svcRules, p.n
	if affinity := p.svc.StickyMaxAgeSeconds; affinity > 0 {
		for _, ep := range eps {
			sep := n.SEP(ep)
			w.rule(chain)
			if comments {
				b.endpointComment(w, n.Name, ep)
			}
			w.a("-m", "recent", "--name", sep, "--rcheck").num("--seconds", affinity).raw(" --reap").jump(sep)
		}
	}
	for i, ep := range eps {
		w.rule(chain)
		if comments {
			b.endpointComment(w, n.Name, ep)
		}
		if left := len(eps) - i; left > 1 {
			w.a("-m", "statistic", "--mode", "random", "--probability", b.probability(left))
		}
		w.jump(n.SEP(ep))
	}
}

// endpointComment writes kube-proxy's "<svc> -> <ip:port>" comment.
func (b *Builder) endpointComment(w *ruleBuf, name string, ep *proxier.Endpoint) {
	w.b = append(w.b, ` -m comment --comment "`...)
	w.b = append(w.b, name...)
	w.b = append(w.b, " -> "...)
	w.b = appendEndpoint(w.b, ep)
	w.b = append(w.b, '"')
}

// appendEndpoint appends "ip:port" ("[ip]:port" for IPv6).
func appendEndpoint(b []byte, ep *proxier.Endpoint) []byte {
	if ep.IP.Is6() {
		b = append(b, '[')
		b = ep.IP.AppendTo(b)
		b = append(b, ']')
	} else {
		b = ep.IP.AppendTo(b)
	}
	b = append(b, ':')
	return strconv.AppendInt(b, int64(ep.Port), 10)
}

// writeEndpointChains writes one KUBE-SEP- chain per reachable endpoint:
// mark hairpin traffic (a pod reaching itself through the service must be
// masqueraded or it would answer itself directly), record ClientIP
// affinity, then DNAT.
func (b *Builder) writeEndpointChains(rs *Ruleset, p *svcPlan, chains []string, comments bool) []string {
	w, n := &rs.svcRules, p.n
	affinity := p.svc.StickyMaxAgeSeconds > 0
	for _, ep := range p.reachable {
		sep := n.SEP(ep)
		chains = append(chains, sep)

		w.rule(sep)
		if comments {
			w.comment(n.Name)
		}
		w.addr("-s", ep.IP).jump(chainMarkMasq)

		w.rule(sep)
		if comments {
			w.comment(n.Name)
		}
		if affinity {
			w.a("-m", "recent", "--name", sep, "--set")
		}
		w.proto(n.Protocol).raw(" -j DNAT --to-destination ")
		w.b = appendEndpoint(w.b, ep)
		w.end()
	}
	return chains
}
