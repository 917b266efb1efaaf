package iptables

import (
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
)

// claimService is a Service with external IP 203.0.113.7 on port 80 and one
// endpoint, created minute minutes into the day.
func claimService(name, clusterIP, endpoint string, minute int) (*v1.Service, *discovery.EndpointSlice) {
	created := metav1.NewTime(time.Date(2026, 3, 1, 0, minute, 0, 0, time.UTC))
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: created},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}, ExternalIPs: []string{"203.0.113.7"}},
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{endpoint}}},
	}
	return svc, slice
}

// externalIPRules lists the KUBE-SERVICES rules for 203.0.113.7.
func externalIPRules(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "-d 203.0.113.7 ") {
			out = append(out, l)
		}
	}
	return out
}

// TestPartialSyncAfterWinnerDeleted: two Services claim one external IP; the
// core gives it to the older. When that one is deleted, the newer gets it
// back although its own Service did not change, and a partial build must
// write its rule for the address.
func TestPartialSyncAfterWinnerDeleted(t *testing.T) {
	tr := proxier.NewTracker("node1", []v1.IPFamily{v1.IPv4Protocol}, nil, clocktesting.NewFakePassiveClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)))
	oldSvc, oldSlice := claimService("old", "198.51.100.10", "203.0.113.1", 1)
	newSvc, newSlice := claimService("new", "198.51.100.11", "203.0.113.2", 2)
	tr.SetNode(v1.IPv4Protocol, testNode(v1.IPv4Protocol))
	tr.UpdateService(nil, newSvc)
	tr.UpdateEndpointSlice(nil, newSlice)
	tr.UpdateService(nil, oldSvc)
	tr.UpdateEndpointSlice(nil, oldSlice)
	ext := func(name string) string {
		return NewServiceChainNames(proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: name},
			Port: "http", Protocol: v1.ProtocolTCP}).EXT
	}
	oldEXT, newEXT := ext("old"), ext("new")

	b := NewBuilder(v1.IPv4Protocol, testOptions())
	snap := tr.Snapshot(v1.IPv4Protocol)
	rules := externalIPRules(b.Build(snap, BuildInput{}).String())
	if len(rules) != 1 || !strings.HasSuffix(rules[0], "-j "+oldEXT) {
		t.Fatalf("full build: rules for 203.0.113.7 %q, want only ns/old's (%s)", rules, oldEXT)
	}
	b.Commit()
	if err := tr.Commit(snap); err != nil {
		t.Fatal(err)
	}

	tr.UpdateService(oldSvc, nil)
	tr.UpdateEndpointSlice(oldSlice, nil)
	snap = tr.Snapshot(v1.IPv4Protocol)
	rs := b.Build(snap, BuildInput{})
	if rs.Full {
		t.Fatalf("the build after the deletion was full; this test is about partial ones")
	}
	text := rs.String()
	rules = externalIPRules(text)
	if len(rules) != 1 || !strings.HasSuffix(rules[0], "-j "+newEXT) {
		t.Errorf("partial build: rules for 203.0.113.7 %q, want only ns/new's (%s)", rules, newEXT)
	}
	if !slices.Contains(strings.Split(text, "\n"), ":"+newEXT+" - [0:0]") {
		t.Errorf("partial build does not write ns/new's %s chain:\n%s", newEXT, text)
	}
}
