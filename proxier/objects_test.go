package proxier

import (
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

func nsn(s string) types.NamespacedName {
	ns, name, _ := strings.Cut(s, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

func spn(s, port string, proto v1.Protocol) ServicePortName {
	return ServicePortName{NamespacedName: nsn(s), Port: port, Protocol: proto}
}

type svcOpt func(*v1.Service)

// makeService builds a ClusterIP Service "ns/name" in one line.
func makeService(name string, opts ...svcOpt) *v1.Service {
	n := nsn(name)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: n.Namespace, Name: n.Name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func clusterIPs(ips ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func svcPort(name string, proto v1.Protocol, port, nodePort int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: name, Protocol: proto, Port: port, NodePort: nodePort})
	}
}

func svcType(t v1.ServiceType) svcOpt { return func(s *v1.Service) { s.Spec.Type = t } }

func externalIPs(ips ...string) svcOpt { return func(s *v1.Service) { s.Spec.ExternalIPs = ips } }

func lbIngress(ip string, mode *v1.LoadBalancerIPMode) svcOpt {
	return func(s *v1.Service) {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: mode})
	}
}

func sourceRanges(r ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = r }
}

func eTPLocal(hcPort int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyLocal, hcPort
	}
}

func iTPLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

func clientIPAffinity(timeout *int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		if timeout != nil {
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

func svcLabel(k, v string) svcOpt {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

type sliceOpt func(*discovery.EndpointSlice)

// makeSlice builds EndpointSlice "ns/name" of service svcName.
func makeSlice(name, svcName string, at discovery.AddressType, opts ...sliceOpt) *discovery.EndpointSlice {
	n := nsn(name)
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: n.Namespace, Name: n.Name, Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: at,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func slicePort(name string, proto v1.Protocol, port int32) sliceOpt {
	return func(s *discovery.EndpointSlice) {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(port)})
	}
}

type endpointOpt func(*discovery.Endpoint)

func sliceEndpoint(addr string, opts ...endpointOpt) sliceOpt {
	return func(s *discovery.EndpointSlice) {
		e := discovery.Endpoint{Addresses: []string{addr}}
		for _, o := range opts {
			o(&e)
		}
		s.Endpoints = append(s.Endpoints, e)
	}
}

func onNode(name string) endpointOpt {
	return func(e *discovery.Endpoint) { e.NodeName = ptr.To(name) }
}

func inZone(z string) endpointOpt { return func(e *discovery.Endpoint) { e.Zone = ptr.To(z) } }

func conditions(ready, serving, terminating bool) endpointOpt {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating}
	}
}

func hints(zones, nodes []string) endpointOpt {
	return func(e *discovery.Endpoint) {
		e.Hints = &discovery.EndpointHints{}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
		}
	}
}

func triggerAnnotation(t string) sliceOpt {
	return func(s *discovery.EndpointSlice) {
		s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: t}
	}
}
