package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/iptables/dump"
	"github.com/svcproxy/svcproxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func scaleSnap(services, endpoints int) *proxier.Snapshot {
	return proxiertest.Snapshot(proxiertest.Config{Family: v1.IPv4Protocol, Services: services, EndpointsPerService: endpoints, NodePortEvery: 3, LocalEvery: 4})
}

func mustSync(t *testing.T, p *Proxier, snap *proxier.Snapshot) proxier.SyncResult {
	t.Helper()
	res, err := p.Sync(snap)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// freshState is what a new proxier writes for snap into an empty kernel.
func freshState(t *testing.T, opts Options, snap *proxier.Snapshot) string {
	t.Helper()
	f := NewFake(snap.Family)
	mustSync(t, NewProxier(f, opts), snap)
	return string(f.SaveAll())
}

func assertSameState(t *testing.T, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			t.Fatalf("kernel state differs at line %d:\n got: %s\nwant: %s", i+1, g[i], w[i])
		}
	}
	t.Fatalf("kernel state differs in length: %d lines, want %d", len(g), len(w))
}

// declaredChains returns the chains a restore input declares per table, and those it deletes.
func declaredChains(t *testing.T, input []byte) (map[string][]string, []string) {
	t.Helper()
	d, err := dump.Parse(input)
	if err != nil {
		t.Fatalf("parse restore input: %v", err)
	}
	out := map[string][]string{}
	var deleted []string
	for _, tbl := range d.Tables {
		for _, c := range tbl.Chains {
			if !dump.IsBuiltin(tbl.Name, c.Name) {
				out[tbl.Name] = append(out[tbl.Name], c.Name)
			}
		}
		deleted = append(deleted, tbl.Deleted...)
	}
	return out, deleted
}

func TestPartialSyncWritesOnlyChangedService(t *testing.T) {
	snap := scaleSnap(1000, 2)
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	if res := mustSync(t, p, snap); !res.Full {
		t.Fatalf("first sync is not full")
	}

	changed := proxiertest.WithEndpointChange(snap, 500)
	res := mustSync(t, p, changed)
	if res.Full {
		t.Fatalf("endpoint change caused a full sync")
	}
	inputs := f.Restores()
	input := inputs[len(inputs)-1]
	chains, deleted := declaredChains(t, input)

	names := NewServiceChainNames(proxiertest.ServiceName(500))
	var oldEPs, newEPs []string
	for _, ep := range snap.Endpoints[proxiertest.ServiceName(500)] {
		oldEPs = append(oldEPs, names.SEP(ep))
	}
	for _, ep := range changed.Endpoints[proxiertest.ServiceName(500)] {
		newEPs = append(newEPs, names.SEP(ep))
	}
	stale := []string{oldEPs[0]} // the moved endpoint's chain
	// The dispatch chains are left alone: the service's rules there did not change.
	wantNAT := append([]string{"KUBE-POSTROUTING", "KUBE-MARK-MASQ", names.SVC}, newEPs...)
	if !sameSet(chains["nat"], wantNAT) {
		t.Errorf("partial restore declares nat chains %v, want %v", chains["nat"], wantNAT)
	}
	if !sameSet(deleted, stale) {
		t.Errorf("partial restore deletes %v, want %v", deleted, stale)
	}
	if !sameSet(chains["filter"], []string{"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"}) {
		t.Errorf("partial restore filter chains %v", chains["filter"])
	}
	if got := strings.Count(string(input), "-A KUBE-SERVICES "); got != 0 {
		t.Errorf("an endpoint change rewrote %d rules of KUBE-SERVICES, want none", got)
	}
	natPart := string(input[strings.Index(string(input), "*nat"):])
	for _, l := range strings.Split(natPart, "\n") {
		if chain, ok := strings.CutPrefix(l, "-A "); ok && !slices.Contains(wantNAT, strings.Fields(chain)[0]) {
			t.Errorf("partial restore writes a rule of an unchanged chain: %s", l)
		}
	}
	if got := countLines(natPart, "-A "); res.Rules["nat"] != got {
		t.Errorf("SyncResult.Rules[nat] = %d, input holds %d", res.Rules["nat"], got)
	}
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), changed))
	if got, want := gaugeValue(t, metrics.IPTablesRulesTotal, "IPv4", "nat"), float64(ourNATRules(f)); got != want {
		t.Errorf("sync_proxy_rules_iptables_total{nat} = %v, kernel holds %v", got, want)
	}
	if lost, err := p.Verify(); lost || err != nil {
		t.Errorf("Verify after a sync that left KUBE-SERVICES alone: lost %v, %v", lost, err)
	}

	// A service that goes changes the dispatch chain: it is rewritten whole, one rule
	// per service plus the NodePort jump.
	gone := scaleSnap(999, 2)
	gone.Changed.Insert(proxiertest.ServiceName(999))
	mustSync(t, p, gone)
	inputs = f.Restores()
	if got := strings.Count(string(inputs[len(inputs)-1]), "-A KUBE-SERVICES -m comment --comment \"scale/"); got != 999 {
		t.Errorf("after a service was removed KUBE-SERVICES got %d service rules, want 999", got)
	}
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), gone))
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// ourNATRules counts the rules in our nat chains (not the built-in jumps).
func ourNATRules(f *Fake) int {
	n := 0
	for _, l := range strings.Split(f.Dump(TableNAT), "\n") {
		if strings.HasPrefix(l, "-A KUBE-") {
			n++
		}
	}
	return n
}

