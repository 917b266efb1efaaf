package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// branch is one weighted copy of the packet being traced.
type branch struct {
	pkt      Packet // Dst/DstPort follow DNAT
	mark     uint32
	prob     float64
	dnat     bool
	masq     bool
	affinity bool
	final    string // DROP or REJECT once the packet is gone
	path     []Step
	notes    []string
}

// fork returns a copy of b carrying weight w of it.
func (b *branch) fork(w float64) *branch {
	n := *b
	n.prob = b.prob * w
	n.path = append([]Step(nil), b.path...)
	n.notes = append([]string(nil), b.notes...)
	return &n
}

func (b *branch) step(table, chain string, idx int, r *dump.Rule) {
	b.path = append(b.path, Step{Table: table, Chain: chain, RuleIndex: idx, Rule: r.String(), Comment: r.Comment()})
}

// outcome kinds of running a chain.
const (
	kindReturn = iota // fell off the end or RETURN: the caller continues
	kindAccept        // ACCEPT or a terminating NAT target: the hook is done
	kindFinal         // DROP or REJECT: the packet is gone
)

type outcome struct {
	b    *branch
	kind int
}

// maxDepth bounds chain nesting; the kernel refuses loops, so only a
// malformed ruleset gets here.
const maxDepth = 64

// runBuiltin traverses one hook's built-in chain and applies its policy to
// branches that fall off its end. A table or chain absent from the ruleset
// is treated as empty with policy ACCEPT.
func (t *Tracer) runBuiltin(table, chain string, b *branch) ([]*branch, error) {
	c := t.d.Chain(table, chain)
	if c == nil {
		return []*branch{b}, nil
	}
	outs, err := t.runChain(table, c, b, 0, 0)
	if err != nil {
		return nil, err
	}
	var res []*branch
	for _, o := range outs {
		if o.kind == kindReturn && c.Policy == "DROP" {
			o.b.final = Drop
			o.b.path = append(o.b.path, Step{Table: table, Chain: chain, Rule: "policy DROP"})
		}
		res = append(res, o.b)
	}
	return res, nil
}

// runChain evaluates c's rules from index from for branch b. A rule that
// matches with probability p < 1 forks b: the taken part goes through the
// rule's target, the rest continues with the next rule.
func (t *Tracer) runChain(table string, c *dump.Chain, b *branch, from, depth int) ([]outcome, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("chain %s nested deeper than %d", c.Name, maxDepth)
	}
	for i := from; i < len(c.Rules); i++ {
		r := c.Rules[i]
		p, err := t.match(table, r, b)
		if err != nil {
			return nil, fmt.Errorf("chain %s rule %d (%s): %w", c.Name, i+1, r.String(), err)
		}
		if p <= 0 {
			continue
		}
		taken, rest := b, (*branch)(nil)
		if p < 1 {
			taken, rest = b.fork(p), b.fork(1-p)
		}
		outs, err := t.applyRule(table, c, i, taken, depth)
		if err != nil {
			return nil, err
		}
		if rest != nil {
			more, err := t.runChain(table, c, rest, i+1, depth)
			if err != nil {
				return nil, err
			}
			outs = append(outs, more...)
		}
		return outs, nil
	}
	return []outcome{{b: b, kind: kindReturn}}, nil
}

