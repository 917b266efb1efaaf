package ipvs

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// ruleWriter accumulates one table's rules in iptables-restore form.
type ruleWriter struct {
	buf   bytes.Buffer
	rules int
}

func (w *ruleWriter) rule(chain string, args ...string) {
	w.buf.WriteString("-A " + chain)
	for _, a := range args {
		w.buf.WriteByte(' ')
		if strings.ContainsAny(a, " \t") {
			w.buf.WriteString(strconv.Quote(a))
		} else {
			w.buf.WriteString(a)
		}
	}
	w.buf.WriteByte('\n')
	w.rules++
}

// setRule is one of kube-proxy's "-m set" dispatch rules, written only when
// the set has members.
type setRule struct {
	set, table, chain, target, match string
	proto                            string
}

// setRules are kube-proxy's ipsetWithIptablesChain, in its order (the
// -LOCAL sets must come before the general ones).
var setRules = []setRule{
	{SetLoopBack, tableNAT, ChainPostrouting, "MASQUERADE", "dst,dst,src", ""},
	{SetLoadBalancer, tableNAT, ChainServices, ChainLoadBalancer, "dst,dst", ""},
	{SetLoadBalancerLocal, tableNAT, ChainLoadBalancer, "RETURN", "dst,dst", ""},
	{SetNodePortLocalTCP, tableNAT, ChainNodePort, "RETURN", "dst", "tcp"},
	{SetNodePortTCP, tableNAT, ChainNodePort, ChainMarkMasq, "dst", "tcp"},
	{SetNodePortLocalUDP, tableNAT, ChainNodePort, "RETURN", "dst", "udp"},
	{SetNodePortUDP, tableNAT, ChainNodePort, ChainMarkMasq, "dst", "udp"},
	{SetNodePortLocalSCTP, tableNAT, ChainNodePort, "RETURN", "dst,dst", "sctp"},
	{SetNodePortSCTP, tableNAT, ChainNodePort, ChainMarkMasq, "dst,dst", "sctp"},
	{SetLoadBalancerFW, tableFilter, ChainProxyFirewall, ChainSourceRangesFirewall, "dst,dst", ""},
	{SetLoadBalancerSourceCIDR, tableFilter, ChainSourceRangesFirewall, "RETURN", "dst,dst,src", ""},
	{SetLoadBalancerSourceIP, tableFilter, ChainSourceRangesFirewall, "RETURN", "dst,dst,src", ""},
}

func comment(base string) string {
	for _, s := range setInfo {
		if s.name == base {
			return s.comment
		}
	}
	return base
}

