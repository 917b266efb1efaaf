package iptables

// jumpRule links a built-in chain to one of our top-level chains. These are
// the only rules outside our own chains; they are ensured with
// EnsureRule(Prepend) on full syncs, since a restore would have to replace
// the whole built-in chain.
type jumpRule struct {
	table   Table
	from    string
	to      string
	comment string
	extra   []string
}

var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}

// jumpRules are kube-proxy's iptablesJumpChains, in its order.
var jumpRules = []jumpRule{
	{TableFilter, "INPUT", chainExternalServices, "kubernetes externally-visible service portals", ctNew},
	{TableFilter, "FORWARD", chainExternalServices, "kubernetes externally-visible service portals", ctNew},
	{TableFilter, "INPUT", chainNodePorts, "kubernetes health check service ports", nil},
	{TableFilter, "FORWARD", chainServices, "kubernetes service portals", ctNew},
	{TableFilter, "OUTPUT", chainServices, "kubernetes service portals", ctNew},
	{TableFilter, "FORWARD", chainForward, "kubernetes forwarding rules", nil},
	{TableFilter, "INPUT", chainProxyFirewall, "kubernetes load balancer firewall", ctNew},
	{TableFilter, "OUTPUT", chainProxyFirewall, "kubernetes load balancer firewall", ctNew},
	{TableFilter, "FORWARD", chainProxyFirewall, "kubernetes load balancer firewall", ctNew},
	{TableNAT, "OUTPUT", chainServices, "kubernetes service portals", nil},
	{TableNAT, "PREROUTING", chainServices, "kubernetes service portals", nil},
	{TableNAT, "POSTROUTING", chainPostrouting, "kubernetes postrouting rules", nil},
}

// kubeletJumpRules duplicate kubelet's jumps to KUBE-FIREWALL; installed
// with the localhost guard, never removed (kubelet owns them).
var kubeletJumpRules = []jumpRule{
	{TableFilter, "INPUT", chainKubeletFirewall, "", nil},
	{TableFilter, "OUTPUT", chainKubeletFirewall, "", nil},
}

// args is the rule as EnsureRule/DeleteRule take it (comment unquoted).
func (j jumpRule) args() []string {
	args := append([]string(nil), j.extra...)
	if j.comment != "" {
		args = append(args, "-m", "comment", "--comment", j.comment)
	}
	return append(args, "-j", j.to)
}

// natTopChains and filterTopChains are our non-service chains, for cleanup.
var (
	natTopChains    = []string{chainServices, chainNodePorts, chainPostrouting, chainMarkMasq}
	filterTopChains = []string{chainServices, chainExternalServices, chainForward, chainNodePorts, chainProxyFirewall}
)

// writeFilterStatic writes KUBE-FORWARD and the localhost guard.
func (b *Builder) writeFilterStatic(rs *Ruleset) {
	w := &rs.filter
	// INVALID packets (e.g. out-of-window TCP) reaching a DNATed flow would
	// be forwarded un-NATed and answered with a RST by the endpoint; drop
	// them unless conntrack is told to be liberal
	// (https://issues.k8s.io/74839, 117924).
	if !b.opts.ConntrackTCPBeLiberal {
		w.rule(chainForward).a("-m", "conntrack", "--ctstate", "INVALID")
		if b.opts.NFAcctCTStateInvalid {
			w.a("-m", "nfacct", "--nfacct-name", NFAcctCTStateInvalidDropped)
		}
		w.jump("DROP")
	}
	// Forward what we marked even when the FORWARD policy is DROP, so
	// NodePort traffic to other nodes' endpoints passes.
	w.rule(chainForward).comment("kubernetes forwarding rules").a("-m", "mark", "--mark", b.markMatch).jump("ACCEPT")
	w.rule(chainForward).comment("kubernetes forwarding conntrack rule").a("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED").jump("ACCEPT")
	b.writeLocalhostGuard(rs)
}
