package iptables

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func TestPartialSyncSequenceMatchesFullSync(t *testing.T) {
	a := func(opts ...svcOpt) *proxier.ServicePort {
		return testSvc("ns/a", append([]svcOpt{clusterIP("198.51.100.1"), nodePort(30001)}, opts...)...)
	}
	b := testSvc("ns/b", clusterIP("198.51.100.2"), lbIPs("203.0.113.202"), sourceRanges("192.0.2.0/24"))
	c := testSvc("ns/c:dns", clusterIP("198.51.100.3"), port(53), protocol(v1.ProtocolUDP))
	steps := []struct {
		name    string
		entries []any
		changed []*proxier.ServicePort
	}{
		{"start", []any{a(), testEP("203.0.113.70:80"), b, testEP("203.0.113.71:80")}, nil},
		{"add a service", []any{a(), testEP("203.0.113.70:80"), b, testEP("203.0.113.71:80"), c, testEP("203.0.113.72:53")}, []*proxier.ServicePort{c}},
		{"eTP=Local, no local endpoint", []any{a(etpLocal(32001)), testEP("203.0.113.70:80"), b, testEP("203.0.113.71:80"), c, testEP("203.0.113.72:53")}, []*proxier.ServicePort{a()}},
		{"local endpoint appears", []any{a(etpLocal(32001)), testEP("203.0.113.2:80", local), testEP("203.0.113.70:80"), b, testEP("203.0.113.71:80"), c, testEP("203.0.113.72:53")}, []*proxier.ServicePort{a()}},
		{"b loses its endpoints", []any{a(etpLocal(32001)), testEP("203.0.113.2:80", local), testEP("203.0.113.70:80"), b, c, testEP("203.0.113.72:53")}, []*proxier.ServicePort{b}},
		{"a removed", []any{b, c, testEP("203.0.113.72:53")}, []*proxier.ServicePort{a()}},
		{"b back, c removed", []any{b, testEP("203.0.113.73:80")}, []*proxier.ServicePort{b, c}},
	}
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	for i, st := range steps {
		snap := testSnap(v1.IPv4Protocol, st.entries...)
		if i > 0 {
			snap.Changed.Clear()
			for _, s := range st.changed {
				snap.Changed.Insert(s.Name)
			}
		}
		res := mustSync(t, p, snap)
		if res.Full != (i == 0) {
			t.Errorf("%s: Full = %v", st.name, res.Full)
		}
		assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), snap))
	}
}

// nftFake is a fake that says it runs the nft backend.
type nftFake struct{ *Fake }

func (nftFake) Backend() Backend { return NFT }

func TestBatchingDefaultsByBackend(t *testing.T) {
	opts := DefaultOptions()
	if got := NewProxier(NewFake(v1.IPv4Protocol), opts).opts.BatchServices; got >= 0 {
		t.Errorf("unknown backend: BatchServices = %d, want one call (<0)", got)
	}
	if got := NewProxier(nftFake{NewFake(v1.IPv4Protocol)}, opts).opts.BatchServices; got != DefaultBatchServices {
		t.Errorf("nft: BatchServices = %d, want %d", got, DefaultBatchServices)
	}
	opts.BatchServices = 7
	if got := NewProxier(nftFake{NewFake(v1.IPv4Protocol)}, opts).opts.BatchServices; got != 7 {
		t.Errorf("explicit BatchServices overridden: %d", got)
	}
}

