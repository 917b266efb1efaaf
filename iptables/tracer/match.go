package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// match returns the probability that r matches b: 0 or 1, or in between for
// -m statistic. Every match of a rule must hold, so a rule is skipped as
// soon as one supported match fails; a module the tracer cannot evaluate is
// an error only when the rest of the rule would have matched.
func (t *Tracer) match(table string, r *dump.Rule, b *branch) (float64, error) {
	for _, o := range r.Basic() {
		ok, err := t.matchBasic(o, b)
		if err != nil {
			return 0, err
		}
		if ok == o.Negated {
			return 0, nil
		}
	}
	p := 1.0
	affinity := false
	var unsupported error
	for _, m := range r.Matches() {
		var mp float64
		var err error
		if m.Module == "recent" {
			// Evaluated last: whether it "may match" only matters if the
			// rest of the rule matches.
			affinity, err = recentChecks(m)
			mp = 1
		} else {
			mp, err = t.matchModule(m, b)
		}
		if err != nil {
			if unsupported == nil {
				unsupported = err
			}
			continue
		}
		if mp == 0 {
			return 0, nil
		}
		p *= mp
	}
	if unsupported != nil {
		return 0, unsupported
	}
	if affinity {
		// Only a client seen before matches; trace a new one, and say so.
		b.affinity = true
		b.notes = appendUnique(b.notes, fmt.Sprintf("%s: a client with affinity (recent --name %s) goes to %s", r.Chain, recentName(r), r.Target()))
		return 0, nil
	}
	return p, nil
}

func (t *Tracer) matchBasic(o dump.Option, b *branch) (bool, error) {
	v := o.Value()
	switch o.Name {
	case "-s":
		return inPrefix(b.pkt.Src, v)
	case "-d":
		return inPrefix(b.pkt.Dst, v)
	case "-p":
		return v == "all" || v == "0" || strings.EqualFold(v, b.pkt.Protocol) || v == protoNumber[b.pkt.Protocol], nil
	case "-i":
		if b.pkt.LocalOrigin {
			return false, nil
		}
		return ifaceMatch(v, b.pkt.InInterface), nil
	case "-o":
		if b.pkt.OutInterface == "" {
			return false, fmt.Errorf("rule matches -o %s: set the packet's OutInterface", v)
		}
		return ifaceMatch(v, b.pkt.OutInterface), nil
	}
	return false, fmt.Errorf("unsupported option %s", o.Name)
}

var protoNumber = map[string]string{"tcp": "6", "udp": "17", "sctp": "132"}

func inPrefix(a netip.Addr, s string) (bool, error) {
	a = a.Unmap()
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return false, fmt.Errorf("bad prefix %q: %w", s, err)
		}
		return p.Contains(a), nil
	}
	x, err := netip.ParseAddr(s)
	if err != nil {
		return false, fmt.Errorf("bad address %q: %w", s, err)
	}
	return x.Unmap() == a, nil
}

// ifaceMatch follows iptables: a trailing "+" matches any suffix.
func ifaceMatch(pattern, iface string) bool {
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(iface, p)
	}
	return pattern == iface
}

// matchModule evaluates one -m module; an error means the tracer cannot
// tell whether it matches.
func (t *Tracer) matchModule(m dump.Match, b *branch) (float64, error) {
	p := 1.0
	for _, o := range m.Options {
		op, err := t.matchOption(m.Module, o, b)
		if err != nil {
			return 0, err
		}
		p *= op
		if p == 0 {
			return 0, nil
		}
	}
	return p, nil
}

func boolProb(ok, negated bool) float64 {
	if ok != negated {
		return 1
	}
	return 0
}

