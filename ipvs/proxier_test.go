package ipvs

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/sysctl"
)

func TestSyncFullResyncPeriodRereadsKernel(t *testing.T) {
	f := newFakeKernel()
	opts := DefaultOptions()
	opts.FullResyncPeriod = time.Minute
	p := newTestProxier(f, opts)
	snap := webSnap(ep("203.0.113.1:8080"))
	mustSync(t, p, snap)
	// Someone deletes our virtual server behind our back.
	f.ipvs.DeleteVirtualServer(vsKey("198.51.100.10:80", v1.ProtocolTCP))
	f.reset()
	if res := mustSync(t, p, snap); res.KernelCalls != 0 {
		t.Fatalf("partial sync made %d calls", res.KernelCalls)
	}
	f.clock.Step(time.Minute)
	f.reset()
	res := mustSync(t, p, snap)
	if !res.Full || len(f.ipvs.State()) != 1 {
		t.Errorf("full resync did not repair: full %v state %v", res.Full, f.ipvs.State())
	}
	if res.Rules["virtualServers"] != 1 || res.Rules["realServers"] != 1 || res.Rules["addresses"] != 1 {
		t.Errorf("rules %v", res.Rules)
	}
}

func TestVerifyNoticesVirtualServerDrift(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drift func(f *fakeKernel)
		want  bool
	}{
		{"nothing changed", func(*fakeKernel) {}, false},
		{"virtual server deleted", func(f *fakeKernel) {
			f.ipvs.DeleteVirtualServer(vsKey("198.51.100.10:80", v1.ProtocolTCP))
		}, true},
		{"virtual server added", func(f *fakeKernel) {
			f.ipvs.AddVirtualServer(VirtualServer{VSKey: vsKey("198.51.100.99:80", v1.ProtocolTCP), Scheduler: "rr"})
		}, true},
		{"scheduler changed", func(f *fakeKernel) {
			f.ipvs.UpdateVirtualServer(VirtualServer{VSKey: vsKey("198.51.100.10:80", v1.ProtocolTCP), Scheduler: "wlc"})
		}, true},
		{"another family's or an excluded server added", func(f *fakeKernel) {
			f.ipvs.AddVirtualServer(VirtualServer{VSKey: vsKey("[2001:db8::1]:80", v1.ProtocolTCP), Scheduler: "rr"})
		}, false},
		{"nat KUBE-SERVICES flushed", func(f *fakeKernel) {
			if err := f.ipt.FlushChain(iptables.TableNAT, ChainServices); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKernel()
			p := newTestProxier(f, DefaultOptions())
			// Before the first sync a full one is due anyway.
			if need, err := p.Verify(); !need || err != nil {
				t.Fatalf("Verify before the first sync: %v, %v", need, err)
			}
			snap := webSnap(ep("203.0.113.1:8080"))
			mustSync(t, p, snap)
			tc.drift(f)
			f.reset()
			drifted, err := p.Verify()
			if err != nil || drifted != tc.want {
				t.Fatalf("Verify = %v, %v; want %v", drifted, err, tc.want)
			}
			if calls := f.ipvs.Calls(); len(calls) != 1 {
				t.Errorf("Verify made calls %v, want one list", calls)
			}
			// The sync Verify asks for repairs the kernel, without waiting for the period.
			res := mustSync(t, p, snap)
			if res.Full != tc.want {
				t.Errorf("sync after Verify: full %v, want %v", res.Full, tc.want)
			}
			if got := f.ipvs.State(); len(got) != 1 && tc.want {
				t.Errorf("after the resync the kernel holds %v", got)
			}
			if n, _ := f.ipt.CountRules(iptables.TableNAT, ChainServices); n == 0 {
				t.Errorf("nat %s is empty after the resync", ChainServices)
			}
			if drifted, err := p.Verify(); drifted || err != nil {
				t.Errorf("Verify after the resync: %v, %v", drifted, err)
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	f := newFakeKernel()
	p := newTestProxier(f, DefaultOptions())
	mustSync(t, p, snapshot(svc("ns/web", clusterIP("198.51.100.10"), nodePort(30080)), ep("203.0.113.1:8080")))
	f.ipvs.AddVirtualServer(VirtualServer{VSKey: vsKey("192.0.2.200:80", v1.ProtocolTCP), Scheduler: "rr"})
	opts := DefaultOptions()
	opts.ExcludeCIDRs = parsePrefixes("192.0.2.200/32")
	for i := range 2 { // idempotent
		if err := Cleanup(f.kernel(), opts); err != nil {
			t.Fatalf("cleanup %d: %v", i, err)
		}
	}
	if st := f.ipvs.State(); len(st) != 1 {
		t.Errorf("virtual servers left: %v", st)
	}
	if f.links.HasLink(DummyDevice) || len(f.ipsets.Names()) != 0 {
		t.Errorf("link %v, ipsets %v", f.links.HasLink(DummyDevice), f.ipsets.Names())
	}
	for _, table := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
		if d := f.ipt.Dump(table); strings.Contains(d, "KUBE-") {
			t.Errorf("%s still has KUBE- rules:\n%s", table, d)
		}
	}
}

func TestSetup(t *testing.T) {
	keys := map[string]string{}
	for _, k := range []string{"net/ipv4/vs/conntrack", "net/ipv4/vs/expire_nodest_conn", "net/ipv4/vs/expire_quiescent_template",
		"net/ipv4/ip_forward", "net/ipv4/conf/all/arp_ignore", "net/ipv4/conf/all/arp_announce"} {
		keys[k] = "0"
	}
	for _, tc := range []struct {
		name   string
		opts   func(*Options)
		writes []string
		ipvs   []string
	}{
		{"defaults", func(*Options) {}, []string{"net/ipv4/vs/conntrack=1", "net/ipv4/vs/expire_nodest_conn=1",
			"net/ipv4/vs/expire_quiescent_template=1", "net/ipv4/ip_forward=1"}, nil},
		{"strict ARP and timeouts", func(o *Options) { o.StrictARP = true; o.TCPTimeout = 900 * time.Second; o.UDPTimeout = time.Minute },
			[]string{"net/ipv4/vs/conntrack=1", "net/ipv4/vs/expire_nodest_conn=1", "net/ipv4/vs/expire_quiescent_template=1",
				"net/ipv4/ip_forward=1", "net/ipv4/conf/all/arp_ignore=1", "net/ipv4/conf/all/arp_announce=2"},
			[]string{"SetTimeouts 15m0s 0s 1m0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sysctl.NewFake(keys)
			k := NewFakeIPVS()
			opts := DefaultOptions()
			tc.opts(&opts)
			if err := Setup(k, s, opts); err != nil {
				t.Fatal(err)
			}
			eq(t, "sysctl writes", s.Writes(), tc.writes)
			eq(t, "ipvs calls", k.Calls(), tc.ipvs)
		})
	}
	t.Run("missing ip_vs sysctls are an error", func(t *testing.T) {
		if err := Setup(NewFakeIPVS(), sysctl.NewFake(nil), DefaultOptions()); err == nil {
			t.Error("no error")
		}
	})
}
