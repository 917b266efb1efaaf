package proxier

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"testing"

	v1 "k8s.io/api/core/v1"

	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"
)

// scaleObjects returns n services with eps endpoints each (198.18.0.0/15);
// every externalEvery-th service (none when 0) also has an external IP of
// its own in 198.20.0.0/16.
func scaleObjects(n, eps, externalEvery int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, 0, n)
	slices := make([]*discovery.EndpointSlice, 0, n)
	svcBase := netip.MustParseAddr("198.18.0.0")
	epBase := netip.MustParseAddr("198.19.0.0")
	extBase := netip.MustParseAddr("198.20.0.0")
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		svcBase = svcBase.Next()
		opts := []svcOpt{clusterIPs(svcBase.String()), svcPort("http", tcp, 80, 0)}
		if externalEvery > 0 && i%externalEvery == 0 {
			extBase = extBase.Next()
			opts = append(opts, externalIPs(extBase.String()))
		}
		svcs = append(svcs, makeService("scale/"+name, opts...))
		sliceOpts := []sliceOpt{slicePort("http", tcp, 8080)}
		for range eps {
			epBase = epBase.Next()
			sliceOpts = append(sliceOpts, sliceEndpoint(epBase.String(), onNode("node2")))
		}
		slices = append(slices, makeSlice("scale/"+name+"-1", name, discovery.AddressTypeIPv4, sliceOpts...))
	}
	return svcs, slices
}

func loadTracker(svcs []*v1.Service, slices []*discovery.EndpointSlice) *Tracker {
	tr := NewTracker("node1", []v1.IPFamily{ipv4}, nil, clocktesting.NewFakePassiveClock(start))
	for i, svc := range svcs {
		tr.UpdateService(nil, svc)
		tr.UpdateEndpointSlice(nil, slices[i])
	}
	return tr
}

// scaleTracker loads n services with eps endpoints each and commits them.
func scaleTracker(tb testing.TB, n, eps int) *Tracker {
	tb.Helper()
	tr := loadTracker(scaleObjects(n, eps, 0))
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

// BenchmarkTrackerServiceChange measures one Service update plus snapshot and
// commit at 10k services (every 10th with an external IP): svc-5 takes and
// gives back the external IP of svc-0, so a collision comes and goes.
func BenchmarkTrackerServiceChange(b *testing.B) {
	svcs, slices := scaleObjects(10000, 10, 10)
	tr := loadTracker(svcs, slices)
	if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
		b.Fatal(err)
	}
	plain := svcs[5]
	claiming := plain.DeepCopy()
	claiming.Spec.ExternalIPs = svcs[0].Spec.ExternalIPs
	quietLogs(b) // each new collision is logged
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			tr.UpdateService(plain, claiming)
		} else {
			tr.UpdateService(claiming, plain)
		}
		if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
			b.Fatal(err)
		}
	}
}

func quietLogs(tb testing.TB) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	tb.Cleanup(func() {
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	})
}

// BenchmarkTrackerCold measures loading 10k services (every 10th with an
// external IP) and their slices into a fresh tracker, and its first snapshot.
func BenchmarkTrackerCold(b *testing.B) {
	svcs, slices := scaleObjects(10000, 10, 10)
	b.ResetTimer()
	for range b.N {
		tr := loadTracker(svcs, slices)
		if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
			b.Fatal(err)
		}
	}
}

// maximalSlice is the largest slice the apiserver accepts in ports, with
// 50 endpoints, of which the Service "scale/big" uses the port "http" only
// (e2e TestBadInput/MaximalSlices).
func maximalSlice(firstIP string) (*v1.Service, *discovery.EndpointSlice) {
	svc := makeService("scale/big", clusterIPs("198.18.0.1"), svcPort("http", tcp, 80, 0))
	opts := []sliceOpt{slicePort("http", tcp, 1024)}
	for i := 1; i < 20000; i++ {
		opts = append(opts, slicePort(fmt.Sprintf("p%d", i), tcp, int32(1024+i)))
	}
	ip := netip.MustParseAddr(firstIP)
	for range 50 {
		opts = append(opts, sliceEndpoint(ip.String()))
		ip = ip.Next()
	}
	return svc, makeSlice("scale/big-1", "big", discovery.AddressTypeIPv4, opts...)
}

// BenchmarkTrackerMaximalSlice measures a maximal slice into a fresh tracker
// (retained-B/op: the heap the tracker keeps for it), and an update of it
// that replaces one endpoint.
func BenchmarkTrackerMaximalSlice(b *testing.B) {
	svc, a := maximalSlice("198.19.0.1")
	_, c := maximalSlice("198.19.0.2")
	b.Run("add", func(b *testing.B) {
		var retained uint64
		for range b.N {
			before := heapInUse()
			tr := loadTracker([]*v1.Service{svc}, []*discovery.EndpointSlice{a})
			if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
				b.Fatal(err)
			}
			retained += heapInUse() - before
			runtime.KeepAlive(tr)
		}
		b.ReportMetric(float64(retained)/float64(b.N), "retained-B/op")
	})
	b.Run("update", func(b *testing.B) {
		tr := loadTracker([]*v1.Service{svc}, []*discovery.EndpointSlice{a})
		b.ResetTimer()
		for i := range b.N {
			if i%2 == 0 {
				tr.UpdateEndpointSlice(a, c)
			} else {
				tr.UpdateEndpointSlice(c, a)
			}
			if err := tr.Commit(tr.Snapshot(ipv4)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
