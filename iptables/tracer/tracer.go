// Package tracer follows a packet through an iptables ruleset the way the
// kernel would for the first packet of a connection, so rule tests (and the
// `svcproxy trace` command) can say "this packet reaches these endpoints"
// instead of comparing rule text. It reads iptables-save text of the nat,
// filter and (if present) mangle tables; it does no I/O.
//
// Probabilistic rules (-m statistic --mode random) fork the trace: both
// branches are followed with their weights, so a Service's endpoints come
// out with the probabilities kube-proxy intends. Anything the tracer cannot
// evaluate exactly (an unknown match module, an ipset, an unknown target)
// is an error naming it, never a guess.
package tracer

import (
	"fmt"
	"net/netip"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// Packet is the first packet of a connection.
type Packet struct {
	Src      netip.Addr
	SrcPort  uint16
	Dst      netip.Addr
	DstPort  uint16
	Protocol string // tcp, udp or sctp
	// InInterface is the interface an incoming packet arrived on; ignored
	// when LocalOrigin is set.
	InInterface string
	// OutInterface is the interface the packet leaves by. It is only needed
	// when a rule the packet meets has -o; then an empty value is an error.
	OutInterface string
	// LocalOrigin marks a packet sent by a process on the node: it takes
	// nat and filter OUTPUT instead of PREROUTING.
	LocalOrigin bool
	Mark        uint32
	// CTState is the conntrack state, "NEW" when empty.
	CTState string
}

// Destination is where some of the traffic goes after DNAT.
type Destination struct {
	Addr        netip.AddrPort
	Probability float64
	Masquerade  bool
}

// Step is one rule a packet matched (or a policy that decided).
type Step struct {
	Table     string
	Chain     string
	RuleIndex int // 1-based, as iptables -L --line-numbers; 0 for a policy
	Rule      string
	Comment   string
}

func (s Step) String() string {
	if s.RuleIndex == 0 {
		return fmt.Sprintf("%s/%s %s", s.Table, s.Chain, s.Rule)
	}
	return fmt.Sprintf("%s/%s#%d %s", s.Table, s.Chain, s.RuleIndex, s.Rule)
}

// Branch is one way a probabilistic trace went.
type Branch struct {
	Verdict     string // ACCEPT, DROP, REJECT or DNAT
	Probability float64
	Destination netip.AddrPort // valid only when Verdict is DNAT
	Masquerade  bool
	Affinity    bool
	Path        []Step
}

// Verdicts of a trace. Mixed means branches of a fork disagree.
const (
	Accept = "ACCEPT"
	Drop   = "DROP"
	Reject = "REJECT"
	DNAT   = "DNAT"
	Mixed  = "MIXED"
)

// Result is what became of a packet.
type Result struct {
	// Verdict is DNAT when the packet was rewritten and then accepted,
	// ACCEPT when it was accepted unchanged, DROP or REJECT, or MIXED when
	// branches of a fork disagree (see Branches).
	Verdict string
	// Endpoints are the DNAT destinations with their probabilities, in the
	// order the rules list them; for a Service they sum to 1.
	Endpoints []Destination
	// Masquerade is true if any accepted branch is masqueraded.
	Masquerade bool
	// Affinity is true if the packet met a session-affinity (-m recent
	// --rcheck/--update) rule: a returning client may be pinned to that
	// endpoint; probabilities describe a client without affinity.
	Affinity bool
	// Path is the first branch's steps; Branches holds every branch's.
	Path     []Step
	Branches []Branch
	// Notes explain approximations, such as affinity rules not taken.
	Notes []string
}

// Tracer holds a parsed ruleset and the node's local addresses.
type Tracer struct {
	d     *dump.Dump
	local map[netip.Addr]bool
}

// New parses iptables-save text (several tables concatenated) and returns
// a tracer for a node that owns localAddrs. Loopback addresses are always
// local.
func New(save []byte, localAddrs []netip.Addr) (*Tracer, error) {
	d, err := dump.Parse(save)
	if err != nil {
		return nil, fmt.Errorf("parse ruleset: %w", err)
	}
	return NewFromDump(d, localAddrs), nil
}

// NewFromDump returns a tracer over an already parsed ruleset, which it
// does not modify.
func NewFromDump(d *dump.Dump, localAddrs []netip.Addr) *Tracer {
	t := &Tracer{d: d, local: map[netip.Addr]bool{}}
	for _, a := range localAddrs {
		t.local[a.Unmap()] = true
	}
	return t
}

// Trace parses save and traces one packet; see Tracer.Trace.
func Trace(save []byte, localAddrs []netip.Addr, p Packet) (*Result, error) {
	t, err := New(save, localAddrs)
	if err != nil {
		return nil, err
	}
	return t.Trace(p)
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || t.local[a]
}

// hook is one (table, built-in chain) traversal.
type hook struct{ table, chain string }

// Trace follows p through the hooks a first packet takes: for an incoming
// packet mangle/nat PREROUTING, then (by the destination after DNAT)
// mangle/filter/nat INPUT or mangle/filter FORWARD and mangle/nat
// POSTROUTING; for a local packet mangle/nat/filter OUTPUT, mangle/nat
// POSTROUTING and, if it is addressed to the node itself, filter INPUT.
func (t *Tracer) Trace(p Packet) (*Result, error) {
	if err := validate(p); err != nil {
		return nil, err
	}
	first, second := []hook{{"mangle", "PREROUTING"}, {"nat", "PREROUTING"}}, t.incomingHooks
	if p.LocalOrigin {
		first = []hook{{"mangle", "OUTPUT"}, {"nat", "OUTPUT"}, {"filter", "OUTPUT"}, {"mangle", "POSTROUTING"}, {"nat", "POSTROUTING"}}
		second = t.outgoingHooks
	}
	routed, err := t.runHooks([]*branch{{pkt: p, mark: p.Mark, prob: 1}}, first...)
	if err != nil {
		return nil, err
	}
	// Route each branch by its destination after DNAT, keeping rule order.
	var branches []*branch
	for _, b := range routed {
		out, err := t.runHooks([]*branch{b}, second(b)...)
		if err != nil {
			return nil, err
		}
		branches = append(branches, out...)
	}
	return summarize(branches), nil
}

// incomingHooks are the hooks after PREROUTING's routing decision.
func (t *Tracer) incomingHooks(b *branch) []hook {
	if b.final != "" {
		return nil
	}
	if t.isLocal(b.pkt.Dst) {
		return []hook{{"mangle", "INPUT"}, {"filter", "INPUT"}, {"nat", "INPUT"}}
	}
	return []hook{{"mangle", "FORWARD"}, {"filter", "FORWARD"}, {"mangle", "POSTROUTING"}, {"nat", "POSTROUTING"}}
}

// outgoingHooks are the hooks after POSTROUTING for a local packet: one
// addressed to the node loops back through INPUT.
func (t *Tracer) outgoingHooks(b *branch) []hook {
	if b.final != "" || !t.isLocal(b.pkt.Dst) {
		return nil
	}
	return []hook{{"mangle", "INPUT"}, {"filter", "INPUT"}}
}

func validate(p Packet) error {
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return fmt.Errorf("packet needs a source and a destination address")
	}
	if p.Src.Unmap().Is4() != p.Dst.Unmap().Is4() {
		return fmt.Errorf("source %s and destination %s are of different IP families", p.Src, p.Dst)
	}
	switch p.Protocol {
	case "tcp", "udp", "sctp":
	default:
		return fmt.Errorf("protocol %q: want tcp, udp or sctp", p.Protocol)
	}
	return nil
}

