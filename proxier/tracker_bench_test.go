package proxier

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	discovery "k8s.io/api/discovery/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

// scaleTracker loads n services with eps endpoints each (198.18.0.0/15).
func scaleTracker(tb testing.TB, n, eps int) *Tracker {
	tb.Helper()
	tr := NewTracker("node1", []v1.IPFamily{ipv4}, nil, clocktesting.NewFakePassiveClock(start))
	svcBase := netip.MustParseAddr("198.18.0.0")
	epBase := netip.MustParseAddr("198.19.0.0")
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		svcBase = svcBase.Next()
		tr.UpdateService(nil, makeService("scale/"+name, clusterIPs(svcBase.String()), svcPort("http", tcp, 80, 0)))
		opts := []sliceOpt{slicePort("http", tcp, 8080)}
		for range eps {
			epBase = epBase.Next()
			opts = append(opts, sliceEndpoint(epBase.String(), onNode("node2")))
		}
		tr.UpdateEndpointSlice(nil, makeSlice("scale/"+name+"-1", name, discovery.AddressTypeIPv4, opts...))
	}
	if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
		tb.Fatal(err)
	}
	return tr
}

func TestTrackerScaleIncremental(t *testing.T) {
	tr := scaleTracker(t, 2000, 10)
	tr.UpdateService(nil, makeService("scale/new", clusterIPs("198.18.200.1"), svcPort("http", tcp, 80, 0)))
	snap := tr.Snapshot(ipv4)
	if len(snap.Services) != 2001 || snap.Changed.Len() != 1 || len(snap.Endpoints) != 2000 {
		t.Errorf("services %d changed %d endpoints %d; want 2001, 1, 2000", len(snap.Services), snap.Changed.Len(), len(snap.Endpoints))
	}
}

// BenchmarkTrackerSnapshot measures one slice change plus snapshot and commit
// at 10k services x 10 endpoints: the per-sync cost of the tracker.
func BenchmarkTrackerSnapshot(b *testing.B) {
	tr := scaleTracker(b, 10000, 10)
	a := makeSlice("scale/svc-5-1", "svc-5", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080), sliceEndpoint("198.19.200.1"))
	c := makeSlice("scale/svc-5-1", "svc-5", discovery.AddressTypeIPv4, slicePort("http", tcp, 8080), sliceEndpoint("198.19.200.2"))
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			tr.UpdateEndpointSlice(c, a)
		} else {
			tr.UpdateEndpointSlice(a, c)
		}
		if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
			b.Fatal(err)
		}
	}
}
