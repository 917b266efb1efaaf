package proxier

import (
	"k8s.io/klog/v2"
)

// topologyMode says which endpoints cluster-policy traffic may use on this node.
type topologyMode int

const (
	topologyNone topologyMode = iota
	// topologySameNode: trafficDistribution PreferSameNode, via node hints.
	topologySameNode
	// topologySameZone: PreferSameZone/PreferClose or Topology Aware Routing, via zone hints.
	topologySameZone
)

// CategorizeEndpoints splits endpoints the way kube-proxy's topology.go does:
//   - clusterEndpoints: ready endpoints, filtered by topology hints; if no
//     ready endpoint exists anywhere, serving+terminating ones (KEP-1669).
//     Nil when the port does not use cluster endpoints.
//   - localEndpoints: this node's ready endpoints, falling back to its
//     serving+terminating ones; topology is never applied. Nil when no
//     traffic policy is Local.
//   - allReachableEndpoints: the union, sorted like the input.
//   - hasAnyEndpoints: whether any usable endpoint exists in the cluster, so a
//     Local-policy port with no local endpoints drops rather than rejects.
//
// endpoints must be sorted by ip:port; the results keep that order.
func CategorizeEndpoints(endpoints []*Endpoint, svc *ServicePort, node Node) (clusterEndpoints, localEndpoints, allReachableEndpoints []*Endpoint, hasAnyEndpoints bool) {
	if svc.UsesClusterEndpoints() {
		zone := node.Zone()
		mode := topologyModeFromHints(svc, endpoints, node.Name, zone)
		clusterEndpoints = filterEndpoints(endpoints, func(ep *Endpoint) bool {
			return ep.Ready && availableForTopology(ep, mode, node.Name, zone)
		})
		// Topology is already ignored when it would leave no ready endpoint, so
		// an empty list here means there is no ready endpoint anywhere.
		if len(clusterEndpoints) == 0 {
			clusterEndpoints = filterEndpoints(endpoints, func(ep *Endpoint) bool {
				return ep.Serving && ep.Terminating
			})
		}
		if len(clusterEndpoints) > 0 {
			hasAnyEndpoints = true
		}
	}

	if !svc.UsesLocalEndpoints() {
		return clusterEndpoints, nil, clusterEndpoints, hasAnyEndpoints
	}

	var hasLocalReady, hasLocalServingTerminating bool
	for _, ep := range endpoints {
		switch {
		case ep.Ready:
			hasAnyEndpoints = true
			hasLocalReady = hasLocalReady || ep.IsLocal
		case ep.Serving && ep.Terminating:
			hasAnyEndpoints = true
			hasLocalServingTerminating = hasLocalServingTerminating || ep.IsLocal
		}
	}
	switch {
	case hasLocalReady:
		localEndpoints = filterEndpoints(endpoints, func(ep *Endpoint) bool {
			return ep.IsLocal && ep.Ready
		})
	case hasLocalServingTerminating:
		localEndpoints = filterEndpoints(endpoints, func(ep *Endpoint) bool {
			return ep.IsLocal && ep.Serving && ep.Terminating
		})
	}

	if !svc.UsesClusterEndpoints() {
		return nil, localEndpoints, localEndpoints, hasAnyEndpoints
	}
	switch {
	case len(clusterEndpoints) == 0:
		allReachableEndpoints = localEndpoints
	case len(localEndpoints) == 0:
		allReachableEndpoints = clusterEndpoints
	default:
		// Local may hold terminating or topologically-excluded endpoints that
		// cluster lacks, and cluster remote ones; both are subsets of the
		// sorted input, so a filter over it yields the ordered union.
		in := make(map[*Endpoint]bool, len(clusterEndpoints)+len(localEndpoints))
		for _, ep := range clusterEndpoints {
			in[ep] = true
		}
		for _, ep := range localEndpoints {
			in[ep] = true
		}
		allReachableEndpoints = filterEndpoints(endpoints, func(ep *Endpoint) bool { return in[ep] })
	}
	return clusterEndpoints, localEndpoints, allReachableEndpoints, hasAnyEndpoints
}

// topologyModeFromHints applies hints only when every ready endpoint carries
// them and at least one names this node (or zone); otherwise traffic could be
// black-holed or badly skewed, so topology is ignored.
func topologyModeFromHints(svc *ServicePort, endpoints []*Endpoint, nodeName, zone string) topologyMode {
	hasForNode, allHaveNodeHints := false, true
	hasForZone, allHaveZoneHints := false, true
	ready := 0
	for _, ep := range endpoints {
		if !ep.Ready {
			continue
		}
		ready++
		if ep.NodeHints.Len() == 0 {
			allHaveNodeHints = false
		} else if ep.NodeHints.Has(nodeName) {
			hasForNode = true
		}
		if ep.ZoneHints.Len() == 0 {
			allHaveZoneHints = false
		} else if ep.ZoneHints.Has(zone) {
			hasForZone = true
		}
	}
	if ready == 0 {
		return topologyNone
	}
	if allHaveNodeHints {
		if hasForNode {
			return topologySameNode
		}
		klog.V(2).InfoS("Ignoring same-node topology hints for service since no hints were provided for node", "service", svc.Name.String(), "node", nodeName)
	}
	if allHaveZoneHints {
		if hasForZone {
			return topologySameZone
		}
		if zone == "" {
			klog.V(2).InfoS("Ignoring same-zone topology hints for service since node is missing label", "service", svc.Name.String(), "label", "topology.kubernetes.io/zone")
		} else {
			klog.V(2).InfoS("Ignoring same-zone topology hints for service since no hints were provided for zone", "service", svc.Name.String(), "zone", zone)
		}
	}
	return topologyNone
}

func availableForTopology(ep *Endpoint, mode topologyMode, nodeName, zone string) bool {
	switch mode {
	case topologySameNode:
		return ep.NodeHints.Has(nodeName)
	case topologySameZone:
		return ep.ZoneHints.Has(zone)
	default:
		return true
	}
}

func filterEndpoints(endpoints []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	var out []*Endpoint
	for _, ep := range endpoints {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