func TestCanaryCheckPeriod(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	opts := testOptions()
	opts.Clock, opts.CanaryCheckPeriod = clk, 30*time.Second
	snap := testSnap(v1.IPv4Protocol, testSvc("ns/a", clusterIP("198.51.100.1")), testEP("203.0.113.70:80"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, opts)
	mustSync(t, p, snap)
	clk.Step(31 * time.Second)
	mustSync(t, p, proxiertest.WithChanged(snap)) // checks, finds the canaries
	if err := f.DeleteChain(TableFilter, ChainCanary); err != nil {
		t.Fatal(err)
	}
	clk.Step(10 * time.Second)
	// Nothing changed and no check due: not even a restore.
	if res := mustSync(t, p, proxiertest.WithChanged(snap)); res.Full || res.KernelCalls != 0 {
		t.Errorf("sync 10s after a check: Full %v, %d kernel calls; want a partial sync without checks", res.Full, res.KernelCalls)
	}
	clk.Step(21 * time.Second)
	if res := mustSync(t, p, proxiertest.WithChanged(snap)); !res.Full {
		t.Errorf("sync 31s after a check with the canary gone is not full")
	}
	if ok, _ := f.ChainExists(TableFilter, ChainCanary); !ok {
		t.Errorf("full sync did not restore the canary")
	}
}

// A canary check that fails (the xtables lock held past the tools' wait by kubelet or a
// CNI plugin) says nothing about the canaries: it must not cost a full sync (tens of
// seconds at 10k Services), and the next sync checks again rather than a period later.
func TestCanaryCheckFailureIsNotAFlush(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	opts := testOptions()
	opts.Clock, opts.CanaryCheckPeriod = clk, 30*time.Second
	snap := testSnap(v1.IPv4Protocol, testSvc("ns/a", clusterIP("198.51.100.1")), testEP("203.0.113.70:80"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, opts)
	mustSync(t, p, snap)
	clk.Step(31 * time.Second)
	f.FailNextChainChecks(1)
	if res := mustSync(t, p, proxiertest.WithChanged(snap)); res.Full {
		t.Errorf("a failed canary check made a full sync")
	}
	if err := f.DeleteChain(TableMangle, ChainCanary); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Second)
	if res := mustSync(t, p, proxiertest.WithChanged(snap)); !res.Full {
		t.Errorf("the sync after a failed check did not check again (canary deleted, sync not full)")
	}
}

func TestChangedMissingAServiceFallsBackToFullBuild(t *testing.T) {
	a := testSvc("ns/a", clusterIP("198.51.100.1"))
	snap := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	mustSync(t, p, snap)
	// ns/b appears but Changed does not say so (a bug upstream of us).
	next := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"), testSvc("ns/b", clusterIP("198.51.100.2")), testEP("203.0.113.71:80"))
	next.Changed.Clear()
	if res := mustSync(t, p, next); !res.Full {
		t.Errorf("sync did not fall back to a full build")
	}
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), next))
}

// An empty family (IPv6 on a single-stack node) and a sync with nothing new write
// nothing after the first sync; a change still does.
func TestNothingToWriteSparesTheRestore(t *testing.T) {
	for _, tc := range []struct {
		name string
		snap *proxier.Snapshot
	}{
		{"empty family", testSnap(v1.IPv6Protocol)},
		{"nothing changed", testSnap(v1.IPv4Protocol, testSvc("ns/a", clusterIP("198.51.100.1")), testEP("203.0.113.70:80"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(tc.snap.Family)
			p := NewProxier(f, testOptions())
			if res := mustSync(t, p, tc.snap); !res.Full || res.KernelCalls == 0 {
				t.Fatalf("first sync: Full %v, %d kernel calls; want a full restore", res.Full, res.KernelCalls)
			}
			before := len(f.Restores())
			fam := string(tc.snap.Family)
			lastNAT := gaugeValue(t, metrics.IPTablesRulesLastSync, fam, "nat")
			for i := 0; i < 3; i++ {
				// (The kernel calls left are the canary checks.)
				if res := mustSync(t, p, proxiertest.WithChanged(tc.snap)); res.Full || res.Bytes != 0 {
					t.Errorf("sync %d with nothing new: Full %v, %d bytes restored; want nothing", i+2, res.Full, res.Bytes)
				}
			}
			if got := len(f.Restores()); got != before {
				t.Errorf("%d restores after the first sync, want none", got-before)
			}
			// The last-sync gauge still describes the last restore.
			if got := gaugeValue(t, metrics.IPTablesRulesLastSync, fam, "nat"); got != lastNAT || got == 0 {
				t.Errorf("sync_proxy_rules_iptables_last{nat} = %v after syncs without restore, want %v (> 0)", got, lastNAT)
			}
			if lost, err := p.Verify(); lost || err != nil {
				t.Errorf("Verify: lost %v, %v", lost, err)
			}
		})
	}
	// A change after skipped syncs is written.
	a := testSvc("ns/a", clusterIP("198.51.100.1"))
	snap := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	mustSync(t, p, snap)
	mustSync(t, p, proxiertest.WithChanged(snap))
	next := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.71:80"))
	next.Changed.Insert(a.Name)
	before := len(f.Restores())
	if res := mustSync(t, p, next); res.Bytes == 0 || len(f.Restores()) != before+1 {
		t.Errorf("endpoint change after a skipped sync: %d bytes in %d restores, want one restore", res.Bytes, len(f.Restores())-before)
	}
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), next))
}

// A service without endpoints has no chains of its own, only a filter REJECT rule:
// removing it changes the filter table alone, and that must still be written.
func TestRemovedServiceWithoutEndpointsLeavesNoReject(t *testing.T) {
	a := testSvc("ns/a", clusterIP("198.51.100.1"))
	b := testSvc("ns/b", clusterIP("198.51.100.2"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	mustSync(t, p, testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"), b))
	if !strings.Contains(f.Dump(TableFilter), "-d 198.51.100.2 ") {
		t.Fatalf("no REJECT for ns/b:\n%s", f.Dump(TableFilter))
	}
	next := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"))
	next.Changed.Clear()
	next.Changed.Insert(b.Name)
	mustSync(t, p, next)
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), next))
}
