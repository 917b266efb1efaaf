package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	v1 "k8s.io/api/core/v1"
)

// sharedIP is the external IP both Services of TestSharedExternalIP list.
const sharedIP = "203.0.113.77"

// TestSharedExternalIP: two Services list the same external IP with the same port, which
// the apiserver allows. The one created first keeps serving the address; the other gets
// a Warning naming the field and keeps its ClusterIP. Once the first is deleted, the
// other takes the address over although its own objects did not change.
func TestSharedExternalIP(t *testing.T) {
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	pod1, pod2 := e.pods[0], e.pods[1]
	if err := e.client.RouteVia(sharedIP+"/32", e.node); err != nil {
		t.Fatalf("route %s via node1: %v", sharedIP, err)
	}
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{Args: proxyArgs()})
	p.WaitHealthy(t)
	pid := p.PID()

	// Named so that name order would pick the newer one (as IPVS mode's duplicate guard
	// does): only age may decide.
	older, olderSlice := e.web("shared-z", "198.51.100.70", 0, pod1)
	bed.ExternalIPs(sharedIP)(older)
	api.Apply(t, older, olderSlice)
	expectOnly(t, e, addr(sharedIP, 80), pod1)

	// creationTimestamp has a resolution of one second.
	time.Sleep(time.Until(older.CreationTimestamp.Add(1100 * time.Millisecond)))
	newer, newerSlice := e.web("shared-a", "198.51.100.71", 0, pod2)
	bed.ExternalIPs(sharedIP)(newer)
	api.Apply(t, newer, newerSlice)
	if !older.CreationTimestamp.Before(&newer.CreationTimestamp) {
		t.Fatalf("creation times %v and %v: the test needs the second Service to be newer",
			older.CreationTimestamp, newer.CreationTimestamp)
	}
	ns := e.c.Namespace
	expectWarning(t, api, ns, "Service", "shared-a", fmt.Sprintf(
		`spec.externalIPs[0] %q: %s:80/TCP is already served by %s/shared-z (created earlier)`, sharedIP, sharedIP, ns))
	expectOnly(t, e, addr("198.51.100.71", 80), pod2)
	expectOnly(t, e, addr(sharedIP, 80), pod1)

	api.Delete(t, older, olderSlice)
	bed.Eventually(t, answerTimeout, sharedIP+" answered by "+pod2.Name, func() (bool, string) {
		a, err := e.client.NS.HTTPGet(addr(sharedIP, 80), time.Second)
		if err != nil {
			return false, err.Error()
		}
		return a.Pod == pod2.Name, a.Pod
	})
	expectOnly(t, e, addr(sharedIP, 80), pod2)
	expectOnly(t, e, addr("198.51.100.71", 80), pod2)

	// The loss was reported once: neither later syncs nor getting the address back
	// repeat it.
	total := int32(0)
	for _, ev := range invalidValueEvents(t, api, ns, "Service", "shared-a") {
		if ev.Type == v1.EventTypeWarning {
			total += max(ev.Count, 1)
		}
	}
	if total != 1 {
		t.Errorf("%d Warning events on shared-a, want 1", total)
	}
	requireSameProcess(t, p, pid)
}
