package iptables

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

var benchSizes = []int{1000, 10000, 30000}

func benchSnapshot(b *testing.B, services int) *proxier.Snapshot {
	if services > 10000 && testing.Short() {
		b.Skip("30k services skipped in -short mode")
	}
	return proxiertest.Snapshot(proxiertest.Config{
		Family: v1.IPv4Protocol, Services: services, EndpointsPerService: 10, NodePortEvery: 10, LocalEvery: 5,
	})
}

// cpuTime is this process's user+system CPU time. The benchmarks report it
// per op ("cpu-ms/op") because wall time on a shared, loaded machine says
// little; it includes the garbage collector's work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drain assembles the restore inputs as Sync would, returning their size.
func drain(rs *Ruleset) int {
	n := 0
	for data := range rs.Inputs(DefaultBatchServices) {
		n += len(data)
	}
	return n
}

// BenchmarkBuildFull measures a full build and the assembly of its
// restore inputs (everything a full Sync does but the kernel calls).
func BenchmarkBuildFull(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap := benchSnapshot(b, n)
			bld := NewBuilder(v1.IPv4Protocol, testOptions())
			b.ReportAllocs()
			b.ResetTimer()
			size, ops, start := 0, 0, cpuTime()
			for b.Loop() {
				ops++
				size = drain(bld.Build(snap, BuildInput{Full: true}))
				bld.Commit()
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(ops)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(size), "restore-bytes")
		})
	}
}

// BenchmarkBuildPartial measures a partial build after one endpoint of one
// service changed, alternating between two snapshots.
func BenchmarkBuildPartial(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snapA := benchSnapshot(b, n)
			snapB := proxiertest.WithEndpointChange(snapA, n/2)
			snapA = proxiertest.WithChanged(snapA, proxiertest.ServiceName(n/2))
			bld := NewBuilder(v1.IPv4Protocol, testOptions())
			bld.Build(snapA, BuildInput{Full: true})
			bld.Commit()
			b.ReportAllocs()
			b.ResetTimer()
			size, i, start := 0, 0, cpuTime()
			for b.Loop() {
				snap := snapA
				if i%2 == 0 {
					snap = snapB
				}
				i++
				size = drain(bld.Build(snap, BuildInput{}))
				bld.Commit()
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(i)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(size), "restore-bytes")
		})
	}
}
