package bed

import (
	"net"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// splitName splits "ns/name"; a bare name goes to "default".
func splitName(nsName string) (string, string) {
	if ns, name, ok := strings.Cut(nsName, "/"); ok {
		return ns, name
	}
	return "default", nsName
}

// ServiceOption changes a Service built by Service.
type ServiceOption func(*v1.Service)

// Service builds a Service "ns/name" (type ClusterIP unless an option says otherwise).
func Service(nsName string, opts ...ServiceOption) *v1.Service {
	ns, name := splitName(nsName)
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ClusterIP sets spec.clusterIP(s); the first is primary. Families follow the addresses.
func ClusterIP(ips ...string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ClusterIP = ips[0]
		s.Spec.ClusterIPs = ips
		s.Spec.IPFamilies = nil
		for _, ip := range ips {
			s.Spec.IPFamilies = append(s.Spec.IPFamilies, familyOf(ip))
		}
		if len(ips) > 1 {
			p := v1.IPFamilyPolicyRequireDualStack
			s.Spec.IPFamilyPolicy = &p
		}
	}
}

// Headless makes the service headless (clusterIP None).
func Headless() ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ClusterIP = v1.ClusterIPNone
		s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
	}
}

// Port adds a port with a numeric targetPort; protocol is "TCP", "UDP" or "SCTP".
func Port(name string, port int32, protocol string, targetPort int32) ServiceOption {
	return addPort(name, port, protocol, intstr.FromInt32(targetPort))
}

// NamedPort adds a port whose targetPort is a container port name.
func NamedPort(name string, port int32, protocol, targetPort string) ServiceOption {
	return addPort(name, port, protocol, intstr.FromString(targetPort))
}

func addPort(name string, port int32, protocol string, target intstr.IntOrString) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{
			Name: name, Port: port, Protocol: v1.Protocol(protocol), TargetPort: target,
		})
	}
}

// NodePort makes the service type NodePort (unless already LoadBalancer) and sets the
// nodePorts of its ports in order; 0 lets the apiserver allocate one.
func NodePort(nodePorts ...int32) ServiceOption {
	return func(s *v1.Service) {
		if s.Spec.Type != v1.ServiceTypeLoadBalancer {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		for i, np := range nodePorts {
			if i < len(s.Spec.Ports) {
				s.Spec.Ports[i].NodePort = np
			}
		}
	}
}

// LoadBalancer makes the service type LoadBalancer with the given status ingress IPs
// (written through the status subresource by Apply).
func LoadBalancer(ingressIPs ...string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		for _, ip := range ingressIPs {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// LBIngressProxy adds a LoadBalancer ingress IP with ipMode Proxy.
func LBIngressProxy(ip string) ServiceOption {
	return func(s *v1.Service) {
		m := v1.LoadBalancerIPModeProxy
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: &m})
	}
}

// NoNodePorts sets allocateLoadBalancerNodePorts=false.
func NoNodePorts() ServiceOption {
	return func(s *v1.Service) { f := false; s.Spec.AllocateLoadBalancerNodePorts = &f }
}

// SourceRanges sets spec.loadBalancerSourceRanges.
func SourceRanges(cidrs ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = cidrs }
}

// ExternalIPs sets spec.externalIPs.
func ExternalIPs(ips ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

// ExternalLocal sets externalTrafficPolicy Local (and optionally a healthCheckNodePort).
func ExternalLocal(healthCheckNodePort int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

// InternalLocal sets internalTrafficPolicy Local.
func InternalLocal() ServiceOption {
	return func(s *v1.Service) { p := v1.ServiceInternalTrafficPolicyLocal; s.Spec.InternalTrafficPolicy = &p }
}

// SessionAffinity sets ClientIP affinity with the given timeout; 0 switches affinity off.
func SessionAffinity(timeoutSeconds int32) ServiceOption {
	return func(s *v1.Service) {
		if timeoutSeconds == 0 {
			s.Spec.SessionAffinity = v1.ServiceAffinityNone
			s.Spec.SessionAffinityConfig = nil
			return
		}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeoutSeconds}}
	}
}

