package ipvs

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func TestGracefulTermination(t *testing.T) {
	web := vsKey("198.51.100.10:80", v1.ProtocolTCP)
	e1, e2 := ep("203.0.113.1:8080"), ep("203.0.113.2:8080")
	gone := netip.MustParseAddrPort("203.0.113.2:8080")
	opts := DefaultOptions()
	opts.GracePeriod, opts.GraceCheckPeriod = 2*time.Minute, 10*time.Second

	weightOf := func(f *fakeKernel) (int, bool) {
		for vs, rss := range f.ipvs.State() {
			if vs.VSKey != web {
				continue
			}
			for _, rs := range rss {
				if rs.Addr == gone {
					return rs.Weight, true
				}
			}
		}
		return 0, false
	}
	type step struct {
		advance     time.Duration
		conns       int // set before the sync
		snap        bool
		wantPresent bool
		wantWeight  int
		wantCalls   []string
	}
	cases := []struct {
		name  string
		steps []step
	}{{
		name: "deleted once connections are gone",
		steps: []step{
			{conns: 3, wantPresent: true, wantWeight: 0, wantCalls: []string{"UpdateRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=0"}},
			{advance: 5 * time.Second, conns: 3, wantPresent: true, wantCalls: nil},
			{advance: 10 * time.Second, conns: 2, wantPresent: true, wantCalls: []string{"ListRealServers 198.51.100.10:80/TCP"}},
			{advance: 10 * time.Second, conns: 0, wantPresent: false, wantCalls: []string{
				"ListRealServers 198.51.100.10:80/TCP", "DeleteRealServer 198.51.100.10:80/TCP 203.0.113.2:8080"}},
		},
	}, {
		name: "deleted when the grace period ends regardless",
		steps: []step{
			{conns: 5, wantPresent: true},
			{advance: 119 * time.Second, conns: 5, wantPresent: true},
			{advance: time.Second, conns: 5, wantPresent: false},
		},
	}, {
		name: "endpoint that comes back is restored and forgotten",
		steps: []step{
			{conns: 5, wantPresent: true},
			{advance: time.Second, snap: true, wantPresent: true, wantWeight: 1, wantCalls: []string{
				"UpdateRealServer 198.51.100.10:80/TCP 203.0.113.2:8080 weight=1"}},
			{advance: 10 * time.Minute, snap: true, wantPresent: true, wantWeight: 1, wantCalls: nil},
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKernel()
			p := newTestProxier(f, opts)
			mustSync(t, p, webSnap(e1, e2))
			for i, s := range tc.steps {
				f.clock.Step(s.advance)
				f.ipvs.SetConnections(web, gone, s.conns, 0)
				f.reset()
				snap := webSnap(e1)
				if s.snap {
					snap = webSnap(e1, e2)
				}
				mustSync(t, p, snap)
				w, present := weightOf(f)
				if present != s.wantPresent || present && w != s.wantWeight {
					t.Errorf("step %d: present %v weight %d, want %v %d", i, present, w, s.wantPresent, s.wantWeight)
				}
				if s.wantCalls != nil || s.advance > 0 && i > 0 && tc.name == "deleted once connections are gone" {
					eq(t, "step calls", f.ipvs.Calls(), s.wantCalls)
				}
			}
			if p.LastSync().Terminating != 0 && !tc.steps[len(tc.steps)-1].wantPresent {
				t.Errorf("still terminating: %d", p.LastSync().Terminating)
			}
		})
	}
}
