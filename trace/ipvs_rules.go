package trace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// expandIPVSRules rewrites IPVS mode's iptables rules into ones the
// iptables tracer evaluates exactly:
//   - a rule with `-m set --match-set NAME FLAGS` becomes one rule per
//     member of the set, matching the member's address, protocol, port or
//     network directly (a set with no member: the rule goes). Every such
//     rule either ends the chain or sets a mark, so "the first member that
//     matches" is the set match;
//   - `-m ipvs --vaddr A --vproto P --vport N` (the packet was handled by
//     that virtual server) becomes `-d A -p P --dport N`: the tracer sees
//     the packet before IPVS rewrites it;
//   - `-m physdev ! --physdev-is-in` always matches: the tracer assumes
//     packets do not come from a bridge port (see README).
func expandIPVSRules(d *dump.Dump, sets map[string][]string) error {
	for _, t := range d.Tables {
		for _, c := range t.Chains {
			var out []*dump.Rule
			for _, r := range c.Rules {
				rules, err := expandRule(r, sets)
				if err != nil {
					return fmt.Errorf("%s/%s: %s: %w", t.Name, c.Name, r.String(), err)
				}
				out = append(out, rules...)
			}
			c.Rules = out
		}
	}
	return nil
}

// expandRule returns the set-free rules equivalent to r.
func expandRule(r *dump.Rule, sets map[string][]string) ([]*dump.Rule, error) {
	args := r.Args
	variants := [][]string{nil}
	for i := 0; i < len(args); i++ {
		if args[i] != "-m" || i+1 >= len(args) {
			for v := range variants {
				variants[v] = append(variants[v], args[i])
			}
			continue
		}
		module := args[i+1]
		end := moduleEnd(args, i+2)
		opts := args[i+2 : end]
		switch module {
		case "set":
			var next [][]string
			for _, m := range setMatches(opts, sets) {
				if m.err != nil {
					return nil, m.err
				}
				for _, v := range variants {
					next = append(next, append(append([]string(nil), v...), m.args...))
				}
			}
			variants = next
		case "ipvs":
			repl, err := ipvsMatch(opts)
			if err != nil {
				return nil, err
			}
			for v := range variants {
				variants[v] = append(variants[v], repl...)
			}
		case "physdev":
			if len(opts) != 2 || opts[0] != "!" || opts[1] != "--physdev-is-in" {
				return nil, fmt.Errorf("physdev match %q is not supported (only ! --physdev-is-in)", strings.Join(opts, " "))
			}
		default:
			for v := range variants {
				variants[v] = append(variants[v], args[i:end]...)
			}
		}
		i = end - 1
	}
	out := make([]*dump.Rule, 0, len(variants))
	for _, v := range variants {
		v, ok := settleProtocol(v)
		if !ok {
			continue
		}
		nr, err := dump.NewRule(r.Chain, v)
		if err != nil {
			return nil, fmt.Errorf("expanded rule %q: %w", dump.JoinArgs(v), err)
		}
		out = append(out, nr)
	}
	return out, nil
}

// moduleEnd returns the index after a match's options: the next "-m",
// "-j", "-g" or basic option.
func moduleEnd(args []string, from int) int {
	for i := from; i < len(args); i++ {
		a := args[i]
		if a == "!" && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			return i
		}
		switch a {
		case "-m", "-j", "-g", "-s", "-d", "-p", "-i", "-o", "--jump", "--goto", "--match":
			return i
		}
	}
	return len(args)
}

type setMatch struct {
	args []string
	err  error
}

