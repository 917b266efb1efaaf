package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Measures restore cost at kube-proxy's shape; logs times, asserts only the
// result. Run with -run RestoreScale -v to see the numbers.

func scaleChain(prefix, s string) string {
	h := sha256.Sum256([]byte(s))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}

type scaleService struct {
	ip   string
	svc  string
	seps []string
	eps  []string
}

// scaleServices are n ClusterIP services of m endpoints in 198.18.0.0/15.
func scaleServices(n, m int) []scaleService {
	out := make([]scaleService, n)
	for i := range out {
		s := scaleService{ip: fmt.Sprintf("198.18.%d.%d", i/256, i%256)}
		name := fmt.Sprintf("ns%d/svc%d:http", i%10, i)
		s.svc = scaleChain("KUBE-SVC-", name+"tcp")
		for j := 0; j < m; j++ {
			e := i*m + j
			ep := fmt.Sprintf("198.19.%d.%d", e/256, e%256)
			s.eps = append(s.eps, ep)
			s.seps = append(s.seps, scaleChain("KUBE-SEP-", name+"tcp"+ep+":8080"))
		}
		out[i] = s
	}
	return out
}

func writeServiceChains(b *strings.Builder, s scaleService) {
	fmt.Fprintf(b, ":%s - [0:0]\n", s.svc)
	for _, sep := range s.seps {
		fmt.Fprintf(b, ":%s - [0:0]\n", sep)
	}
	n := len(s.seps)
	for j, sep := range s.seps {
		if j < n-1 {
			fmt.Fprintf(b, "-A %s -m statistic --mode random --probability %0.10f -j %s\n", s.svc, 1/float64(n-j), sep)
		} else {
			fmt.Fprintf(b, "-A %s -j %s\n", s.svc, sep)
		}
		fmt.Fprintf(b, "-A %s -s %s/32 -j KUBE-MARK-MASQ\n", sep, s.eps[j])
		fmt.Fprintf(b, "-A %s -p tcp -m tcp -j DNAT --to-destination %s:8080\n", sep, s.eps[j])
	}
}

func writeDispatch(b *strings.Builder, svcs []scaleService) {
	b.WriteString(":KUBE-SERVICES - [0:0]\n")
	for _, s := range svcs {
		fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport 80 -j %s\n", s.ip, s.svc)
	}
}

// scaleRestoreBatched is the same full sync with the service chains split
// into one "*nat ... COMMIT" block per batch services, in one input.
func scaleRestoreBatched(svcs []scaleService, batch int) []byte {
	var b strings.Builder
	b.WriteString("*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\nCOMMIT\n")
	for i := 0; i < len(svcs); i += batch {
		b.WriteString("*nat\n")
		for _, s := range svcs[i:min(i+batch, len(svcs))] {
			writeServiceChains(&b, s)
		}
		b.WriteString("COMMIT\n")
	}
	b.WriteString("*nat\n")
	writeDispatch(&b, svcs)
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// scaleRestore is the nat table of a full sync, or with only set, a partial
// sync writing those services' chains (and, with dispatch, KUBE-SERVICES).
func scaleRestore(svcs []scaleService, only []int, dispatch bool) []byte {
	var b strings.Builder
	b.WriteString("*nat\n")
	if only == nil {
		b.WriteString(":KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n")
		for _, s := range svcs {
			writeServiceChains(&b, s)
		}
	}
	for _, i := range only {
		writeServiceChains(&b, svcs[i])
	}
	if only == nil || dispatch {
		writeDispatch(&b, svcs) // last, so it only jumps to chains that exist
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// restoreCost is wall time and the CPU time of the tool, which unlike wall
// time barely moves when other work loads the machine.
type restoreCost struct{ wall, cpu time.Duration }

func (c restoreCost) String() string {
	return fmt.Sprintf("%v wall, %v CPU", c.wall.Round(time.Millisecond), c.cpu.Round(time.Millisecond))
}

func childCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func timeRestore(t *testing.T, k Kernel, data []byte) restoreCost {
	t.Helper()
	cpu0, start := childCPU(t), time.Now()
	if err := k.Restore(data); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return restoreCost{wall: time.Since(start), cpu: childCPU(t) - cpu0}
}

func TestRestoreScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale measurement skipped in -short")
	}
	const nSvc, nEp = 1000, 10
	svcs := scaleServices(nSvc, nEp)
	full := scaleRestore(svcs, nil, false)
	partial := scaleRestore(svcs, []int{nSvc / 2}, true)
	oneService := scaleRestore(svcs, []int{nSvc / 2}, false)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			k, _ := newTestKernel(t, v1.IPv4Protocol, b)
			cost := timeRestore(t, k, full)
			t.Logf("%s: full restore of %d services x %d endpoints (%d lines, %d KiB): %v",
				b, nSvc, nEp, strings.Count(string(full), "\n"), len(full)/1024, cost)
			for i := 0; i < 3; i++ {
				t.Logf("%s: partial restore, KUBE-SERVICES (%d rules) + 1 service's chains (%d lines) #%d: %v",
					b, nSvc, strings.Count(string(partial), "\n"), i+1, timeRestore(t, k, partial))
			}
			for i := 0; i < 3; i++ {
				t.Logf("%s: 1 service's chains only (%d lines) #%d: %v",
					b, strings.Count(string(oneService), "\n"), i+1, timeRestore(t, k, oneService))
			}
			start := time.Now()
			save := mustSave(t, k, TableNAT)
			t.Logf("%s: save of the nat table: %v", b, time.Since(start))
			wantRuleCount(t, save, 1+nSvc*(1+nEp*3))
		})
		t.Run(string(b)+"/batched", func(t *testing.T) {
			const batch = 100
			k, _ := newTestKernel(t, v1.IPv4Protocol, b)
			t.Logf("%s: full restore in one input, %d services per COMMIT: %v", b, batch,
				timeRestore(t, k, scaleRestoreBatched(svcs, batch)))
			wantRuleCount(t, mustSave(t, k, TableNAT), 1+nSvc*(1+nEp*3))
		})
	}
}

func wantRuleCount(t *testing.T, save string, want int) {
	t.Helper()
	if got := strings.Count(save, "\n-A "); got != want {
		t.Errorf("nat table holds %d rules after the restores, want %d", got, want)
	}
}
