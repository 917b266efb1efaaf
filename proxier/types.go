// Package proxier holds the mode-independent core of svcproxy: the service and
// endpoint model, the change trackers that keep it, the snapshot handed to a
// data plane, and the loop that runs syncs.
package proxier

import (
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// ServicePortName identifies one port of one Service, the unit a data plane programs.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String is "ns/name" or "ns/name:port", kube-proxy's form; chain-name hashes depend on it.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return fmt.Sprintf("%s:%s", n.NamespacedName.String(), n.Port)
}

// ServicePort is one port of a Service, reduced to what a data plane needs for
// one IP family. Addresses of the other family are already filtered out.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int32
	Protocol  v1.Protocol
	// NodePort is 0 when the service has none.
	NodePort int32
	// ExternalIPs and LoadBalancerVIPs (status.loadBalancer.ingress IPs,
	// without ipMode Proxy ones) leave out the addresses another Service
	// won for the same port and protocol (see claims.go).
	ExternalIPs              []netip.Addr
	LoadBalancerVIPs         []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	ExternalPolicyLocal      bool
	InternalPolicyLocal      bool
	HealthCheckNodePort      int32
	// StickyMaxAgeSeconds is the ClientIP affinity timeout; 0 means no affinity.
	StickyMaxAgeSeconds int32
	TrafficDistribution string
}

// ExternallyAccessible reports whether traffic from outside the cluster can
// reach this port (NodePort, external IPs or load balancer IPs).
func (s *ServicePort) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerVIPs) > 0
}

// UsesClusterEndpoints: internal traffic with Cluster policy, or any external
// traffic (eTP=Local still short-circuits pod traffic to cluster endpoints).
func (s *ServicePort) UsesClusterEndpoints() bool {
	return !s.InternalPolicyLocal || s.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether any traffic policy of this port is Local.
func (s *ServicePort) UsesLocalEndpoints() bool {
	return s.InternalPolicyLocal || (s.ExternalPolicyLocal && s.ExternallyAccessible())
}

// Endpoint is one backend address of a ServicePort, merged across EndpointSlices.
type Endpoint struct {
	IP   netip.Addr
	Port int32
	// Ready, Serving and Terminating use kube-proxy's defaults for nil
	// conditions: ready and serving true, terminating false.
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	ZoneHints   sets.Set[string]
	NodeHints   sets.Set[string]
	// IsLocal is true when NodeName is this node's name.
	IsLocal bool
}

// AddrPort is the endpoint's ip:port.
func (e *Endpoint) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(e.IP, uint16(e.Port))
}

// String is "ip:port" ("[ip]:port" for IPv6).
func (e *Endpoint) String() string { return e.AddrPort().String() }

// Node is what the proxy knows of the node it runs on, for one IP family.
type Node struct {
	Name string
	// IPs are the node's addresses of this family, primary first.
	IPs      []netip.Addr
	PodCIDRs []netip.Prefix
	Labels   map[string]string
	// Eligible is false when the Node is missing, being deleted or tainted
	// ToBeDeletedByClusterAutoscaler; load balancers must stop sending here.
	Eligible bool
}

// Zone is the node's topology.kubernetes.io/zone label.
func (n Node) Zone() string { return n.Labels[v1.LabelTopologyZone] }

// Snapshot is an immutable view of the desired model for one IP family. Data
// planes must not modify it.
type Snapshot struct {
	Family v1.IPFamily
	// Services holds every ServicePort of this family.
	Services map[ServicePortName]*ServicePort
	// Endpoints holds the merged endpoints per ServicePort, sorted by ip:port.
	// A ServicePort without endpoints may be absent.
	Endpoints map[ServicePortName][]*Endpoint
	Node      Node
	// Changed lists ServicePorts whose ServicePort or endpoints changed (or
	// that were removed) since the last successful sync of this family,
	// including ports that won or lost a contested address because of
	// another Service. A data plane uses it for partial syncs.
	Changed sets.Set[ServicePortName]
	// StaleUDP lists UDP/SCTP ServicePorts whose set of serving endpoints
	// changed, for conntrack cleanup, with the endpoints they lost.
	StaleEndpoints map[ServicePortName][]netip.AddrPort
	// StaleServices lists UDP/SCTP ServicePorts that went from no serving
	// endpoint to at least one (conntrack may hold entries pointing at REJECT).
	StaleServices sets.Set[ServicePortName]
	// Removed holds ServicePorts deleted since the last successful sync, for
	// conntrack cleanup of their addresses.
	Removed map[ServicePortName]*ServicePort
	// TriggerTimes are endpoints.kubernetes.io/last-change-trigger-time values
	// of the EndpointSlice changes included, per service.
	TriggerTimes map[types.NamespacedName][]time.Time
}

// SyncResult is what a data plane reports about one sync, for logs and metrics.
type SyncResult struct {
	Full bool
	// Rules counts rules per table (iptables) or objects per kind (IPVS).
	Rules map[string]int
	// Bytes is the size of the input written to the kernel tool, if any.
	Bytes int
	// KernelCalls counts netlink or exec calls made.
	KernelCalls int
	// NoLocalEndpoints counts services with Local policy and no local
	// endpoints, by "internal"/"external".
	NoLocalEndpoints map[string]int
}

// DataPlane programs one IP family's kernel state from a snapshot.
type DataPlane interface {
	// Sync makes the kernel match snap. After an error the next call must
	// fully resync; the previous kernel state must still be in place.
	Sync(snap *Snapshot) (SyncResult, error)
}

// Verifier is implemented by data planes that can cheaply tell whether the
// kernel still holds what they last programmed. Another program may flush
// our rules; the core polls Verify every sync period and syncs when it
// returns true (the data plane then does a full sync).
type Verifier interface {
	Verify() (needSync bool, err error)
}