// runHooks runs each hook in turn over the branches still alive.
func (t *Tracer) runHooks(bs []*branch, hooks ...hook) ([]*branch, error) {
	for _, h := range hooks {
		var next []*branch
		for _, b := range bs {
			if b.final != "" {
				next = append(next, b)
				continue
			}
			out, err := t.runBuiltin(h.table, h.chain, b)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", h.table, h.chain, err)
			}
			next = append(next, out...)
		}
		bs = next
	}
	return bs, nil
}

func summarize(bs []*branch) *Result {
	r := &Result{}
	index := map[netip.AddrPort]int{}
	for i, b := range bs {
		v := b.final
		if v == "" {
			v = Accept
			if b.dnat {
				v = DNAT
			}
		}
		br := Branch{Verdict: v, Probability: b.prob, Masquerade: b.masq, Affinity: b.affinity, Path: b.path}
		if v == DNAT {
			br.Destination = netip.AddrPortFrom(b.pkt.Dst, b.pkt.DstPort)
			if j, ok := index[br.Destination]; ok {
				r.Endpoints[j].Probability += b.prob
				r.Endpoints[j].Masquerade = r.Endpoints[j].Masquerade || b.masq
			} else {
				index[br.Destination] = len(r.Endpoints)
				r.Endpoints = append(r.Endpoints, Destination{Addr: br.Destination, Probability: b.prob, Masquerade: b.masq})
			}
		}
		if i == 0 {
			r.Verdict, r.Path = v, b.path
		} else if r.Verdict != v {
			r.Verdict = Mixed
		}
		if b.final == "" && b.masq {
			r.Masquerade = true
		}
		r.Affinity = r.Affinity || b.affinity
		r.Notes = appendUnique(r.Notes, b.notes...)
		r.Branches = append(r.Branches, br)
	}
	return r
}

func appendUnique(list []string, add ...string) []string {
	for _, a := range add {
		dup := false
		for _, l := range list {
			dup = dup || l == a
		}
		if !dup {
			list = append(list, a)
		}
	}
	return list
}
