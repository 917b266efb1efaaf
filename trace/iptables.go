package trace

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/iptables/dump"
	"github.com/svcproxy/svcproxy/iptables/tracer"
)

// IPTables traces packets through an iptables ruleset (iptables mode).
type IPTables struct {
	t     *tracer.Tracer
	local []netip.Addr
}

var _ Tracer = (*IPTables)(nil)

// NewIPTables returns a tracer over iptables-save (or iptables-restore)
// text of the nat, filter and optionally mangle tables, for a node owning
// localAddrs (what `-m addrtype --dst-type LOCAL` matches; loopback is
// always local).
func NewIPTables(save []byte, localAddrs []netip.Addr) (*IPTables, error) {
	d, err := dump.Parse(save)
	if err != nil {
		return nil, fmt.Errorf("parse iptables rules: %w", err)
	}
	if d.Table("nat") == nil && d.Table("filter") == nil {
		return nil, fmt.Errorf("parse iptables rules: no nat or filter table in the input")
	}
	return &IPTables{t: tracer.NewFromDump(d, localAddrs), local: localAddrs}, nil
}

// Trace follows p; see Tracer.
func (x *IPTables) Trace(p Packet) (*Result, error) {
	tr, err := x.t.Trace(tracerPacket(p))
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	r := fromTracer(tr, p)
	r.Mode = "iptables"
	r.Reason = iptablesReason(r, tr, x.isLocal(p.Dst))
	return r, nil
}

func (x *IPTables) isLocal(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() {
		return true
	}
	for _, l := range x.local {
		if l.Unmap() == a {
			return true
		}
	}
	return false
}

func tracerPacket(p Packet) tracer.Packet {
	return tracer.Packet{
		Src: p.Src, SrcPort: p.SrcPort, Dst: p.Dst, DstPort: p.DstPort,
		Protocol: p.Protocol, InInterface: p.InInterface, LocalOrigin: p.Origin == OriginNode,
	}
}

// fromTracer turns the iptables tracer's result into a Result (Mode and
// Reason left to the caller).
func fromTracer(tr *tracer.Result, p Packet) *Result {
	r := &Result{
		SchemaVersion: SchemaVersion,
		Packet:        p,
		Verdict:       tr.Verdict,
		Masquerade:    tr.Masquerade,
		Affinity:      tr.Affinity,
		Endpoints:     []Endpoint{},
		Path:          convertPath(tr.Path),
		Branches:      []Branch{},
		Notes:         append([]string{}, tr.Notes...),
	}
	for _, e := range tr.Endpoints {
		r.Endpoints = append(r.Endpoints, Endpoint{Endpoint: e.Addr.String(), Probability: roundProb(e.Probability), Masquerade: e.Masquerade})
	}
	for _, b := range tr.Branches {
		br := Branch{Verdict: b.Verdict, Probability: roundProb(b.Probability), Masquerade: b.Masquerade}
		if b.Verdict == tracer.DNAT {
			br.Endpoint = b.Destination.String()
		}
		r.Branches = append(r.Branches, br)
	}
	r.Service = serviceOf(r.Path)
	for _, b := range tr.Branches {
		if r.Service == "" {
			r.Service = serviceOf(convertPath(b.Path))
		}
	}
	r.Handled = r.Service != "" || tr.Verdict == tracer.DNAT
	return r
}

func convertPath(path []tracer.Step) []Step {
	out := make([]Step, 0, len(path))
	for _, s := range path {
		out = append(out, Step{Table: s.Table, Chain: s.Chain, Rule: s.RuleIndex, Text: s.Rule, Comment: s.Comment})
	}
	return out
}

// iptablesReason explains the verdict in one sentence.
func iptablesReason(r *Result, tr *tracer.Result, dstLocal bool) string {
	switch r.Verdict {
	case VerdictDNAT:
		return fmt.Sprintf("%s: DNAT to %s", serviceOr(r.Service, "a DNAT rule"), endpointCount(len(r.Endpoints)))
	case VerdictDrop, VerdictReject:
		verb := "dropped"
		if r.Verdict == VerdictReject {
			verb = "rejected"
		}
		return fmt.Sprintf("%s by %s", verb, describeStep(r.Path))
	case VerdictMixed:
		var parts []string
		for _, b := range r.Branches {
			parts = append(parts, fmt.Sprintf("%s %.4g", b.Verdict, b.Probability))
		}
		return fmt.Sprintf("%s: branches end differently (%s)", serviceOr(r.Service, "the rules"), strings.Join(parts, ", "))
	}
	if r.Service != "" {
		return fmt.Sprintf("accepted unchanged by %s", describeStep(r.Path))
	}
	where := "routed on (forwarded)"
	if dstLocal {
		where = "delivered to the node itself"
	}
	if r.Packet.Origin == OriginNode && !dstLocal {
		where = "sent out by the node"
	}
	return "not handled by svcproxy: no Service rule matched; the packet is " + where + " unchanged"
}

func serviceOr(s, alt string) string {
	if s == "" {
		return alt
	}
	return "Service " + s
}

func endpointCount(n int) string {
	if n == 1 {
		return "1 endpoint"
	}
	return fmt.Sprintf("%d endpoints", n)
}

// describeStep names the rule that decided: "nat/KUBE-SERVICES#3 (comment)".
func describeStep(path []Step) string {
	s, ok := decidingStep(path)
	if !ok {
		return "the chain policies"
	}
	id := fmt.Sprintf("%s/%s#%d", s.Table, s.Chain, s.Rule)
	if s.Rule == 0 {
		id = fmt.Sprintf("%s/%s %s", s.Table, s.Chain, s.Text)
	}
	if s.Comment != "" {
		id += fmt.Sprintf(" (%q)", s.Comment)
	}
	return id
}
