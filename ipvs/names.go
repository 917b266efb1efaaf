// Package ipvs is svcproxy's IPVS data plane: a pure builder that turns a
// snapshot into the desired IPVS table, kube-ipvs0 addresses, ipsets and the
// few iptables rules IPVS mode still needs; a small kernel layer (moby/ipvs,
// netlink, ipset restore) with stateful fakes; and a reconciler that applies
// only the difference, with graceful termination of real servers.
package ipvs

import (
	"strings"

	v1 "k8s.io/api/core/v1"
)

// DummyDevice is the interface service addresses are bound to, so the node
// accepts their traffic and IPVS sees it at LOCAL_IN.
const DummyDevice = "kube-ipvs0"

// Chain names (kube-proxy's, so operators' tooling keeps working).
const (
	ChainServices              = "KUBE-SERVICES"
	ChainPostrouting           = "KUBE-POSTROUTING"
	ChainNodePort              = "KUBE-NODE-PORT"
	ChainLoadBalancer          = "KUBE-LOAD-BALANCER"
	ChainMarkMasq              = "KUBE-MARK-MASQ"
	ChainForward               = "KUBE-FORWARD"
	ChainProxyFirewall         = "KUBE-PROXY-FIREWALL"
	ChainSourceRangesFirewall  = "KUBE-SOURCE-RANGES-FIREWALL"
	ChainIPVSFilter            = "KUBE-IPVS-FILTER"
	ChainIPVSOutFilter         = "KUBE-IPVS-OUT-FILTER"
	chainOutput                = "OUTPUT"
	chainPrerouting            = "PREROUTING"
	chainPostroutingBuiltin    = "POSTROUTING"
	chainInput                 = "INPUT"
	chainForwardBuiltin        = "FORWARD"
	tableNAT, tableFilter      = "nat", "filter"
	setTypeHashIPPort          = "hash:ip,port"
	setTypeHashIPPortIP        = "hash:ip,port,ip"
	setTypeHashIPPortNet       = "hash:ip,port,net"
	setTypeHashIP              = "hash:ip"
	setTypeBitmapPort          = "bitmap:port"
	setMaxElem                 = 1 << 20
	masqueradeComment          = "kubernetes service traffic requiring SNAT"
	noLocalEndpointsSetComment = "Local external traffic policy, no local endpoint: drop external traffic"
)

// ipset base names (IPv4 names; IPv6 ones get the KUBE-6- prefix).
const (
	SetLoopBack               = "KUBE-LOOP-BACK"
	SetClusterIP              = "KUBE-CLUSTER-IP"
	SetExternalIP             = "KUBE-EXTERNAL-IP"
	SetExternalIPLocal        = "KUBE-EXTERNAL-IP-LOCAL"
	SetLoadBalancer           = "KUBE-LOAD-BALANCER"
	SetLoadBalancerFW         = "KUBE-LOAD-BALANCER-FW"
	SetLoadBalancerLocal      = "KUBE-LOAD-BALANCER-LOCAL"
	SetLoadBalancerSourceIP   = "KUBE-LOAD-BALANCER-SOURCE-IP"
	SetLoadBalancerSourceCIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
	SetNodePortTCP            = "KUBE-NODE-PORT-TCP"
	SetNodePortLocalTCP       = "KUBE-NODE-PORT-LOCAL-TCP"
	SetNodePortUDP            = "KUBE-NODE-PORT-UDP"
	SetNodePortLocalUDP       = "KUBE-NODE-PORT-LOCAL-UDP"
	SetNodePortSCTP           = "KUBE-NODE-PORT-SCTP-HASH"
	SetNodePortLocalSCTP      = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
	SetHealthCheckNodePort    = "KUBE-HEALTH-CHECK-NODE-PORT"
	SetIPVSIPs                = "KUBE-IPVS-IPS"
	// SetNoLocalEndpoints is ours, not kube-proxy's: the eTP=Local
	// addresses with no local endpoint, whose external traffic the filter
	// table drops (as iptables mode does) while pods and the node still
	// reach the cluster endpoints IPVS falls back to.
	SetNoLocalEndpoints = "KUBE-NO-LOCAL-EXTERNAL"
)