// TrafficDistribution sets spec.trafficDistribution (e.g. "PreferClose").
func TrafficDistribution(v string) ServiceOption {
	return func(s *v1.Service) { s.Spec.TrafficDistribution = &v }
}

// Label sets a label (on any object built here that takes it).
func Label(key, value string) ServiceOption {
	return func(s *v1.Service) { setLabel(&s.ObjectMeta, key, value) }
}

func setLabel(m *metav1.ObjectMeta, key, value string) {
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	m.Labels[key] = value
}

// SliceOption changes an EndpointSlice built by EndpointSlice.
type SliceOption func(*discovery.EndpointSlice)

// EndpointSlice builds slice "ns/name" for service (label kubernetes.io/service-name).
// The address type follows the first endpoint (IPv4 when none).
func EndpointSlice(nsName, service string, opts ...SliceOption) *discovery.EndpointSlice {
	ns, name := splitName(nsName)
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discovery.LabelServiceName: service,
			discovery.LabelManagedBy:   "bed.svcproxy.test",
		}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, o := range opts {
		o(es)
	}
	if len(es.Endpoints) > 0 && familyOf(es.Endpoints[0].Addresses[0]) == v1.IPv6Protocol {
		es.AddressType = discovery.AddressTypeIPv6
	}
	return es
}

// SlicePort adds a port to the slice (name must match the service port's name).
func SlicePort(name string, port int32, protocol string) SliceOption {
	return func(es *discovery.EndpointSlice) {
		p := v1.Protocol(protocol)
		es.Ports = append(es.Ports, discovery.EndpointPort{Name: &name, Port: &port, Protocol: &p})
	}
}

// EndpointOption changes one endpoint.
type EndpointOption func(*discovery.Endpoint)

// Endpoint adds a ready, serving, non-terminating endpoint.
func Endpoint(ip string, opts ...EndpointOption) SliceOption {
	return func(es *discovery.EndpointSlice) {
		t, f := true, false
		ep := discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f},
		}
		for _, o := range opts {
			o(&ep)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
}

// OnNode sets the endpoint's nodeName.
func OnNode(node string) EndpointOption {
	return func(ep *discovery.Endpoint) { ep.NodeName = &node }
}

// Zone sets the endpoint's zone.
func Zone(zone string) EndpointOption {
	return func(ep *discovery.Endpoint) { ep.Zone = &zone }
}

// Hints sets the endpoint's forZones hints.
func Hints(zones ...string) EndpointOption {
	return func(ep *discovery.Endpoint) {
		ep.Hints = &discovery.EndpointHints{}
		for _, z := range zones {
			ep.Hints.ForZones = append(ep.Hints.ForZones, discovery.ForZone{Name: z})
		}
	}
}

// Conditions sets ready, serving and terminating explicitly.
func Conditions(ready, serving, terminating bool) EndpointOption {
	return func(ep *discovery.Endpoint) {
		ep.Conditions = discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating}
	}
}

// Terminating marks the endpoint terminating but still serving (not ready).
func Terminating() EndpointOption { return Conditions(false, true, true) }

// NotReady marks the endpoint neither ready nor serving.
func NotReady() EndpointOption { return Conditions(false, false, false) }

// NodeObject builds a Node with an InternalIP per address, spec.podCIDRs and labels.
func NodeObject(name string, addresses, podCIDRs []string, labels map[string]string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
	}}}
	for k, v := range labels {
		n.Labels[k] = v
	}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
		n.Spec.PodCIDRs = podCIDRs
	}
	for _, a := range addresses {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
	}
	n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: name})
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue,
		Reason: "BedNode", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	return n
}

func familyOf(ip string) v1.IPFamily {
	if p := net.ParseIP(ip); p != nil && p.To4() == nil {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}
