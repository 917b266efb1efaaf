package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// defaultStickyMaxAgeSeconds is the API default for ClientIP affinity (3h).
const defaultStickyMaxAgeSeconds = 10800

// servicePorts is one Service's ports for one IP family.
type servicePorts map[ServicePortName]*ServicePort

// parseService turns svc into ServicePorts for each of families. Headless and
// ExternalName services, and families the service has no ClusterIP of, yield
// nothing. Values that cannot be used are left out and reported once as
// problems, whichever family they would have belonged to.
func parseService(svc *v1.Service, families []v1.IPFamily) (map[v1.IPFamily]servicePorts, []fieldProblem) {
	if svc == nil || svc.Spec.Type == v1.ServiceTypeExternalName || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil, nil
	}
	var problems []fieldProblem
	bad := func(field, value, reason string) {
		problems = append(problems, fieldProblem{Field: field, Value: value, Reason: reason})
	}

	clusterIPs, clusterField := svc.Spec.ClusterIPs, "spec.clusterIPs"
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs, clusterField = []string{svc.Spec.ClusterIP}, "spec.clusterIP"
	}
	byFamily := map[v1.IPFamily]netip.Addr{}
	for i, s := range clusterIPs {
		ip, ok := parseIP(s)
		if !ok {
			bad(fmt.Sprintf("%s[%d]", clusterField, i), s, "not an IP address")
			continue
		}
		if _, dup := byFamily[addrFamily(ip)]; !dup {
			byFamily[addrFamily(ip)] = ip
		}
	}

	// An address of a family the Service has no ClusterIP of would be
	// served by no family's proxier: say so rather than drop it silently.
	serves := func(ip netip.Addr) bool {
		_, has := byFamily[addrFamily(ip)]
		return has && slices.Contains(families, addrFamily(ip))
	}
	externalIPs := parseAddrList(svc.Spec.ExternalIPs, "spec.externalIPs", serves, bad)
	var ingressIPs []netip.Addr
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		// Proxy-mode load balancers deliver to the node, not to the VIP, so
		// short-circuiting their IPs here would bypass the load balancer.
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy) {
			continue
		}
		field := fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i)
		ingressIPs = append(ingressIPs, parseAddrList([]string{ing.IP}, field, serves, func(_, v, r string) { bad(field, v, r) })...)
	}
	var sourceRanges []netip.Prefix
	for i, s := range svc.Spec.LoadBalancerSourceRanges {
		p, ok := parsePrefix(s)
		switch {
		case !ok:
			bad(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, "not a CIDR")
		case !serves(p.Addr()):
			bad(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, "IP family not served by this proxy")
		default:
			sourceRanges = append(sourceRanges, p)
		}
	}

	base := serviceBase(svc, bad)
	ports := parsePorts(svc, bad)
	out := make(map[v1.IPFamily]servicePorts, len(families))
	for _, family := range families {
		clusterIP, ok := byFamily[family]
		if !ok {
			continue
		}
		sps := make(servicePorts, len(ports))
		for _, p := range ports {
			sp := base
			sp.Name, sp.Port, sp.Protocol, sp.NodePort = p.Name, p.Port, p.Protocol, p.NodePort
			sp.ClusterIP = clusterIP
			sp.ExternalIPs = ofFamily(externalIPs, family)
			sp.LoadBalancerVIPs = ofFamily(ingressIPs, family)
			sp.LoadBalancerSourceRanges = prefixesOfFamily(sourceRanges, family)
			sps[sp.Name] = &sp
		}
		out[family] = sps
	}
	return out, problems
}