// applyRule runs the target of matched rule i of c, then continues the
// chain for branches the target did not finish.
func (t *Tracer) applyRule(table string, c *dump.Chain, i int, b *branch, depth int) ([]outcome, error) {
	r := c.Rules[i]
	b.step(table, c.Name, i+1, r)
	target := r.Target()
	cont := func(bs ...*branch) ([]outcome, error) {
		var outs []outcome
		for _, nb := range bs {
			more, err := t.runChain(table, c, nb, i+1, depth)
			if err != nil {
				return nil, err
			}
			outs = append(outs, more...)
		}
		return outs, nil
	}
	switch target {
	case "":
		return cont(b)
	case "RETURN":
		return []outcome{{b: b, kind: kindReturn}}, nil
	case "ACCEPT":
		return []outcome{{b: b, kind: kindAccept}}, nil
	case "DROP", "REJECT":
		b.final = target
		return []outcome{{b: b, kind: kindFinal}}, nil
	case "DNAT":
		if err := dnat(r, b); err != nil {
			return nil, fmt.Errorf("chain %s rule %d: %w", c.Name, i+1, err)
		}
		return []outcome{{b: b, kind: kindAccept}}, nil
	case "MASQUERADE":
		b.masq = true
		return []outcome{{b: b, kind: kindAccept}}, nil
	case "MARK":
		if err := setMark(r, b); err != nil {
			return nil, fmt.Errorf("chain %s rule %d: %w", c.Name, i+1, err)
		}
		return cont(b)
	case "LOG", "NFLOG", "TRACE":
		return cont(b)
	}
	if !dump.IsChainTarget(target) {
		return nil, fmt.Errorf("chain %s rule %d: unsupported target %s", c.Name, i+1, target)
	}
	sub := t.d.Chain(table, target)
	if sub == nil {
		return nil, fmt.Errorf("chain %s rule %d: jump to missing chain %s", c.Name, i+1, target)
	}
	outs, err := t.runChain(table, sub, b, 0, depth+1)
	if err != nil {
		return nil, err
	}
	var res []outcome
	for _, o := range outs {
		switch {
		case o.kind != kindReturn:
			res = append(res, o)
		case r.Goto():
			// -g: returning from the target returns from this chain too.
			res = append(res, o)
		default:
			more, err := cont(o.b)
			if err != nil {
				return nil, err
			}
			res = append(res, more...)
		}
	}
	return res, nil
}

// dnat rewrites the destination from --to-destination addr[:port].
func dnat(r *dump.Rule, b *branch) error {
	to, ok := r.TargetOption("--to-destination")
	if !ok {
		return fmt.Errorf("DNAT without --to-destination")
	}
	if strings.ContainsAny(to, "-") {
		return fmt.Errorf("DNAT range %q is not supported", to)
	}
	if ap, err := netip.ParseAddrPort(to); err == nil {
		b.pkt.Dst, b.pkt.DstPort = ap.Addr(), ap.Port()
	} else if a, err := netip.ParseAddr(strings.Trim(to, "[]")); err == nil {
		b.pkt.Dst = a
	} else {
		return fmt.Errorf("DNAT --to-destination %q: not an address[:port]", to)
	}
	if b.pkt.Dst.Unmap().Is4() != b.pkt.Src.Unmap().Is4() {
		return fmt.Errorf("DNAT to %s changes the IP family", to)
	}
	b.dnat = true
	return nil
}

// setMark applies the MARK target's options to the packet mark.
func setMark(r *dump.Rule, b *branch) error {
	opts := r.TargetOptions()
	if len(opts) != 1 {
		return fmt.Errorf("MARK wants one option, got %d", len(opts))
	}
	v, m, err := parseMark(opts[0].Value())
	if err != nil {
		return fmt.Errorf("MARK %s: %w", opts[0].Name, err)
	}
	switch opts[0].Name {
	case "--or-mark":
		b.mark |= v
	case "--xor-mark":
		b.mark ^= v
	case "--and-mark":
		b.mark &= v
	case "--set-xmark":
		b.mark = (b.mark &^ m) ^ v
	case "--set-mark":
		b.mark = (b.mark &^ m) | v
	default:
		return fmt.Errorf("MARK option %s is not supported", opts[0].Name)
	}
	return nil
}

// parseMark reads "value[/mask]"; the mask defaults to all ones.
func parseMark(s string) (value, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("mark %q: %w", s, err)
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("mark mask %q: %w", s, err)
		}
	}
	return uint32(v), uint32(m), nil
}