// iptablesRules writes kube-proxy's IPVS-mode filter and nat rules. Every
// owned chain is declared, so --noflush restore replaces its contents.
func (b *builder) iptablesRules() []byte {
	var nat, filter ruleWriter
	name := func(base string) string { return SetName(base, b.family) }
	empty := func(base string) bool { return b.sets[base].Members.Len() == 0 }
	matchSet := func(base, match string) []string {
		return []string{"-m", "set", "--match-set", name(base), match}
	}
	mark := b.opts.masqMark()

	loopback := "127.0.0.0/8"
	if b.family == v1.IPv6Protocol {
		loopback = "::1/128"
	}
	// Connections from localhost are never to services.
	nat.rule(ChainServices, "-s", loopback, "-j", "RETURN")

	for _, r := range setRules {
		if empty(r.set) {
			continue
		}
		var args []string
		if r.proto != "" {
			args = append(args, "-p", r.proto)
		}
		args = append(args, "-m", "comment", "--comment", comment(r.set))
		args = append(append(args, matchSet(r.set, r.match)...), "-j", r.target)
		if r.table == tableFilter {
			filter.rule(r.chain, args...)
		} else {
			nat.rule(r.chain, args...)
		}
	}

	if !empty(SetClusterIP) {
		args := append([]string{"-m", "comment", "--comment", comment(SetClusterIP)}, "-m", "set", "--match-set", name(SetClusterIP))
		switch {
		case b.opts.MasqueradeAll:
			nat.rule(ChainServices, append(args, "dst,dst", "-j", ChainMarkMasq)...)
		case b.opts.LocalDetector.IsImplemented():
			// Off-cluster traffic to a ClusterIP (routed to this node) may
			// go to another node: masquerade it.
			args = append(args, "dst,dst")
			args = append(args, b.opts.LocalDetector.IfNotLocal()...)
			nat.rule(ChainServices, append(args, "-j", ChainMarkMasq)...)
		default:
			// The node picks a VIP on kube-ipvs0 as source when it calls a
			// VIP; masquerade those connections so replies come back.
			nat.rule(ChainServices, append(args, "src,dst", "-j", ChainMarkMasq)...)
		}
	}
	externalIPRules := func(args []string) {
		// Traffic from off-node (not a bridge port, not a local source)...
		nat.rule(ChainServices, append(append([]string{}, args...),
			"-m", "physdev", "!", "--physdev-is-in", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "ACCEPT")...)
		// ...and traffic to external IPs that are local addresses stays here.
		nat.rule(ChainServices, append(append([]string{}, args...), "-m", "addrtype", "--dst-type", "LOCAL", "-j", "ACCEPT")...)
	}
	if !empty(SetExternalIP) {
		args := append([]string{"-m", "comment", "--comment", comment(SetExternalIP)}, matchSet(SetExternalIP, "dst,dst")...)
		nat.rule(ChainServices, append(append([]string{}, args...), "-j", ChainMarkMasq)...)
		externalIPRules(args)
	}
	if !empty(SetExternalIPLocal) {
		externalIPRules(append([]string{"-m", "comment", "--comment", comment(SetExternalIPLocal)}, matchSet(SetExternalIPLocal, "dst,dst")...))
	}
	nat.rule(ChainServices, "-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainNodePort)
	nat.rule(ChainLoadBalancer, "-j", ChainMarkMasq)
	filter.rule(ChainSourceRangesFirewall, "-j", "DROP")

	if !empty(SetNoLocalEndpoints) {
		args := append([]string{"-m", "comment", "--comment", noLocalEndpointsSetComment}, matchSet(SetNoLocalEndpoints, "dst,dst")...)
		args = append(args, b.opts.LocalDetector.IfNotLocal()...)
		args = append(args, "-m", "addrtype", "!", "--src-type", "LOCAL", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
		filter.rule(ChainProxyFirewall, args...)
	}
	// The node may not use an LB whose source ranges exclude it; locally
	// the source and the destination are both the LB IP.
	for _, k := range b.lbNoNodeAccess {
		filter.rule(ChainIPVSOutFilter, "-s", k.Address.String(), "-m", "ipvs", "--vaddr", k.Address.String(),
			"--vproto", strings.ToLower(string(k.Protocol)), "--vport", strconv.Itoa(int(k.Port)), "-j", "DROP")
	}
	// Accept virtual-service traffic in case later rules would block it.
	for _, s := range []string{SetClusterIP, SetLoadBalancer} {
		if !empty(s) {
			nat.rule(ChainServices, append(matchSet(s, "dst,dst"), "-j", "ACCEPT")...)
		}
	}

	filter.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding rules",
		"-m", "mark", "--mark", mark+"/"+mark, "-j", "ACCEPT")
	filter.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	filter.rule(ChainNodePort, append(append([]string{"-m", "comment", "--comment", comment(SetHealthCheckNodePort)},
		matchSet(SetHealthCheckNodePort, "dst")...), "-j", "ACCEPT")...)

	// Addresses on kube-ipvs0 answer only on service ports (#72236).
	for _, s := range []string{SetLoadBalancer, SetClusterIP, SetExternalIP, SetExternalIPLocal} {
		filter.rule(ChainIPVSFilter, append(matchSet(s, "dst,dst"), "-j", "RETURN")...)
	}
	filter.rule(ChainIPVSFilter, append(matchSet(SetHealthCheckNodePort, "dst"), "-j", "RETURN")...)
	filter.rule(ChainIPVSFilter, append([]string{"-m", "conntrack", "--ctstate", "NEW"},
		append(matchSet(SetIPVSIPs, "dst"), "-j", "REJECT")...)...)

	nat.rule(ChainPostrouting, "-m", "mark", "!", "--mark", mark+"/"+mark, "-j", "RETURN")
	// Clear the mark so a packet that goes through the stack again is not
	// masqueraded twice.
	nat.rule(ChainPostrouting, "-j", "MARK", "--xor-mark", mark)
	masq := []string{"-m", "comment", "--comment", masqueradeComment, "-j", "MASQUERADE"}
	if b.opts.MasqueradeRandomFully {
		masq = append(masq, "--random-fully")
	}
	nat.rule(ChainPostrouting, masq...)
	nat.rule(ChainMarkMasq, "-j", "MARK", "--or-mark", mark)

	var out bytes.Buffer
	out.WriteString("*filter\n")
	for _, c := range filterChains {
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
	}
	out.Write(filter.buf.Bytes())
	out.WriteString("COMMIT\n*nat\n")
	for _, c := range natChains {
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
	}
	out.Write(nat.buf.Bytes())
	out.WriteString("COMMIT\n")
	return out.Bytes()
}