func gaugeValue(t *testing.T, g *prometheus.GaugeVec, labels ...string) float64 {
	t.Helper()
	m := &dto.Metric{}
	if err := g.WithLabelValues(labels...).Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func counterValue(t *testing.T, c *prometheus.CounterVec, labels ...string) float64 {
	t.Helper()
	m := &dto.Metric{}
	if err := c.WithLabelValues(labels...).Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestFailedRestoreKeepsStateAndForcesFullSync(t *testing.T) {
	snap := scaleSnap(20, 2)
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	mustSync(t, p, snap)
	before := string(f.SaveAll())
	failures := counterValue(t, metrics.IPTablesRestoreFailuresTotal, "IPv4")
	partialFailures := counterValue(t, metrics.IPTablesPartialRestoreFailuresTotal, "IPv4")

	changed := proxiertest.WithEndpointChange(snap, 3)
	f.FailNextRestores(1)
	_, err := p.Sync(changed)
	var rerr *RestoreError
	if !errors.As(err, &rerr) || !errors.Is(err, ErrInjected) {
		t.Fatalf("Sync error = %v, want the kernel's *RestoreError", err)
	}
	assertSameState(t, string(f.SaveAll()), before)
	if got := counterValue(t, metrics.IPTablesRestoreFailuresTotal, "IPv4"); got != failures+1 {
		t.Errorf("restore failures = %v, want %v", got, failures+1)
	}
	if got := counterValue(t, metrics.IPTablesPartialRestoreFailuresTotal, "IPv4"); got != partialFailures+1 {
		t.Errorf("partial restore failures = %v, want %v", got, partialFailures+1)
	}

	// The core retries with what changed since the last success.
	res := mustSync(t, p, changed)
	if !res.Full {
		t.Errorf("sync after a failure is not full")
	}
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), changed))
	if res := mustSync(t, p, proxiertest.WithChanged(changed)); res.Full {
		t.Errorf("second sync after recovery is full")
	}
}

// failAt applies each restore input one COMMIT block at a time, as the kernel
// does, and fails at the n-th block (1-based, counted across calls).
type failAt struct {
	*Fake
	n, blocks int
}

func (k *failAt) Restore(data []byte) error {
	for _, block := range commitBlocks(data) {
		k.blocks++
		if k.blocks == k.n {
			return &RestoreError{Line: 2, Rule: "x", Err: ErrInjected}
		}
		if err := k.Fake.Restore(block); err != nil {
			return err
		}
	}
	return nil
}

