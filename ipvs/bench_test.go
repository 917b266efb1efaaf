package ipvs

import (
	"fmt"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// BenchmarkBuild is the pure desired-state build of a whole snapshot.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		snap := proxiertest.Snapshot(proxiertest.Config{Services: n, EndpointsPerService: 10, NodePortEvery: 10})
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for b.Loop() {
				Build(snap, nodeAddrs, DefaultOptions())
			}
		})
	}
}

// BenchmarkSyncOneEndpoint is a whole Sync (build + diff + apply) of a
// one-endpoint change against the fake kernel, alternating between two
// snapshots so every iteration changes one endpoint.
func BenchmarkSyncOneEndpoint(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		base := proxiertest.Snapshot(proxiertest.Config{Services: n, EndpointsPerService: 10, NodePortEvery: 10})
		// n/2+1 has no NodePort: one virtual server changes.
		moved := proxiertest.WithEndpointChange(base, n/2+1)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			f := newFakeKernel()
			p := newTestProxier(f, DefaultOptions())
			if _, err := p.Sync(base); err != nil {
				b.Fatal(err)
			}
			snaps := [2]*proxier.Snapshot{moved, base}
			i := 0
			for b.Loop() {
				res, err := p.Sync(snaps[i%2])
				if err != nil {
					b.Fatal(err)
				}
				i++
				b.ReportMetric(float64(res.KernelCalls), "kernel-calls/op")
			}
		})
	}
}