// setMatches returns, per member of the set named in opts, the options
// that match it (none for an empty set).
func setMatches(opts []string, sets map[string][]string) []setMatch {
	if len(opts) < 3 || opts[0] != "--match-set" {
		return []setMatch{{err: fmt.Errorf("set match %q is not supported (only --match-set NAME FLAGS)", strings.Join(opts, " "))}}
	}
	name, flags := opts[1], strings.Split(opts[2], ",")
	if len(opts) > 3 {
		return []setMatch{{err: fmt.Errorf("set match options %q are not supported", strings.Join(opts[3:], " "))}}
	}
	members, ok := sets[name]
	if !ok {
		return []setMatch{{err: fmt.Errorf("ipset %s does not exist", name)}}
	}
	var out []setMatch
	for _, m := range members {
		args, err := memberArgs(m, flags)
		if err != nil {
			err = fmt.Errorf("ipset %s member %q: %w", name, m, err)
		}
		out = append(out, setMatch{args: args, err: err})
	}
	return out
}

// memberArgs turns a member ("ip", "ip,proto:port", "ip,proto:port,ip|net"
// or "port" of bitmap:port) into matches, each part on the packet field
// its flag names (src or dst).
func memberArgs(member string, flags []string) ([]string, error) {
	parts := strings.Split(member, ",")
	if len(parts) > len(flags) {
		return nil, fmt.Errorf("%d parts but %d flags", len(parts), len(flags))
	}
	var args, ports []string
	proto := ""
	for i, part := range parts {
		src := flags[i] == "src"
		if !src && flags[i] != "dst" {
			return nil, fmt.Errorf("flag %q", flags[i])
		}
		if n, err := strconv.ParseUint(part, 10, 16); err == nil && i == 0 {
			// bitmap:port: the rule's own -p says which protocol.
			ports = append(ports, portOpt(src), strconv.FormatUint(n, 10))
			continue
		}
		if pp := strings.SplitN(part, ":", 2); len(pp) == 2 && i == 1 {
			if _, err := strconv.ParseUint(pp[1], 10, 16); err != nil {
				return nil, fmt.Errorf("port %q", pp[1])
			}
			proto = pp[0]
			ports = append(ports, portOpt(src), pp[1])
			continue
		}
		flag := "-d"
		if src {
			flag = "-s"
		}
		p, err := parsePrefixOrAddr(part)
		if err != nil {
			return nil, err
		}
		args = append(args, flag, p.String())
	}
	if proto != "" {
		args = append(args, "-p", proto)
	}
	if len(ports) > 0 {
		if proto == "" {
			proto = "%PROTO%" // filled from the rule's -p
		}
		args = append(args, append([]string{"-m", proto}, ports...)...)
	}
	return args, nil
}

func portOpt(src bool) string {
	if src {
		return "--sport"
	}
	return "--dport"
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ipvsMatch rewrites -m ipvs --vaddr/--vproto/--vport.
func ipvsMatch(opts []string) ([]string, error) {
	var addr, proto, port string
	for i := 0; i+1 < len(opts); i += 2 {
		switch opts[i] {
		case "--vaddr":
			addr = opts[i+1]
		case "--vproto":
			proto = opts[i+1]
		case "--vport":
			port = opts[i+1]
		default:
			return nil, fmt.Errorf("ipvs match option %s is not supported", opts[i])
		}
	}
	if addr == "" || proto == "" || port == "" {
		return nil, fmt.Errorf("ipvs match needs --vaddr, --vproto and --vport")
	}
	return []string{"-d", addr, "-p", proto, "-m", proto, "--dport", port}, nil
}

// settleProtocol keeps one -p in an expanded rule and fills in the
// protocol of bitmap:port members; ok is false when the rule cannot match
// (two different protocols, or a port without one).
func settleProtocol(args []string) ([]string, bool) {
	proto := ""
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		if args[i] != "-p" || i+1 >= len(args) {
			out = append(out, args[i])
			continue
		}
		p := args[i+1]
		i++
		if proto != "" {
			if p != proto {
				return nil, false
			}
			continue
		}
		proto = p
		out = append(out, "-p", p)
	}
	for i, a := range out {
		if a == "%PROTO%" {
			if proto == "" {
				return nil, false
			}
			out[i] = proto
		}
	}
	return out, true
}
