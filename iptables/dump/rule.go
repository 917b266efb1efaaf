package dump

import (
	"fmt"
	"strings"
)

// Rule is one rule of a chain: the arguments that followed "-A CHAIN",
// parsed into basic options, matches and a target.
type Rule struct {
	Chain string
	// Args are the rule's tokens after the chain name, unquoted.
	Args []string
	// Line is the 1-based input line the rule came from (0 if built in code).
	Line int

	basic      []Option
	matches    []Match
	target     string
	goTo       bool
	targetOpts []Option
	targetArgs []string
}

// Option is one option with its values, such as "! -s 192.0.2.0/24" or
// "--probability 0.5". Name keeps its dashes; basic options are normalised
// to their short form (-s, -d, -p, -i, -o, -f).
type Option struct {
	Name    string
	Values  []string
	Negated bool
}

// Value returns the option's first value, or "".
func (o Option) Value() string {
	if len(o.Values) == 0 {
		return ""
	}
	return o.Values[0]
}

// Match is one "-m module" with its options. Options of the implicit
// protocol match (--dport after "-p tcp" without "-m tcp") belong to a Match
// whose Module is the protocol.
type Match struct {
	Module  string
	Options []Option
}

// Option returns the named option of the match.
func (m Match) Option(name string) (Option, bool) {
	for _, o := range m.Options {
		if o.Name == name {
			return o, true
		}
	}
	return Option{}, false
}

var longBasic = map[string]string{
	"--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
	"--protocol": "-p", "--in-interface": "-i", "--out-interface": "-o",
	"--fragment": "-f",
}

func isBasic(name string) bool {
	switch name {
	case "-s", "-d", "-p", "-i", "-o", "-f":
		return true
	}
	return false
}