// commitBlocks splits a restore input after each COMMIT line.
func commitBlocks(data []byte) [][]byte {
	var blocks [][]byte
	for len(data) > 0 {
		i := bytes.Index(data, []byte("COMMIT\n"))
		if i < 0 {
			return append(blocks, data)
		}
		blocks = append(blocks, data[:i+len("COMMIT\n")])
		data = data[i+len("COMMIT\n"):]
	}
	return blocks
}

func TestBatchedFullSync(t *testing.T) {
	opts := testOptions()
	opts.BatchServices = 10
	snap := scaleSnap(35, 2)
	f := NewFake(v1.IPv4Protocol)
	res := mustSync(t, NewProxier(f, opts), snap)
	inputs := f.Restores()
	if len(inputs) != 1 {
		t.Fatalf("%d restore calls, want 1 holding every block", len(inputs))
	}
	var nat [][]byte
	for _, b := range commitBlocks(inputs[0]) {
		if bytes.HasPrefix(b, []byte("*nat")) {
			nat = append(nat, b)
		}
	}
	if len(nat) != 5 {
		t.Fatalf("%d nat COMMIT blocks, want 4 service batches + 1 dispatch", len(nat))
	}
	for i, in := range nat[:4] {
		if strings.Contains(string(in), ":KUBE-SERVICES") {
			t.Errorf("block %d writes the dispatch chain before all service chains exist", i)
		}
	}
	if !strings.Contains(string(nat[4]), ":KUBE-SERVICES") {
		t.Errorf("last nat block does not write the dispatch chain")
	}
	if res.Bytes != len(inputs[0]) {
		t.Errorf("SyncResult.Bytes = %d, input holds %d", res.Bytes, len(inputs[0]))
	}
	unbatched := testOptions()
	unbatched.BatchServices = -1
	assertSameState(t, string(f.SaveAll()), freshState(t, unbatched, snap))
}

func TestFailedBatchThenFullSyncCleansUp(t *testing.T) {
	opts := testOptions()
	opts.BatchServices = 10
	old := scaleSnap(35, 2)
	k := &failAt{Fake: NewFake(v1.IPv4Protocol)}
	p := NewProxier(k, opts)
	mustSync(t, p, old)

	// A new set of endpoints everywhere: the third block fails after two
	// blocks of new service chains were committed.
	renamed := proxiertest.Snapshot(proxiertest.Config{Family: v1.IPv4Protocol, Services: 35, EndpointsPerService: 3, NodePortEvery: 3})
	p.ForceFullSync("test")
	k.n, k.blocks = 3, 0
	if _, err := p.Sync(renamed); err == nil {
		t.Fatal("Sync succeeded despite the failed batch")
	}
	// Traffic keeps flowing: services of the committed batches already use
	// their new endpoints, the others still their old ones.
	tr, err := tracer.New(k.SaveAll(), renamed.Node.IPs)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range map[int]int{0: 3, 34: 2} {
		ip := renamed.Services[proxiertest.ServiceName(i)].ClusterIP
		r, err := tr.Trace(fromPod(tcp(podNode1, netip.AddrPortFrom(ip, 80).String())))
		if err != nil || r.Verdict != tracer.DNAT || len(r.Endpoints) != want {
			t.Errorf("service %d after a failed batch: %+v, %v; want DNAT to %d endpoints", i, r, err, want)
		}
	}
	res := mustSync(t, p, renamed)
	if !res.Full {
		t.Errorf("sync after a failed batch is not full")
	}
	assertSameState(t, string(k.SaveAll()), freshState(t, opts, renamed))
}