func (t *Tracer) matchOption(module string, o dump.Option, b *branch) (float64, error) {
	unsupported := func() (float64, error) {
		return 0, fmt.Errorf("unsupported option %s of match module %q", o.Name, module)
	}
	v := o.Value()
	switch module {
	case "comment", "nfacct":
		return 1, nil // explanations and counters: they always match
	case "tcp", "udp", "sctp":
		if module != b.pkt.Protocol {
			return 0, nil
		}
		switch o.Name {
		case "--dport", "--destination-port":
			ok, err := portMatch(v, b.pkt.DstPort)
			return boolProb(ok, o.Negated), err
		case "--sport", "--source-port":
			ok, err := portMatch(v, b.pkt.SrcPort)
			return boolProb(ok, o.Negated), err
		}
		return unsupported()
	case "multiport":
		var port uint16
		switch o.Name {
		case "--dports", "--destination-ports":
			port = b.pkt.DstPort
		case "--sports", "--source-ports":
			port = b.pkt.SrcPort
		default:
			return unsupported()
		}
		for _, pr := range strings.Split(v, ",") {
			ok, err := portMatch(pr, port)
			if err != nil {
				return 0, err
			}
			if ok {
				return boolProb(true, o.Negated), nil
			}
		}
		return boolProb(false, o.Negated), nil
	case "addrtype":
		addr := b.pkt.Dst
		switch o.Name {
		case "--dst-type":
		case "--src-type":
			addr = b.pkt.Src
		default:
			return unsupported()
		}
		if v != "LOCAL" {
			return 0, fmt.Errorf("addrtype type %s is not supported (only LOCAL)", v)
		}
		return boolProb(t.isLocal(addr), o.Negated), nil
	case "mark":
		if o.Name != "--mark" {
			return unsupported()
		}
		val, mask, err := parseMark(v)
		if err != nil {
			return 0, err
		}
		return boolProb(b.mark&mask == val, o.Negated), nil
	case "conntrack":
		if o.Name != "--ctstate" {
			return unsupported()
		}
		return boolProb(ctStateMatch(v, b), o.Negated), nil
	case "statistic":
		return statistic(o)
	case "set":
		return 0, fmt.Errorf("match module \"set\" (ipset %s) is not supported by the iptables tracer; ipset-based rules need the IPVS tracer", v)
	}
	return 0, fmt.Errorf("unsupported match module %q", module)
}

// portMatch matches "port" or "first:last" (either end may be empty).
func portMatch(spec string, port uint16) (bool, error) {
	lo, hi, isRange := strings.Cut(spec, ":")
	if !isRange {
		hi = lo
	}
	parse := func(s string, def uint64) (uint64, error) {
		if s == "" {
			return def, nil
		}
		return strconv.ParseUint(s, 10, 16)
	}
	l, err := parse(lo, 0)
	if err != nil {
		return false, fmt.Errorf("bad port %q", spec)
	}
	h, err := parse(hi, 65535)
	if err != nil {
		return false, fmt.Errorf("bad port %q", spec)
	}
	return uint64(port) >= l && uint64(port) <= h, nil
}

// ctStateMatch treats the packet as p.CTState (NEW by default), plus DNAT
// once a DNAT rule has rewritten it.
func ctStateMatch(list string, b *branch) bool {
	state := b.pkt.CTState
	if state == "" {
		state = "NEW"
	}
	for _, s := range strings.Split(list, ",") {
		if s == state || (s == "DNAT" && b.dnat) {
			return true
		}
	}
	return false
}

func statistic(o dump.Option) (float64, error) {
	switch o.Name {
	case "--mode":
		if o.Value() != "random" {
			return 0, fmt.Errorf("statistic --mode %s is not supported (only random)", o.Value())
		}
		return 1, nil
	case "--probability":
		p, err := strconv.ParseFloat(o.Value(), 64)
		if err != nil || p < 0 || p > 1 {
			return 0, fmt.Errorf("bad statistic --probability %q", o.Value())
		}
		if o.Negated {
			p = 1 - p
		}
		return p, nil
	}
	return 0, fmt.Errorf("unsupported option %s of match module \"statistic\"", o.Name)
}

// recentChecks reads a -m recent match used for session affinity. --set
// always matches (it records the client). --rcheck/--update match only
// clients seen before, which a trace cannot know: the caller reports that
// affinity applies and follows a new client, so the probabilities stay
// those of the load-balancing rules.
func recentChecks(m dump.Match) (bool, error) {
	checks := false
	for _, o := range m.Options {
		switch o.Name {
		case "--name", "--seconds", "--reap", "--rsource", "--rdest", "--mask", "--hitcount", "--rttl", "--set":
		case "--rcheck", "--update":
			if o.Negated {
				return false, fmt.Errorf("recent ! %s is not supported", o.Name)
			}
			checks = true
		default:
			return false, fmt.Errorf("unsupported option %s of match module \"recent\"", o.Name)
		}
	}
	return checks, nil
}

func recentName(r *dump.Rule) string {
	if n, ok := r.MatchOption("recent", "--name"); ok {
		return n.Value()
	}
	return "DEFAULT"
}