// NewRule parses the arguments of a rule of chain.
func NewRule(chain string, args []string) (*Rule, error) {
	r := &Rule{Chain: chain, Args: args}
	if err := r.parse(); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseRule parses one "-A CHAIN args" line (quotes allowed).
func ParseRule(line string) (*Rule, error) {
	toks, err := tokenize(line)
	if err != nil {
		return nil, err
	}
	if len(toks) < 2 || (toks[0] != "-A" && toks[0] != "--append") {
		return nil, fmt.Errorf("not an -A rule: %q", line)
	}
	return NewRule(toks[1], toks[2:])
}

func (r *Rule) parse() error {
	var cur *Match // options go to the current match until a new section starts
	inTarget := false
	negate := false
	args := r.Args
	for i := 0; i < len(args); i++ {
		tok := args[i]
		if tok == "!" {
			negate = true
			continue
		}
		name := tok
		if s, ok := longBasic[name]; ok {
			name = s
		}
		switch {
		case name == "-m" || name == "--match":
			if i+1 >= len(args) {
				return fmt.Errorf("%s without a module name", tok)
			}
			i++
			r.matches = append(r.matches, Match{Module: args[i]})
			cur = &r.matches[len(r.matches)-1]
			inTarget = false
			negate = false
			continue
		case name == "-j" || name == "--jump" || name == "-g" || name == "--goto":
			if i+1 >= len(args) {
				return fmt.Errorf("%s without a target", tok)
			}
			if r.target != "" {
				return fmt.Errorf("more than one target")
			}
			i++
			r.target = args[i]
			r.goTo = name == "-g" || name == "--goto"
			r.targetArgs = args[i+1:]
			inTarget = true
			cur = nil
			negate = false
			continue
		case !strings.HasPrefix(name, "-") || name == "-":
			return fmt.Errorf("unexpected argument %q", tok)
		}
		opt := Option{Name: name, Negated: negate}
		negate = false
		if name == "--comment" {
			// A comment may hold anything, so it always takes exactly one value.
			if i+1 >= len(args) {
				return fmt.Errorf("--comment without a value")
			}
			i++
			opt.Values = []string{args[i]}
		} else {
			for i+1 < len(args) && isValue(args[i+1]) {
				i++
				opt.Values = append(opt.Values, args[i])
			}
		}
		switch {
		case isBasic(name) && !inTarget:
			if name != "-f" && len(opt.Values) != 1 {
				return fmt.Errorf("%s needs one value", tok)
			}
			r.basic = append(r.basic, opt)
			cur = nil
		case inTarget:
			r.targetOpts = append(r.targetOpts, opt)
		case cur != nil:
			cur.Options = append(cur.Options, opt)
		default:
			// An option of the implicit match loaded by "-p tcp|udp|sctp".
			proto, _, _ := r.basicValue("-p")
			if proto == "" {
				return fmt.Errorf("option %s outside any match", tok)
			}
			cur = r.protoMatch(proto)
			cur.Options = append(cur.Options, opt)
		}
	}
	if negate {
		return fmt.Errorf("negation ! with nothing after it")
	}
	return nil
}

// protoMatch returns the rule's match for the protocol module, adding one
// when only "-p" loaded it implicitly.
func (r *Rule) protoMatch(proto string) *Match {
	for i := range r.matches {
		if r.matches[i].Module == proto {
			return &r.matches[i]
		}
	}
	r.matches = append(r.matches, Match{Module: proto})
	return &r.matches[len(r.matches)-1]
}

func isValue(tok string) bool {
	return tok != "!" && (tok == "-" || !strings.HasPrefix(tok, "-"))
}

func (r *Rule) basicValue(name string) (string, bool, bool) {
	for _, o := range r.basic {
		if o.Name == name {
			return o.Value(), o.Negated, true
		}
	}
	return "", false, false
}

// Source returns the -s value and whether it is negated; "" if absent.
func (r *Rule) Source() (string, bool) { v, n, _ := r.basicValue("-s"); return v, n }

// Destination returns the -d value and whether it is negated; "" if absent.
func (r *Rule) Destination() (string, bool) { v, n, _ := r.basicValue("-d"); return v, n }

// Protocol returns the -p value and whether it is negated; "" if absent.
func (r *Rule) Protocol() (string, bool) { v, n, _ := r.basicValue("-p"); return v, n }

// InInterface returns the -i value and whether it is negated; "" if absent.
func (r *Rule) InInterface() (string, bool) { v, n, _ := r.basicValue("-i"); return v, n }

// OutInterface returns the -o value and whether it is negated; "" if absent.
func (r *Rule) OutInterface() (string, bool) { v, n, _ := r.basicValue("-o"); return v, n }

// Basic returns the basic options (-s, -d, -p, -i, -o, -f) in order.
func (r *Rule) Basic() []Option { return r.basic }

// Matches returns the rule's matches in order.
func (r *Rule) Matches() []Match { return r.matches }

// Match returns the first match of module.
func (r *Rule) Match(module string) (Match, bool) {
	for _, m := range r.matches {
		if m.Module == module {
			return m, true
		}
	}
	return Match{}, false
}

// MatchOption returns option name of the first match of module that has it.
func (r *Rule) MatchOption(module, name string) (Option, bool) {
	for _, m := range r.matches {
		if m.Module != module {
			continue
		}
		if o, ok := m.Option(name); ok {
			return o, true
		}
	}
	return Option{}, false
}

// DPort returns the destination port of the protocol match (--dport or
// --destination-port) and whether it is negated; "" if absent.
func (r *Rule) DPort() (string, bool) { return r.portOption("--dport", "--destination-port") }

// SPort returns the source port of the protocol match; "" if absent.
func (r *Rule) SPort() (string, bool) { return r.portOption("--sport", "--source-port") }

func (r *Rule) portOption(names ...string) (string, bool) {
	for _, m := range r.matches {
		if m.Module != "tcp" && m.Module != "udp" && m.Module != "sctp" {
			continue
		}
		for _, n := range names {
			if o, ok := m.Option(n); ok {
				return o.Value(), o.Negated
			}
		}
	}
	return "", false
}

// Comment returns the rule's comments (-m comment --comment), joined by
// "; " when there are several; "" if none.
func (r *Rule) Comment() string {
	var cs []string
	for _, m := range r.matches {
		if m.Module != "comment" {
			continue
		}
		if o, ok := m.Option("--comment"); ok {
			cs = append(cs, o.Value())
		}
	}
	return strings.Join(cs, "; ")
}

// Target returns the -j (or -g) target, "" if the rule has none.
func (r *Rule) Target() string { return r.target }

// Goto reports whether the target was given with -g.
func (r *Rule) Goto() bool { return r.goTo }

// TargetArgs returns the raw tokens after the target name.
func (r *Rule) TargetArgs() []string { return r.targetArgs }

// TargetOption returns the value of a target option such as
// "--to-destination"; ok is false if absent.
func (r *Rule) TargetOption(name string) (string, bool) {
	for _, o := range r.targetOpts {
		if o.Name == name {
			return o.Value(), true
		}
	}
	return "", false
}

// TargetOptions returns the parsed target options.
func (r *Rule) TargetOptions() []Option { return r.targetOpts }

// Equal reports whether two rules have the same chain and arguments.
func (r *Rule) Equal(o *Rule) bool {
	return r.Chain == o.Chain && equalArgs(r.Args, o.Args)
}

func equalArgs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// String renders the rule as iptables-save does: "-A CHAIN args", quoting
// comments the way xtables_save_string does and any other token that would
// not survive re-tokenizing.
func (r *Rule) String() string {
	return "-A " + r.Chain + " " + JoinArgs(r.Args)
}

// ArgString renders the rule's arguments without the "-A CHAIN" prefix.
func (r *Rule) ArgString() string { return JoinArgs(r.Args) }

// JoinArgs renders tokens as one iptables-restore line fragment.
func JoinArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i > 0 && args[i-1] == "--comment" {
			b.WriteString(saveString(a))
		} else {
			b.WriteString(quoteIfNeeded(a))
		}
	}
	return b.String()
}

const noQuoteChars = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// saveString mirrors iptables' xtables_save_string.
func saveString(s string) string {
	if s != "" && strings.Trim(s, noQuoteChars) == "" {
		return s
	}
	return quote(s)
}

func quoteIfNeeded(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'") {
		return s
	}
	return quote(s)
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// tokenize splits a line the way iptables-restore does: on blanks, with
// double quotes grouping and backslash escaping inside quotes only.
func tokenize(line string) ([]string, error) {
	var toks []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && escaped:
			cur.WriteByte(c)
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case inQuote && c == '"':
			inQuote = false
		case inQuote:
			cur.WriteByte(c)
		case c == '"':
			inQuote, have = true, true
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			if have {
				toks = append(toks, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote")
	}
	if have {
		toks = append(toks, cur.String())
	}
	return toks, nil
}
