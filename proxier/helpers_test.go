package proxier

import (
	"net/netip"

	"k8s.io/apimachinery/pkg/util/sets"
)

type epOpt func(*Endpoint)

// testEP builds a ready, serving, remote endpoint from "ip:port".
func testEP(addr string, opts ...epOpt) *Endpoint {
	ap := netip.MustParseAddrPort(addr)
	ep := &Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true, NodeName: "node2"}
	for _, o := range opts {
		o(ep)
	}
	return ep
}

func local(e *Endpoint) { e.IsLocal, e.NodeName = true, "node1" }

func notReady(e *Endpoint) { e.Ready, e.Serving = false, false }

// servingTerminating is a pod shutting down that still passes its probe.
func servingTerminating(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }

// deadTerminating is a pod shutting down that no longer passes its probe.
func deadTerminating(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true }

func zoneHints(z ...string) epOpt { return func(e *Endpoint) { e.ZoneHints = sets.New(z...) } }

func nodeHints(n ...string) epOpt { return func(e *Endpoint) { e.NodeHints = sets.New(n...) } }

func epStrings(eps []*Endpoint) []string {
	if eps == nil {
		return nil
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}