func TestStaleChainsRemoved(t *testing.T) {
	a := testSvc("ns/a", clusterIP("198.51.100.1"), nodePort(30001), etpLocal(32001))
	b := testSvc("ns/b", clusterIP("198.51.100.2"))
	snap := testSnap(v1.IPv4Protocol, a, testEP("203.0.113.70:80"), testEP("203.0.113.2:80", local), b, testEP("203.0.113.71:80"))
	f := NewFake(v1.IPv4Protocol)
	p := NewProxier(f, testOptions())
	mustSync(t, p, snap)
	aNames := NewServiceChainNames(a.Name)
	if got := f.State().Table("nat").ChainNames("KUBE-"); !slices.Contains(got, aNames.SVL) || !slices.Contains(got, aNames.EXT) {
		t.Fatalf("chains of ns/a missing: %v", got)
	}

	// ns/a removed, ns/b loses an endpoint and gains another.
	next := testSnap(v1.IPv4Protocol, b, testEP("203.0.113.72:80"))
	next.Changed.Insert(a.Name)
	mustSync(t, p, next)
	assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), next))

	// A new process finds chains an older run left behind (here: ns/a's).
	f2 := NewFake(v1.IPv4Protocol)
	mustSync(t, NewProxier(f2, testOptions()), snap)
	mustSync(t, NewProxier(f2, testOptions()), next)
	assertSameState(t, string(f2.SaveAll()), freshState(t, testOptions(), next))
}

func TestFullSyncTriggers(t *testing.T) {
	snap := testSnap(v1.IPv4Protocol, testSvc("ns/a", clusterIP("198.51.100.1")), testEP("203.0.113.70:80"))
	tests := []struct {
		name    string
		disturb func(f *Fake, clk *clocktesting.FakeClock, snap *proxier.Snapshot) *proxier.Snapshot
		full    bool
	}{
		{name: "nothing happened", full: false,
			disturb: func(*Fake, *clocktesting.FakeClock, *proxier.Snapshot) *proxier.Snapshot { return nil }},
		{name: "59 minutes", full: false,
			disturb: func(_ *Fake, clk *clocktesting.FakeClock, _ *proxier.Snapshot) *proxier.Snapshot {
				clk.Step(59 * time.Minute)
				return nil
			}},
		{name: "full sync period", full: true,
			disturb: func(_ *Fake, clk *clocktesting.FakeClock, _ *proxier.Snapshot) *proxier.Snapshot {
				clk.Step(61 * time.Minute)
				return nil
			}},
		{name: "nat canary flushed", full: true,
			disturb: func(f *Fake, _ *clocktesting.FakeClock, _ *proxier.Snapshot) *proxier.Snapshot {
				// What "iptables -t nat -F; -X" does to us: our chains and jumps go.
				for _, c := range f.State().Table("nat").ChainNames("KUBE-") {
					_ = f.FlushChain(TableNAT, c)
				}
				_ = f.DeleteRule(TableNAT, "PREROUTING", jumpRules[10].args()...)
				_ = f.DeleteChain(TableNAT, ChainCanary)
				return nil
			}},
		{name: "mangle canary gone", full: true,
			disturb: func(f *Fake, _ *clocktesting.FakeClock, _ *proxier.Snapshot) *proxier.Snapshot {
				_ = f.DeleteChain(TableMangle, ChainCanary)
				return nil
			}},
		{name: "node labels changed", full: true,
			disturb: func(_ *Fake, _ *clocktesting.FakeClock, snap *proxier.Snapshot) *proxier.Snapshot {
				next := *snap
				next.Node.Labels = map[string]string{v1.LabelTopologyZone: "zone-b"}
				return &next
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			opts := testOptions()
			opts.Clock = clk
			f := NewFake(v1.IPv4Protocol)
			p := NewProxier(f, opts)
			mustSync(t, p, snap)
			next := tc.disturb(f, clk, snap)
			if next == nil {
				next = proxiertest.WithChanged(snap)
			}
			if missing, err := p.CanaryMissing(); err != nil || missing != strings.Contains(tc.name, "canary") {
				t.Errorf("CanaryMissing = %v, %v", missing, err)
			}
			res := mustSync(t, p, next)
			if res.Full != tc.full {
				t.Errorf("Full = %v, want %v", res.Full, tc.full)
			}
			// Whatever was disturbed is repaired.
			assertSameState(t, string(f.SaveAll()), freshState(t, testOptions(), next))
		})
	}
}