// setInfo is the type and comment of each ipset, in creation order.
var setInfo = []struct {
	name, typ, comment string
}{
	{SetLoopBack, setTypeHashIPPortIP, "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"},
	{SetClusterIP, setTypeHashIPPort, "Kubernetes service cluster ip + port for masquerade purpose"},
	{SetExternalIP, setTypeHashIPPort, "Kubernetes service external ip + port for masquerade and filter purpose"},
	{SetExternalIPLocal, setTypeHashIPPort, "Kubernetes service external ip + port with externalTrafficPolicy=local"},
	{SetLoadBalancer, setTypeHashIPPort, "Kubernetes service lb portal"},
	{SetLoadBalancerFW, setTypeHashIPPort, "Kubernetes service load balancer ip + port for load balancer with sourceRange"},
	{SetLoadBalancerLocal, setTypeHashIPPort, "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"},
	{SetLoadBalancerSourceIP, setTypeHashIPPortIP, "Kubernetes service load balancer ip + port + source IP for packet filter purpose"},
	{SetLoadBalancerSourceCIDR, setTypeHashIPPortNet, "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"},
	{SetNodePortTCP, setTypeBitmapPort, "Kubernetes nodeport TCP port for masquerade purpose"},
	{SetNodePortLocalTCP, setTypeBitmapPort, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"},
	{SetNodePortUDP, setTypeBitmapPort, "Kubernetes nodeport UDP port for masquerade purpose"},
	{SetNodePortLocalUDP, setTypeBitmapPort, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"},
	{SetNodePortSCTP, setTypeHashIPPort, "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"},
	{SetNodePortLocalSCTP, setTypeHashIPPort, "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"},
	{SetHealthCheckNodePort, setTypeBitmapPort, "Kubernetes health check node port"},
	{SetIPVSIPs, setTypeHashIP, "Addresses on the kube-ipvs0 dummy interface"},
	{SetNoLocalEndpoints, setTypeHashIPPort, noLocalEndpointsSetComment},
}

// SetName is the kernel name of base for family: kube-proxy renames IPv6
// sets KUBE-6-... so both families coexist, within ipset's 31 characters.
func SetName(base string, family v1.IPFamily) string {
	if family != v1.IPv6Protocol || !strings.HasPrefix(base, "KUBE-") {
		return base
	}
	name := "KUBE-6-" + strings.TrimPrefix(base, "KUBE-")
	if len(name) > 31 {
		name = name[:31]
	}
	return name
}

// SetNames lists the kernel names of every ipset this mode owns for family.
func SetNames(family v1.IPFamily) []string {
	out := make([]string, 0, len(setInfo))
	for _, s := range setInfo {
		out = append(out, SetName(s.name, family))
	}
	return out
}

// natChains and filterChains are the chains this mode owns.
var (
	natChains    = []string{ChainServices, ChainPostrouting, ChainNodePort, ChainLoadBalancer, ChainMarkMasq}
	filterChains = []string{ChainForward, ChainNodePort, ChainProxyFirewall, ChainSourceRangesFirewall, ChainIPVSFilter, ChainIPVSOutFilter}
)

// Jump is a rule in a built-in chain leading to one of ours. The kernel
// layer ensures it (kube-proxy prepends them) after the restore that
// creates the target chain.
type Jump struct {
	Table, From, To, Comment string
}

// Args are the rule's iptables arguments.
func (j Jump) Args() []string {
	return []string{"-m", "comment", "--comment", j.Comment, "-j", j.To}
}

// Jumps are kube-proxy's IPVS-mode jump rules, in its order.
var Jumps = []Jump{
	{tableNAT, chainOutput, ChainServices, "kubernetes service portals"},
	{tableNAT, chainPrerouting, ChainServices, "kubernetes service portals"},
	{tableNAT, chainPostroutingBuiltin, ChainPostrouting, "kubernetes postrouting rules"},
	{tableFilter, chainForwardBuiltin, ChainForward, "kubernetes forwarding rules"},
	{tableFilter, chainInput, ChainNodePort, "kubernetes health check rules"},
	{tableFilter, chainInput, ChainProxyFirewall, "kube-proxy firewall rules"},
	{tableFilter, chainForwardBuiltin, ChainProxyFirewall, "kube-proxy firewall rules"},
	{tableFilter, chainInput, ChainIPVSFilter, "kubernetes ipvs access filter"},
	{tableFilter, chainOutput, ChainIPVSOutFilter, "kubernetes ipvs access filter"},
}
