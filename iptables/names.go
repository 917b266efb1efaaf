package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Chain names are kube-proxy's, so operators' scripts, dashboards and
// cleanup tools keep working, and a switch between the two proxies finds
// and replaces the other's chains.
const (
	chainServices         = "KUBE-SERVICES"
	chainExternalServices = "KUBE-EXTERNAL-SERVICES"
	chainNodePorts        = "KUBE-NODEPORTS"
	chainPostrouting      = "KUBE-POSTROUTING"
	chainMarkMasq         = "KUBE-MARK-MASQ"
	chainForward          = "KUBE-FORWARD"
	chainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	// chainKubeletFirewall is kubelet's; kube-proxy keeps a copy of its
	// anti-martian rule because it relies on route_localnet.
	chainKubeletFirewall = "KUBE-FIREWALL"
	// ChainCanary is an empty chain in mangle, nat and filter; when one
	// disappears, something flushed iptables and a full sync is due.
	ChainCanary = "KUBE-PROXY-CANARY"
)

// Prefixes of the per-service chains.
const (
	prefixSVC = "KUBE-SVC-"
	prefixSVL = "KUBE-SVL-"
	prefixEXT = "KUBE-EXT-"
	prefixFW  = "KUBE-FW-"
	prefixSEP = "KUBE-SEP-"
)

// Names of the nfacct counters kube-proxy matches with -m nfacct.
const (
	NFAcctCTStateInvalidDropped    = "ct_state_invalid_dropped_pkts"
	NFAcctLocalhostNodePortAccepts = "localhost_nps_accepted_pkts"
)

// IsServiceChain reports whether chain is a per-service chain of ours (or
// of kube-proxy, which names them the same way).
func IsServiceChain(chain string) bool {
	return strings.HasPrefix(chain, prefixSVC) || strings.HasPrefix(chain, prefixSVL) ||
		strings.HasPrefix(chain, prefixEXT) || strings.HasPrefix(chain, prefixFW) ||
		strings.HasPrefix(chain, prefixSEP)
}

// hash16 is kube-proxy's chain hash: the first 16 characters of
// base32(sha256(s)). Ten bytes of hash encode to exactly those 16 characters.
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	var out [16]byte
	base32.StdEncoding.Encode(out[:], sum[:10])
	return string(out[:])
}

// ServiceChainNames are the chain names of one ServicePort. kube-proxy hashes
// servicePortName.String() + lowercase protocol; the endpoint chain adds "ip:port".
type ServiceChainNames struct {
	// Name is servicePortName.String(), used in comments.
	Name string
	// Protocol is the lowercase protocol, as in "-m tcp -p tcp".
	Protocol           string
	SVC, SVL, EXT, FW  string
	sepByEndpoint      map[netip.AddrPort]string
	sepHashInputPrefix string
}

// NewServiceChainNames computes the names for one ServicePort.
func NewServiceChainNames(name proxier.ServicePortName) *ServiceChainNames {
	proto := strings.ToLower(string(name.Protocol))
	str := name.String()
	h := hash16(str + proto)
	return &ServiceChainNames{
		Name:               str,
		Protocol:           proto,
		SVC:                prefixSVC + h,
		SVL:                prefixSVL + h,
		EXT:                prefixEXT + h,
		FW:                 prefixFW + h,
		sepHashInputPrefix: str + proto,
	}
}

// SEP returns the KUBE-SEP- chain of endpoint ep, computed once per endpoint.
func (n *ServiceChainNames) SEP(ep *proxier.Endpoint) string {
	ap := ep.AddrPort()
	if name, ok := n.sepByEndpoint[ap]; ok {
		return name
	}
	if n.sepByEndpoint == nil {
		n.sepByEndpoint = make(map[netip.AddrPort]string)
	}
	name := prefixSEP + hash16(n.sepHashInputPrefix+ap.String())
	n.sepByEndpoint[ap] = name
	return name
}

// pruneSEPs forgets endpoint names not in keep, so the cache does not grow
// with every endpoint a service ever had.
func (n *ServiceChainNames) pruneSEPs(endpoints []*proxier.Endpoint) {
	if len(n.sepByEndpoint) <= 2*len(endpoints)+8 {
		return
	}
	keep := make(map[netip.AddrPort]string, len(endpoints))
	for _, ep := range endpoints {
		ap := ep.AddrPort()
		if name, ok := n.sepByEndpoint[ap]; ok {
			keep[ap] = name
		}
	}
	n.sepByEndpoint = keep
}
