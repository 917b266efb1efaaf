package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// addService adds everything one ServicePort needs: its virtual servers,
// bound addresses and ipset members.
func (b *builder) addService(svc *proxier.ServicePort, eps []*proxier.Endpoint, node proxier.Node) {
	p := b.planEndpoints(svc, eps, node)
	b.addLoopBack(svc, p)
	b.addClusterIP(svc, p)
	b.addExternalIPs(svc, p)
	b.addLoadBalancers(svc, p)
	b.addNodePort(svc, p)
	if svc.HealthCheckNodePort != 0 {
		b.member(SetHealthCheckNodePort, fmt.Sprint(svc.HealthCheckNodePort))
	}
}

// addLoopBack lets a pod reach itself through its service: the reply
// would otherwise skip IPVS, so such traffic is masqueraded (hairpin).
func (b *builder) addLoopBack(svc *proxier.ServicePort, p endpointPlan) {
	for _, list := range [][]*proxier.Endpoint{p.internal, p.external} {
		for _, ep := range list {
			b.member(SetLoopBack, ipPortIP(ep.IP, svc.Protocol, ep.Port, ep.IP.String()))
		}
	}
}

func (b *builder) addClusterIP(svc *proxier.ServicePort, p endpointPlan) {
	b.member(SetClusterIP, ipPort(svc.ClusterIP, svc.Protocol, svc.Port))
	b.addVS(VSKey{svc.ClusterIP, svc.Protocol, uint16(svc.Port)}, svc, p.internal)
	b.bind(svc.ClusterIP)
}

func (b *builder) addExternalIPs(svc *proxier.ServicePort, p endpointPlan) {
	for _, ip := range svc.ExternalIPs {
		m := ipPort(ip, svc.Protocol, svc.Port)
		if svc.ExternalPolicyLocal {
			b.member(SetExternalIPLocal, m)
		} else {
			b.member(SetExternalIP, m)
		}
		if p.dropExternal {
			b.member(SetNoLocalEndpoints, m)
		}
		b.addVS(VSKey{ip, svc.Protocol, uint16(svc.Port)}, svc, p.external)
		b.bind(ip)
	}
}

func (b *builder) addLoadBalancers(svc *proxier.ServicePort, p endpointPlan) {
	ranges := svc.LoadBalancerSourceRanges
	if slices.ContainsFunc(ranges, func(c netip.Prefix) bool { return c.Bits() == 0 }) {
		// A /0 range admits every source, the node included, so there is nothing
		// to filter; and hash:ip,port,net refuses a zero prefix length, which
		// would fail every ipset restore (kube-proxy skips it too, #132719).
		ranges = nil
	}
	for _, ip := range svc.LoadBalancerVIPs {
		m := ipPort(ip, svc.Protocol, svc.Port)
		b.member(SetLoadBalancer, m)
		if svc.ExternalPolicyLocal {
			b.member(SetLoadBalancerLocal, m)
		}
		if p.dropExternal {
			b.member(SetNoLocalEndpoints, m)
		}
		key := VSKey{ip, svc.Protocol, uint16(svc.Port)}
		if len(ranges) > 0 {
			b.member(SetLoadBalancerFW, m)
			allowNode := false
			for _, cidr := range ranges {
				b.member(SetLoadBalancerSourceCIDR, ipPortIP(ip, svc.Protocol, svc.Port, netString(cidr)))
				if b.primaryIP.IsValid() && cidr.Contains(b.primaryIP) {
					allowNode = true
				}
			}
			if allowNode {
				// The node reaches an LB IP bound locally from that same IP.
				b.member(SetLoadBalancerSourceIP, ipPortIP(ip, svc.Protocol, svc.Port, ip.String()))
			} else {
				b.lbNoNodeAccess = append(b.lbNoNodeAccess, key)
			}
		}
		b.addVS(key, svc, p.external)
		b.bind(ip)
	}
}

func (b *builder) addNodePort(svc *proxier.ServicePort, p endpointPlan) {
	if svc.NodePort == 0 || len(b.nodePortIPs) == 0 {
		return
	}
	local := svc.ExternalPolicyLocal
	switch svc.Protocol {
	case v1.ProtocolTCP, v1.ProtocolUDP:
		set, localSet := SetNodePortTCP, SetNodePortLocalTCP
		if svc.Protocol == v1.ProtocolUDP {
			set, localSet = SetNodePortUDP, SetNodePortLocalUDP
		}
		b.member(set, fmt.Sprint(svc.NodePort))
		if local {
			b.member(localSet, fmt.Sprint(svc.NodePort))
		}
	case v1.ProtocolSCTP:
		// SCTP NodePorts use hash:ip,port sets, one member per node IP.
		for _, ip := range b.nodePortIPs {
			m := ipPort(ip, svc.Protocol, svc.NodePort)
			b.member(SetNodePortSCTP, m)
			if local {
				b.member(SetNodePortLocalSCTP, m)
			}
		}
	}
	for _, ip := range b.nodePortIPs {
		if p.dropExternal {
			b.member(SetNoLocalEndpoints, ipPort(ip, svc.Protocol, svc.NodePort))
		}
		b.addVS(VSKey{ip, svc.Protocol, uint16(svc.NodePort)}, svc, p.external)
	}
}

// ipPort is a hash:ip,port member as `ipset save` prints it.
func ipPort(ip netip.Addr, proto v1.Protocol, port int32) string {
	return ip.String() + "," + strings.ToLower(string(proto)) + ":" + strconv.Itoa(int(port))
}

// ipPortIP is a hash:ip,port,ip or hash:ip,port,net member.
func ipPortIP(ip netip.Addr, proto v1.Protocol, port int32, third string) string {
	return ipPort(ip, proto, port) + "," + third
}

// netString prints a prefix as ipset does: host prefixes without a length.
func netString(p netip.Prefix) string {
	p = p.Masked()
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}
