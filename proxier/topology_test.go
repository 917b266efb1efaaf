package proxier

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestCategorizeEndpoints(t *testing.T) {
	clusterIP := func(sp *ServicePort) {}
	iTPLocal := func(sp *ServicePort) { sp.InternalPolicyLocal = true }
	eTPLocalNodePort := func(sp *ServicePort) { sp.ExternalPolicyLocal, sp.NodePort = true, 30080 }
	eTPLocalNoExternal := func(sp *ServicePort) { sp.ExternalPolicyLocal = true }
	nodeZoneA := Node{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}
	nodeNoZone := Node{Name: "node1"}

	tests := []struct {
		name        string
		svc         func(*ServicePort)
		node        Node
		endpoints   []*Endpoint
		wantCluster []string
		wantLocal   []string
		wantAll     []string
		wantAny     bool
	}{{
		name: "no hints: every ready endpoint", svc: clusterIP, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80"), testEP("203.0.113.2:80", notReady), testEP("203.0.113.65:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.65:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.65:80"}, wantAny: true,
	}, {
		name: "zone hints for this zone", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", zoneHints("zone-a")), testEP("203.0.113.2:80", zoneHints("zone-b")),
			testEP("203.0.113.3:80", zoneHints("zone-a", "zone-c")),
		},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.3:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.3:80"}, wantAny: true,
	}, {
		name: "zone hints but node has no zone label", svc: clusterIP, node: nodeNoZone,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", zoneHints("zone-a")), testEP("203.0.113.2:80", zoneHints("zone-b"))},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.2:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.2:80"}, wantAny: true,
	}, {
		name: "zone hints naming no endpoint for this zone", svc: clusterIP, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", zoneHints("zone-b")), testEP("203.0.113.2:80", zoneHints("zone-c"))},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.2:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.2:80"}, wantAny: true,
	}, {
		name: "one ready endpoint without hints disables topology", svc: clusterIP, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", zoneHints("zone-a")), testEP("203.0.113.2:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.2:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.2:80"}, wantAny: true,
	}, {
		name: "unready endpoint without hints does not disable topology", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", zoneHints("zone-a")), testEP("203.0.113.2:80", zoneHints("zone-b")),
			testEP("203.0.113.3:80", notReady),
		},
		wantCluster: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "node hints for this node win over zone hints", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", local, nodeHints("node1"), zoneHints("zone-a")),
			testEP("203.0.113.2:80", nodeHints("node2"), zoneHints("zone-a")),
		},
		wantCluster: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "node hints not naming this node fall back to zone hints", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", nodeHints("node3"), zoneHints("zone-a")),
			testEP("203.0.113.2:80", nodeHints("node2"), zoneHints("zone-b")),
		},
		wantCluster: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "node hints on some endpoints only are ignored", svc: clusterIP, node: nodeNoZone,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", local, nodeHints("node1")), testEP("203.0.113.2:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.2:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.2:80"}, wantAny: true,
	}, {
		name: "no ready endpoint: serving terminating fallback", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", servingTerminating), testEP("203.0.113.2:80", deadTerminating),
			testEP("203.0.113.3:80", notReady), testEP("203.0.113.4:80", servingTerminating),
		},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.4:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.4:80"}, wantAny: true,
	}, {
		name: "ready endpoints exist: terminating ones unused", svc: clusterIP, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", servingTerminating), testEP("203.0.113.2:80")},
		wantCluster: []string{"203.0.113.2:80"}, wantAll: []string{"203.0.113.2:80"}, wantAny: true,
	}, {
		name: "only non-serving endpoints", svc: clusterIP, node: nodeZoneA,
		endpoints: []*Endpoint{testEP("203.0.113.1:80", deadTerminating), testEP("203.0.113.2:80", notReady)},
	}, {
		name: "no endpoints", svc: clusterIP, node: nodeZoneA,
	}, {
		name: "iTP Local: local ready only, cluster unused", svc: iTPLocal, node: nodeZoneA,
		endpoints: []*Endpoint{testEP("203.0.113.1:80", local), testEP("203.0.113.2:80", local, notReady), testEP("203.0.113.65:80")},
		wantLocal: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "iTP Local without local endpoints still has endpoints elsewhere", svc: iTPLocal, node: nodeZoneA,
		endpoints: []*Endpoint{testEP("203.0.113.65:80")}, wantAny: true,
	}, {
		name: "iTP Local: local serving terminating fallback", svc: iTPLocal, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", local, servingTerminating), testEP("203.0.113.2:80", local, deadTerminating),
			testEP("203.0.113.65:80"),
		},
		wantLocal: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "iTP Local ignores topology hints", svc: iTPLocal, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", local, zoneHints("zone-b")), testEP("203.0.113.65:80", zoneHints("zone-a")),
		},
		wantLocal: []string{"203.0.113.1:80"}, wantAll: []string{"203.0.113.1:80"}, wantAny: true,
	}, {
		name: "iTP Local with only terminating remote endpoints", svc: iTPLocal, node: nodeZoneA,
		endpoints: []*Endpoint{testEP("203.0.113.65:80", servingTerminating)}, wantAny: true,
	}, {
		name: "eTP Local NodePort: cluster for pods, local for external", svc: eTPLocalNodePort, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", local), testEP("203.0.113.65:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.65:80"}, wantLocal: []string{"203.0.113.1:80"},
		wantAll: []string{"203.0.113.1:80", "203.0.113.65:80"}, wantAny: true,
	}, {
		name: "eTP Local union includes local terminating endpoints", svc: eTPLocalNodePort, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", local, servingTerminating), testEP("203.0.113.65:80"), testEP("203.0.113.70:80"),
		},
		wantCluster: []string{"203.0.113.65:80", "203.0.113.70:80"}, wantLocal: []string{"203.0.113.1:80"},
		wantAll: []string{"203.0.113.1:80", "203.0.113.65:80", "203.0.113.70:80"}, wantAny: true,
	}, {
		name: "eTP Local union includes local endpoint outside the zone", svc: eTPLocalNodePort, node: nodeZoneA,
		endpoints: []*Endpoint{
			testEP("203.0.113.1:80", local, zoneHints("zone-b")), testEP("203.0.113.65:80", zoneHints("zone-a")),
		},
		wantCluster: []string{"203.0.113.65:80"}, wantLocal: []string{"203.0.113.1:80"},
		wantAll: []string{"203.0.113.1:80", "203.0.113.65:80"}, wantAny: true,
	}, {
		name: "eTP Local with no local endpoint", svc: eTPLocalNodePort, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.65:80")},
		wantCluster: []string{"203.0.113.65:80"}, wantAll: []string{"203.0.113.65:80"}, wantAny: true,
	}, {
		name: "eTP Local without external access behaves like Cluster", svc: eTPLocalNoExternal, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", local), testEP("203.0.113.65:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.65:80"},
		wantAll:     []string{"203.0.113.1:80", "203.0.113.65:80"}, wantAny: true,
	}, {
		name: "iTP and eTP Local with a NodePort: both lists", svc: func(sp *ServicePort) { iTPLocal(sp); eTPLocalNodePort(sp) }, node: nodeZoneA,
		endpoints:   []*Endpoint{testEP("203.0.113.1:80", local), testEP("203.0.113.65:80")},
		wantCluster: []string{"203.0.113.1:80", "203.0.113.65:80"}, wantLocal: []string{"203.0.113.1:80"},
		wantAll: []string{"203.0.113.1:80", "203.0.113.65:80"}, wantAny: true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := &ServicePort{Name: ServicePortName{Port: "http", Protocol: v1.ProtocolTCP}, ClusterIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: v1.ProtocolTCP}
			tc.svc(sp)
			cluster, local, all, hasAny := CategorizeEndpoints(tc.endpoints, sp, tc.node)
			if got := epStrings(cluster); !slices.Equal(got, tc.wantCluster) {
				t.Errorf("cluster endpoints = %v, want %v", got, tc.wantCluster)
			}
			if got := epStrings(local); !slices.Equal(got, tc.wantLocal) {
				t.Errorf("local endpoints = %v, want %v", got, tc.wantLocal)
			}
			if got := epStrings(all); !slices.Equal(got, tc.wantAll) {
				t.Errorf("all reachable = %v, want %v", got, tc.wantAll)
			}
			if hasAny != tc.wantAny {
				t.Errorf("hasAnyEndpoints = %v, want %v", hasAny, tc.wantAny)
			}
		})
	}
}