// serviceBase holds the family-independent fields shared by every port.
func serviceBase(svc *v1.Service, bad func(field, value, reason string)) ServicePort {
	var sp ServicePort
	externallyAccessible := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(svc.Spec.ExternalIPs) > 0
	sp.ExternalPolicyLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	sp.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	// Like kube-proxy, only LoadBalancer services get a health check node port.
	if sp.ExternalPolicyLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		if hc := svc.Spec.HealthCheckNodePort; hc < 0 || hc > 65535 {
			bad("spec.healthCheckNodePort", strconv.Itoa(int(hc)), "port out of range")
		} else {
			sp.HealthCheckNodePort = hc
		}
	}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		sp.StickyMaxAgeSeconds = defaultStickyMaxAgeSeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > 0 && t <= 86400 {
				sp.StickyMaxAgeSeconds = t
			} else {
				bad("spec.sessionAffinityConfig.clientIP.timeoutSeconds", strconv.Itoa(int(t)), "must be 1..86400; using 10800")
			}
		}
	}
	if svc.Spec.TrafficDistribution != nil {
		sp.TrafficDistribution = *svc.Spec.TrafficDistribution
	}
	return sp
}

// parsePorts returns the usable ports of svc, with Name set but no addresses.
func parsePorts(svc *v1.Service, bad func(field, value, reason string)) []ServicePort {
	nsn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	out := make([]ServicePort, 0, len(svc.Spec.Ports))
	for i, p := range svc.Spec.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP // the API default, missing only in unconverted objects
		}
		if proto != v1.ProtocolTCP && proto != v1.ProtocolUDP && proto != v1.ProtocolSCTP {
			bad(field+".protocol", string(p.Protocol), "unsupported protocol")
			continue
		}
		if p.Port < 1 || p.Port > 65535 {
			bad(field+".port", strconv.Itoa(int(p.Port)), "port out of range")
			continue
		}
		nodePort := p.NodePort
		if nodePort < 0 || nodePort > 65535 {
			bad(field+".nodePort", strconv.Itoa(int(nodePort)), "port out of range")
			nodePort = 0
		}
		out = append(out, ServicePort{
			Name:     ServicePortName{NamespacedName: nsn, Port: p.Name, Protocol: proto},
			Port:     p.Port,
			Protocol: proto,
			NodePort: nodePort,
		})
	}
	return out
}

// parseAddrList parses a list of IPs, reporting unparseable ones and ones of a
// family this proxy does not serve (in dual-stack, the other family's values
// are expected and silently go to the other family).
func parseAddrList(values []string, field string, serves func(netip.Addr) bool, bad func(field, value, reason string)) []netip.Addr {
	var out []netip.Addr
	for i, s := range values {
		f := fmt.Sprintf("%s[%d]", field, i)
		ip, ok := parseIP(s)
		switch {
		case !ok:
			bad(f, s, "not an IP address")
		case !serves(ip):
			bad(f, s, "IP family not served by this proxy or this Service")
		case specialAddr(ip) != "":
			// Such a VIP would capture the node's own traffic to that
			// address and port (metadata services, loopback, multicast).
			bad(f, s, specialAddr(ip))
		default:
			out = append(out, ip)
		}
	}
	return out
}

func ofFamily(ips []netip.Addr, family v1.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if addrFamily(ip) == family && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

func prefixesOfFamily(prefixes []netip.Prefix, family v1.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range prefixes {
		if addrFamily(p.Addr()) == family && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// servicePortEqual reports whether a data plane would program a and b alike.
func servicePortEqual(a, b *ServicePort) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return false
	}
	return a.Name == b.Name && a.ClusterIP == b.ClusterIP && a.Port == b.Port && a.Protocol == b.Protocol &&
		a.NodePort == b.NodePort && slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		slices.Equal(a.LoadBalancerVIPs, b.LoadBalancerVIPs) &&
		slices.Equal(a.LoadBalancerSourceRanges, b.LoadBalancerSourceRanges) &&
		a.ExternalPolicyLocal == b.ExternalPolicyLocal && a.InternalPolicyLocal == b.InternalPolicyLocal &&
		a.HealthCheckNodePort == b.HealthCheckNodePort && a.StickyMaxAgeSeconds == b.StickyMaxAgeSeconds &&
		a.TrafficDistribution == b.TrafficDistribution
}

func servicePortsEqual(a, b servicePorts) bool {
	if len(a) != len(b) {
		return false
	}
	for name, sp := range a {
		if !servicePortEqual(sp, b[name]) {
			return false
		}
	}
	return true
}
