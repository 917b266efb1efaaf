package main

import (
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// Micro-benchmarks of the pure stages at the harness's sizes, through the packages'
// exported API, beside those in iptables/ and ipvs/ (which stop at 10k for IPVS and
// cover the tracker at 10k only). Run with -benchmem; cpu-ms/op is user+system CPU of
// the process per op, GC included, steadier than wall time on a shared machine.

var sizes = []int{1000, 10000, 30000}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func skip30k(b *testing.B, n int) {
	if n > 10000 && testing.Short() {
		b.Skip("30k skipped in -short mode")
	}
}

// trackerObjects are n Services with eps endpoints each, as the informers deliver them.
func trackerObjects(n, eps int) ([]*v1.Service, []*discovery.EndpointSlice) {
	o := &objects{namespace: "scale", n: n + 1, m: eps, probeIP: "203.0.113.2"}
	svcs := make([]*v1.Service, n)
	slices := make([]*discovery.EndpointSlice, n)
	for i := range n {
		svcs[i] = o.service(i)
		slices[i] = o.slice(i)
	}
	return svcs, slices
}

func loadTracker(svcs []*v1.Service, slices []*discovery.EndpointSlice) *proxier.Tracker {
	tr := proxier.NewTracker("node1", []v1.IPFamily{v1.IPv4Protocol}, nil, clocktesting.NewFakePassiveClock(time.Unix(0, 0)))
	tr.SetNode(v1.IPv4Protocol, proxiertest.Node(v1.IPv4Protocol))
	for i := range svcs {
		tr.UpdateService(nil, svcs[i])
		tr.UpdateEndpointSlice(nil, slices[i])
	}
	return tr
}

// BenchmarkTrackerColdSnapshot: every object into a fresh tracker, then the first
// (full) snapshot and its commit — the model side of a cold start.
func BenchmarkTrackerColdSnapshot(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			skip30k(b, n)
			svcs, slices := trackerObjects(n, 10)
			b.ReportAllocs()
			ops, start := 0, cpuNow()
			for b.Loop() {
				ops++
				tr := loadTracker(svcs, slices)
				snap := tr.Snapshot(v1.IPv4Protocol)
				if len(snap.Services) != n {
					b.Fatalf("%d services in the snapshot", len(snap.Services))
				}
				if err := tr.Commit(snap); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuNow()-start)/float64(ops)/1e6, "cpu-ms/op")
		})
	}
}

// BenchmarkTrackerOneChangeSnapshot: one EndpointSlice update, then snapshot and commit
// — the model side of every partial sync.
func BenchmarkTrackerOneChangeSnapshot(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			skip30k(b, n)
			svcs, slices := trackerObjects(n, 10)
			tr := loadTracker(svcs, slices)
			if err := tr.Commit(tr.Snapshot(v1.IPv4Protocol)); err != nil {
				b.Fatal(err)
			}
			a := slices[n/2]
			c := a.DeepCopy()
			c.Endpoints[0].Addresses = []string{"198.18.128.1"}
			b.ReportAllocs()
			ops, start := 0, cpuNow()
			for b.Loop() {
				if ops%2 == 0 {
					tr.UpdateEndpointSlice(a, c)
				} else {
					tr.UpdateEndpointSlice(c, a)
				}
				ops++
				snap := tr.Snapshot(v1.IPv4Protocol)
				if snap.Changed.Len() != 1 {
					b.Fatalf("%d changed services", snap.Changed.Len())
				}
				if err := tr.Commit(snap); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuNow()-start)/float64(ops)/1e6, "cpu-ms/op")
		})
	}
}

var ipvsNodeAddrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.11")}

func ipvsSnapshot(n int) *proxier.Snapshot {
	return proxiertest.Snapshot(proxiertest.Config{Services: n, EndpointsPerService: 10, NodePortEvery: 10})
}

// BenchmarkIPVSBuild is the pure desired-state build of a whole snapshot.
func BenchmarkIPVSBuild(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			skip30k(b, n)
			snap := ipvsSnapshot(n)
			b.ReportAllocs()
			ops, start := 0, cpuNow()
			for b.Loop() {
				ops++
				ipvs.Build(snap, ipvsNodeAddrs, ipvs.DefaultOptions())
			}
			b.ReportMetric(float64(cpuNow()-start)/float64(ops)/1e6, "cpu-ms/op")
		})
	}
}

func ipvsFakeKernel() ipvs.Kernel {
	return ipvs.Kernel{
		Family: v1.IPv4Protocol,
		IPVS:   ipvs.NewFakeIPVS(),
		Links: ipvs.NewFakeLinks(map[string][]netip.Addr{
			"lo": {netip.MustParseAddr("127.0.0.1")}, "eth0": {netip.MustParseAddr("192.0.2.11")}}),
		IPSets:   ipvs.NewFakeIPSets(),
		IPTables: iptables.NewFake(v1.IPv4Protocol),
	}
}

// BenchmarkIPVSSyncOneEndpoint is build + diff + apply of a one-endpoint change against
// the stateful fakes, alternating two snapshots.
func BenchmarkIPVSSyncOneEndpoint(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			skip30k(b, n)
			base := ipvsSnapshot(n)
			moved := proxiertest.WithEndpointChange(base, n/2+1)
			p := ipvs.NewProxier(ipvsFakeKernel(), ipvs.DefaultOptions(), clocktesting.NewFakeClock(time.Unix(0, 0)))
			if _, err := p.Sync(base); err != nil {
				b.Fatal(err)
			}
			snaps := [2]*proxier.Snapshot{moved, base}
			b.ReportAllocs()
			ops, calls, start := 0, 0, cpuNow()
			for b.Loop() {
				res, err := p.Sync(snaps[ops%2])
				if err != nil {
					b.Fatal(err)
				}
				ops++
				calls = res.KernelCalls
			}
			b.ReportMetric(float64(cpuNow()-start)/float64(ops)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(calls), "kernel-calls/op")
		})
	}
}

// BenchmarkIPVSSyncFull is the first sync of a whole snapshot into empty fakes: build,
// diff against nothing, and every (fake) kernel call.
func BenchmarkIPVSSyncFull(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			skip30k(b, n)
			snap := ipvsSnapshot(n)
			b.ReportAllocs()
			ops, calls, start := 0, 0, cpuNow()
			for b.Loop() {
				p := ipvs.NewProxier(ipvsFakeKernel(), ipvs.DefaultOptions(), clocktesting.NewFakeClock(time.Unix(0, 0)))
				res, err := p.Sync(snap)
				if err != nil {
					b.Fatal(err)
				}
				ops++
				calls = res.KernelCalls
			}
			b.ReportMetric(float64(cpuNow()-start)/float64(ops)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(calls), "kernel-calls/op")
		})
	}
}
