package proxier

import (
	"maps"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// HealthRecorder is told about queued and completed syncs and about the Node,
// for /healthz and /livez.
type HealthRecorder interface {
	// QueuedUpdate records that a change for family waits to be synced.
	QueuedUpdate(family v1.IPFamily)
	// Updated records a successful sync of family (or the loop's start).
	Updated(family v1.IPFamily)
	// SyncNode records the current Node; nil once it was deleted.
	SyncNode(node *v1.Node)
}

// ServiceHealthSyncer serves the per-service health checks of services with
// externalTrafficPolicy Local.
type ServiceHealthSyncer interface {
	// SyncServices sets the services to serve and their healthCheckNodePorts.
	SyncServices(ports map[types.NamespacedName]uint16) error
	// SyncEndpoints sets each service's count of distinct local ready endpoint IPs.
	SyncEndpoints(counts map[types.NamespacedName]int) error
}

// serviceHealth computes the health check ports and local endpoint counts
// from the last synced snapshot of each family. Counts are distinct local
// ready (not terminating) IPs across all ports and families.
func serviceHealth(snaps map[v1.IPFamily]*Snapshot) (map[types.NamespacedName]uint16, map[types.NamespacedName]int) {
	ports := map[types.NamespacedName]uint16{}
	ips := map[types.NamespacedName]map[netip.Addr]bool{}
	for _, snap := range snaps {
		for name, sp := range snap.Services {
			if !sp.ExternalPolicyLocal || sp.HealthCheckNodePort == 0 {
				continue
			}
			ports[name.NamespacedName] = uint16(sp.HealthCheckNodePort)
			set := ips[name.NamespacedName]
			if set == nil {
				set = map[netip.Addr]bool{}
				ips[name.NamespacedName] = set
			}
			for _, ep := range snap.Endpoints[name] {
				if ep.IsLocal && ep.Ready && !ep.Terminating {
					set[ep.IP] = true
				}
			}
		}
	}
	counts := make(map[types.NamespacedName]int, len(ips))
	for nsn, set := range ips {
		counts[nsn] = len(set)
	}
	return ports, counts
}

// syncServiceHealth hands the service health checks their current state,
// skipping the calls when nothing changed since the last successful ones.
func (p *Proxier) syncServiceHealth() {
	if p.opts.ServiceHealth == nil || len(p.lastSynced) == 0 {
		return
	}
	ports, counts := serviceHealth(p.lastSynced)
	if p.healthSent && maps.Equal(ports, p.healthPorts) && maps.Equal(counts, p.healthCounts) {
		return
	}
	p.healthSent = false
	if err := p.opts.ServiceHealth.SyncServices(ports); err != nil {
		logSyncError(err, "Failed to sync service health checks")
		return
	}
	if err := p.opts.ServiceHealth.SyncEndpoints(counts); err != nil {
		logSyncError(err, "Failed to sync service health check endpoints")
		return
	}
	p.healthPorts, p.healthCounts, p.healthSent = ports, counts, true
}
