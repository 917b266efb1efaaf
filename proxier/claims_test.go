package proxier

import (
	"fmt"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const warning = "Warning " + ReasonInvalidValue + " svcproxy is ignoring "

// createdAt sets the creation timestamp to minute minutes after start.
func createdAt(minute int) svcOpt {
	return func(s *v1.Service) {
		s.CreationTimestamp = metav1.NewTime(start.Add(time.Duration(minute) * time.Minute))
	}
}

// addresses describes what a snapshot gives a port: "ext [...] lb [...]",
// or "absent".
func addresses(snap *Snapshot, name ServicePortName) string {
	sp := snap.Services[name]
	if sp == nil {
		return "absent"
	}
	return fmt.Sprintf("ext %v lb %v", sp.ExternalIPs, sp.LoadBalancerVIPs)
}

func TestClaimsArbitration(t *testing.T) {
	oldHTTP, newHTTP := spn("ns/old", "http", tcp), spn("ns/new", "http", tcp)
	cases := []struct {
		name string
		// svcs are added in this order, which must not matter.
		svcs []*v1.Service
		want map[v1.IPFamily]map[ServicePortName]string
		// events are expected in this order.
		events []string
	}{{
		name: "same external IP and port: the older Service keeps it",
		svcs: []*v1.Service{
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.9", "203.0.113.7")),
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP: "ext [203.0.113.7] lb []",
			newHTTP: "ext [203.0.113.9] lb []",
		}},
		events: []string{warning + `spec.externalIPs[1] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}, {
		name: "different ports do not collide",
		svcs: []*v1.Service{
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 81, 0), externalIPs("203.0.113.7")),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP: "ext [203.0.113.7] lb []",
			newHTTP: "ext [203.0.113.7] lb []",
		}},
	}, {
		name: "different protocols do not collide",
		svcs: []*v1.Service{
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", udp, 80, 0), externalIPs("203.0.113.7")),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP:                    "ext [203.0.113.7] lb []",
			spn("ns/new", "http", udp): "ext [203.0.113.7] lb []",
		}},
	}, {
		name: "an older load-balancer IP beats an external IP",
		svcs: []*v1.Service{
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), svcType(v1.ServiceTypeLoadBalancer),
				lbIngress("203.0.113.7", nil)),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP: "ext [] lb [203.0.113.7]",
			newHTTP: "ext [] lb []",
		}},
		events: []string{warning + `spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}, {
		name: "an older external IP beats a load-balancer IP",
		svcs: []*v1.Service{
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), svcType(v1.ServiceTypeLoadBalancer),
				lbIngress("203.0.113.8", ptr.To(v1.LoadBalancerIPModeProxy)), lbIngress("203.0.113.7", nil)),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP: "ext [203.0.113.7] lb []",
			newHTTP: "ext [] lb []",
		}},
		events: []string{warning + `status.loadBalancer.ingress[1].ip "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}, {
		name: "a ClusterIP beats the external IP of an older Service",
		svcs: []*v1.Service{
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("198.51.100.11")),
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0)),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			oldHTTP: "ext [] lb []",
			newHTTP: "ext [] lb []",
		}},
		events: []string{warning + `spec.externalIPs[0] "198.51.100.11": 198.51.100.11:80/TCP is already served by ns/new (its ClusterIP)`},
	}, {
		name: "an external IP equal to the Service's own ClusterIP is no collision",
		svcs: []*v1.Service{
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("198.51.100.10"),
				lbIngress("198.51.100.10", nil)),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {oldHTTP: "ext [198.51.100.10] lb [198.51.100.10]"}},
	}, {
		name: "same creation time: namespace/name decides",
		svcs: []*v1.Service{
			makeService("ns/b", createdAt(1), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
			makeService("ns/a", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{ipv4: {
			spn("ns/a", "http", tcp): "ext [203.0.113.7] lb []",
			spn("ns/b", "http", tcp): "ext [] lb []",
		}},
		events: []string{warning + `spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/a (created at the same time, first by name)`},
	}, {
		name: "each family decides for its own addresses",
		svcs: []*v1.Service{
			makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11", "2001:db8:5::11"), svcPort("http", tcp, 80, 0),
				externalIPs("203.0.113.8", "2001:db8:6::7")),
			makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10", "2001:db8:5::10"), svcPort("http", tcp, 80, 0),
				externalIPs("203.0.113.7", "2001:db8:6::7")),
		},
		want: map[v1.IPFamily]map[ServicePortName]string{
			ipv4: {oldHTTP: "ext [203.0.113.7] lb []", newHTTP: "ext [203.0.113.8] lb []"},
			ipv6: {oldHTTP: "ext [2001:db8:6::7] lb []", newHTTP: "ext [] lb []"},
		},
		events: []string{warning + `spec.externalIPs[1] "2001:db8:6::7": [2001:db8:6::7]:80/TCP is already served by ns/old (created earlier)`},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, rec := newTestTracker(t, dual...)
			for _, svc := range tc.svcs {
				tr.UpdateService(nil, svc)
			}
			for _, f := range dual {
				snap := tr.Snapshot(f)
				for name, want := range tc.want[f] {
					if got := addresses(snap, name); got != want {
						t.Errorf("%s %v: %s, want %s", f, name, got, want)
					}
				}
				mustCommit(t, tr, snap)
			}
			expectEvents(t, rec, tc.events...)
		})
	}
}

// TestClaimsWinnerDeletedMarksLoserChanged is the partial-sync case: the
// loser's Service does not change, yet it gets the address back, so it must
// be in Changed or an iptables partial sync would leave it without it.
func TestClaimsWinnerDeletedMarksLoserChanged(t *testing.T) {
	tr, rec := newTestTracker(t, ipv4)
	oldSvc := makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	newSvc := makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	newHTTP := spn("ns/new", "http", tcp)
	tr.UpdateService(nil, oldSvc)
	tr.UpdateService(nil, newSvc)
	mustCommit(t, tr, tr.Snapshot(ipv4))
	expectEvents(t, rec, warning+`spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`)

	tr.UpdateService(oldSvc, nil)
	snap := tr.Snapshot(ipv4)
	if got := addresses(snap, newHTTP); got != "ext [203.0.113.7] lb []" {
		t.Errorf("loser after the winner's deletion: %s, want the address back", got)
	}
	if got := changed(snap); !slices.Equal(got, []string{"ns/new:http/TCP", "ns/old:http/TCP"}) {
		t.Errorf("Changed = %v, want the deleted winner and the loser", got)
	}
	// A failed sync: the loser stays changed in the next snapshot.
	snap = tr.Snapshot(ipv4)
	if got := changed(snap); !slices.Equal(got, []string{"ns/new:http/TCP", "ns/old:http/TCP"}) {
		t.Errorf("Changed after a failed sync = %v, want both still", got)
	}
	mustCommit(t, tr, snap)
	if got := changed(tr.Snapshot(ipv4)); got != nil {
		t.Errorf("Changed = %v after the commit, want none", got)
	}
	expectEvents(t, rec)
}

// TestClaimsOutcomeFollowsTheWinner changes only the winner and checks that
// the loser, untouched, follows: it loses the address when an older Service
// starts claiming it, and gets it back when that one lets it go.
func TestClaimsOutcomeFollowsTheWinner(t *testing.T) {
	tr, rec := newTestTracker(t, ipv4)
	plain := makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), svcLabel("v", "1"))
	claiming := makeService("ns/old", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	newSvc := makeService("ns/new", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	newHTTP := spn("ns/new", "http", tcp)
	tr.UpdateService(nil, plain)
	tr.UpdateService(nil, newSvc)
	mustCommit(t, tr, tr.Snapshot(ipv4))

	steps := []struct {
		name    string
		do      func()
		want    string
		changed []string
		events  []string
	}{{
		name: "older Service takes the address", do: func() { tr.UpdateService(plain, claiming) },
		want: "ext [] lb []", changed: []string{"ns/new:http/TCP", "ns/old:http/TCP"},
		events: []string{warning + `spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}, {
		name: "resync and unrelated updates report nothing again", do: func() {
			tr.UpdateService(claiming, claiming.DeepCopy())
			relabelled := newSvc.DeepCopy()
			relabelled.Labels = map[string]string{"v": "2"}
			tr.UpdateService(newSvc, relabelled)
		},
		want: "ext [] lb []",
	}, {
		name: "older Service lets the address go", do: func() { tr.UpdateService(claiming, plain) },
		want: "ext [203.0.113.7] lb []", changed: []string{"ns/new:http/TCP", "ns/old:http/TCP"},
	}, {
		name: "and takes it again: a new collision, reported anew", do: func() { tr.UpdateService(plain, claiming) },
		want: "ext [] lb []", changed: []string{"ns/new:http/TCP", "ns/old:http/TCP"},
		events: []string{warning + `spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}, {
		name: "a third, newer claimant changes nothing for the others", do: func() {
			tr.UpdateService(nil, makeService("ns/newest", createdAt(3), clusterIPs("198.51.100.12"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7")))
		},
		want: "ext [] lb []", changed: []string{"ns/newest:http/TCP"},
		events: []string{warning + `spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/old (created earlier)`},
	}}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.do()
			snap := tr.Snapshot(ipv4)
			if got := addresses(snap, newHTTP); got != step.want {
				t.Errorf("ns/new: %s, want %s", got, step.want)
			}
			if got := changed(snap); !slices.Equal(got, step.changed) {
				t.Errorf("Changed = %v, want %v", got, step.changed)
			}
			mustCommit(t, tr, snap)
			expectEvents(t, rec, step.events...)
		})
	}
}

// TestClaimsRecreatedService: a Service deleted and created again under the
// same name, seen as one update, takes its new age.
func TestClaimsRecreatedService(t *testing.T) {
	tr, rec := newTestTracker(t, ipv4)
	first := makeService("ns/a", createdAt(1), clusterIPs("198.51.100.10"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	other := makeService("ns/b", createdAt(2), clusterIPs("198.51.100.11"), svcPort("http", tcp, 80, 0), externalIPs("203.0.113.7"))
	tr.UpdateService(nil, first)
	tr.UpdateService(nil, other)
	mustCommit(t, tr, tr.Snapshot(ipv4))
	expectEvents(t, rec, warning+`spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/a (created earlier)`)

	recreated := first.DeepCopy()
	recreated.CreationTimestamp = metav1.NewTime(start.Add(3 * time.Minute))
	tr.UpdateService(first, recreated)
	snap := tr.Snapshot(ipv4)
	if got := addresses(snap, spn("ns/b", "http", tcp)); got != "ext [203.0.113.7] lb []" {
		t.Errorf("ns/b: %s, want the address now that it is older", got)
	}
	if got := changed(snap); !slices.Equal(got, []string{"ns/a:http/TCP", "ns/b:http/TCP"}) {
		t.Errorf("Changed = %v, want both", got)
	}
	expectEvents(t, rec, warning+`spec.externalIPs[0] "203.0.113.7": 203.0.113.7:80/TCP is already served by ns/b (created earlier)`)
}