func TestSyncResult(t *testing.T) {
	snap := testSnap(v1.IPv4Protocol,
		testSvc("ns/a", clusterIP("198.51.100.1"), nodePort(30001), etpLocal(32001)), testEP("203.0.113.70:80"),
		testSvc("ns/b", clusterIP("198.51.100.2"), itpLocal()), testEP("203.0.113.71:80"),
		testSvc("ns/c", clusterIP("198.51.100.3")),
	)
	f := NewFake(v1.IPv4Protocol)
	res := mustSync(t, NewProxier(f, testOptions()), snap)
	in := string(f.LastRestore())
	want := proxier.SyncResult{
		Full:             true,
		Rules:            map[string]int{"nat": countLines(in[strings.Index(in, "*nat"):], "-A "), "filter": countLines(in[:strings.Index(in, "*nat")], "-A ")},
		Bytes:            len(in),
		NoLocalEndpoints: map[string]int{"internal": 1, "external": 1},
	}
	if res.Full != want.Full || res.Bytes != want.Bytes || fmt.Sprint(res.Rules) != fmt.Sprint(want.Rules) || fmt.Sprint(res.NoLocalEndpoints) != fmt.Sprint(want.NoLocalEndpoints) {
		t.Errorf("SyncResult = %+v, want %+v", res, want)
	}
	// 12 jumps + the kubelet guard's 2, each EnsureChain+EnsureRule, 3
	// canaries, 2 saves, 1 restore.
	if res.KernelCalls != 2*14+3+2+1 {
		t.Errorf("KernelCalls = %d", res.KernelCalls)
	}
	if got := gaugeValue(t, metrics.IPTablesRulesLastSync, "IPv4", "filter"); got != float64(want.Rules["filter"]) {
		t.Errorf("sync_proxy_rules_iptables_last{filter} = %v", got)
	}
	if got := gaugeValue(t, metrics.SyncRestoreBytes, "IPv4"); got != float64(len(in)) {
		t.Errorf("restore bytes gauge = %v", got)
	}

	if _, err := NewProxier(NewFake(v1.IPv6Protocol), testOptions()).Sync(snap); err == nil {
		t.Errorf("IPv6 data plane accepted an IPv4 snapshot")
	}
}

func TestVerifyNoticesLostRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(f *Fake) error
	}{
		{"KUBE-SERVICES flushed", func(f *Fake) error { return f.FlushChain(TableNAT, chainServices) }},
		{"rule appended to KUBE-SERVICES", func(f *Fake) error {
			return f.EnsureRule(Append, TableNAT, chainServices, "-d", "192.0.2.99/32", "-j", "RETURN")
		}},
		{"canary deleted", func(f *Fake) error { return f.DeleteChain(TableMangle, ChainCanary) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := scaleSnap(5, 2)
			f := NewFake(v1.IPv4Protocol)
			p := NewProxier(f, testOptions())
			mustSync(t, p, snap)
			if need, err := p.Verify(); err != nil || need {
				t.Fatalf("Verify after a clean sync = %v, %v; want false", need, err)
			}
			want := string(f.SaveAll())
			if err := tc.damage(f); err != nil {
				t.Fatal(err)
			}
			if need, err := p.Verify(); err != nil || !need {
				t.Fatalf("Verify after damage = %v, %v; want true", need, err)
			}
			if res := mustSync(t, p, proxiertest.WithChanged(snap)); !res.Full {
				t.Errorf("sync after damage is not full")
			}
			assertSameState(t, string(f.SaveAll()), want)
			if need, err := p.Verify(); err != nil || need {
				t.Errorf("Verify after the repair = %v, %v; want false", need, err)
			}
		})
	}
}
