package dump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// LineError is an input line the parser or restore refused.
type LineError struct {
	Line int    // 1-based
	Text string // the line as given
	Err  error
}

func (e *LineError) Error() string {
	return fmt.Sprintf("line %d (%q): %v", e.Line, e.Text, e.Err)
}

func (e *LineError) Unwrap() error { return e.Err }

// ErrNoChain is wrapped by errors about a chain that does not exist.
var ErrNoChain = errors.New("no such chain")

// standardTargets are the verdicts built into the kernel.
var standardTargets = map[string]bool{"ACCEPT": true, "DROP": true, "RETURN": true, "QUEUE": true}

// extensionTargets are the target extensions the restore accepts; any other
// name must be a chain of the table, as iptables-restore would require.
var extensionTargets = map[string]bool{
	"DNAT": true, "SNAT": true, "MASQUERADE": true, "REDIRECT": true, "NETMAP": true,
	"MARK": true, "CONNMARK": true, "REJECT": true, "LOG": true, "NFLOG": true,
	"NOTRACK": true, "CT": true, "TPROXY": true, "TRACE": true, "CLASSIFY": true,
	"DSCP": true, "TOS": true, "TCPMSS": true, "CHECKSUM": true, "NFQUEUE": true,
	"AUDIT": true, "SET": true, "CONNSECMARK": true, "SECMARK": true,
}

// IsChainTarget reports whether a rule target names a chain rather than a
// verdict or a target extension.
func IsChainTarget(target string) bool {
	return target != "" && !standardTargets[target] && !extensionTargets[target]
}

// Parse reads iptables-save or iptables-restore text into a Dump. It is
// lenient where only the kernel's current state could decide: rules may jump
// to chains the input does not declare, and -X of an undeclared chain is
// only recorded in Table.Deleted. Syntax errors name their line.
func Parse(data []byte) (*Dump, error) {
	d := &Dump{}
	if err := d.apply(data, false, false); err != nil {
		return nil, err
	}
	return d, nil
}

// ApplyRestore applies an iptables-restore input to d. Without noflush each
// table named in the input is first emptied (user chains deleted, built-in
// chains flushed). With noflush, a ":CHAIN" line creates a user chain or
// flushes it if it exists, and chains the input does not mention are left
// alone. Each table block is atomic: if any line fails, nothing of that
// table changes and a *LineError is returned; blocks committed earlier in
// the same input stay applied, as with the real tool.
func (d *Dump) ApplyRestore(input []byte, noflush bool) error {
	return d.apply(input, noflush, true)
}

type restorer struct {
	d       *Dump
	noflush bool
	strict  bool
	table   *Table // working copy of the current block, nil outside one
	lineNo  int
}

func (d *Dump) apply(input []byte, noflush, strict bool) error {
	rs := &restorer{d: d, noflush: noflush, strict: strict}
	sc := bufio.NewScanner(bytes.NewReader(input))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	n := 0
	var last string
	for sc.Scan() {
		n++
		text := sc.Text()
		last = text
		rs.lineNo = n
		if err := rs.line(strings.TrimSpace(text)); err != nil {
			return &LineError{Line: n, Text: text, Err: err}
		}
	}
	if err := sc.Err(); err != nil {
		return &LineError{Line: n, Text: last, Err: err}
	}
	if rs.table != nil {
		return &LineError{Line: n, Text: last, Err: fmt.Errorf("table %s not committed (missing COMMIT)", rs.table.Name)}
	}
	return nil
}

func (rs *restorer) line(line string) error {
	switch {
	case line == "" || strings.HasPrefix(line, "#"):
		return nil
	case strings.HasPrefix(line, "*"):
		if rs.table != nil {
			return fmt.Errorf("table %s started before %s was committed", line[1:], rs.table.Name)
		}
		return rs.begin(strings.TrimSpace(line[1:]))
	}
	if rs.table == nil {
		return fmt.Errorf("line outside a table block")
	}
	switch {
	case line == "COMMIT":
		rs.commit()
		return nil
	case strings.HasPrefix(line, ":"):
		return rs.chainLine(line[1:])
	}
	toks, err := tokenize(line)
	if err != nil {
		return err
	}
	if strings.HasPrefix(toks[0], "[") { // "[packets:bytes] -A ..." with --counters
		toks = toks[1:]
		if len(toks) == 0 {
			return fmt.Errorf("counters without a command")
		}
	}
	return rs.command(toks)
}

func (rs *restorer) begin(name string) error {
	if _, known := builtinChains[name]; !known {
		return fmt.Errorf("unknown table %q", name)
	}
	var t *Table
	if cur := rs.d.Table(name); cur != nil && rs.noflush {
		t = cur.Clone()
	} else {
		t = NewTable(name)
		if cur != nil && !rs.strict { // Parse keeps what earlier blocks recorded
			t.Deleted = append(t.Deleted, cur.Deleted...)
		}
	}
	rs.table = t
	return nil
}

func (rs *restorer) commit() {
	t := rs.table
	rs.table = nil
	for i, cur := range rs.d.Tables {
		if cur.Name == t.Name {
			rs.d.Tables[i] = t
			return
		}
	}
	rs.d.Tables = append(rs.d.Tables, t)
}

// chainLine handles ":NAME POLICY [p:b]".
func (rs *restorer) chainLine(rest string) error {
	f := strings.Fields(rest)
	if len(f) < 2 {
		return fmt.Errorf("chain line needs a name and a policy")
	}
	name, policy := f[0], f[1]
	t := rs.table
	if IsBuiltin(t.Name, name) {
		// Built-in chains are never flushed by a chain line; only the policy changes.
		if policy == "-" {
			return nil
		}
		if policy != "ACCEPT" && policy != "DROP" {
			return fmt.Errorf("bad policy %q for built-in chain %s", policy, name)
		}
		t.Chain(name).Policy = policy
		return nil
	}
	if policy != "-" {
		return fmt.Errorf("user chain %s cannot have policy %q", name, policy)
	}
	if c := t.Chain(name); c != nil {
		c.Rules = nil
		return nil
	}
	_, err := t.AddChain(name)
	return err
}

func (rs *restorer) command(toks []string) error {
	cmd := toks[0]
	args := toks[1:]
	chainArg := func() (string, error) {
		if len(args) == 0 {
			return "", fmt.Errorf("%s needs a chain", cmd)
		}
		return args[0], nil
	}
	t := rs.table
	switch cmd {
	case "-A", "--append", "-I", "--insert":
		name, err := chainArg()
		if err != nil {
			return err
		}
		c := t.Chain(name)
		if c == nil {
			return fmt.Errorf("%w: %s", ErrNoChain, name)
		}
		rest := args[1:]
		pos := len(c.Rules)
		if cmd == "-I" || cmd == "--insert" {
			pos = 0
			if len(rest) > 0 {
				if n, err := strconv.Atoi(rest[0]); err == nil {
					if n < 1 || n > len(c.Rules)+1 {
						return fmt.Errorf("insert position %d out of range for %s", n, name)
					}
					pos, rest = n-1, rest[1:]
				}
			}
		}
		r, err := NewRule(name, rest)
		if err != nil {
			return err
		}
		r.Line = rs.lineNo
		if err := rs.checkTarget(r); err != nil {
			return err
		}
		c.Rules = append(c.Rules, nil)
		copy(c.Rules[pos+1:], c.Rules[pos:])
		c.Rules[pos] = r
		return nil
	case "-D", "--delete":
		return rs.deleteRule(args)
	case "-N", "--new-chain":
		name, err := chainArg()
		if err != nil {
			return err
		}
		_, err = t.AddChain(name)
		return err
	case "-F", "--flush":
		if len(args) == 0 {
			for _, c := range t.Chains {
				c.Rules = nil
			}
			return nil
		}
		c := t.Chain(args[0])
		if c == nil {
			return fmt.Errorf("%w: %s", ErrNoChain, args[0])
		}
		c.Rules = nil
		return nil
	case "-X", "--delete-chain":
		return rs.deleteChains(args)
	case "-P", "--policy":
		if len(args) != 2 || !IsBuiltin(t.Name, args[0]) {
			return fmt.Errorf("-P needs a built-in chain and a policy")
		}
		t.Chain(args[0]).Policy = args[1]
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func (rs *restorer) checkTarget(r *Rule) error {
	tg := r.Target()
	if !rs.strict || !IsChainTarget(tg) {
		return nil
	}
	if IsBuiltin(rs.table.Name, tg) {
		return fmt.Errorf("cannot jump to built-in chain %s", tg)
	}
	if rs.table.Chain(tg) == nil {
		return fmt.Errorf("%w: jump to %s", ErrNoChain, tg)
	}
	return nil
}

func (rs *restorer) deleteRule(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("-D needs a chain and a rule")
	}
	c := rs.table.Chain(args[0])
	if c == nil {
		return fmt.Errorf("%w: %s", ErrNoChain, args[0])
	}
	if len(args) == 2 {
		if n, err := strconv.Atoi(args[1]); err == nil {
			if n < 1 || n > len(c.Rules) {
				return fmt.Errorf("rule %d out of range in %s", n, c.Name)
			}
			c.Rules = append(c.Rules[:n-1], c.Rules[n:]...)
			return nil
		}
	}
	for i, r := range c.Rules {
		if equalArgs(r.Args, args[1:]) {
			c.Rules = append(c.Rules[:i], c.Rules[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("rule not found in %s", c.Name)
}

func (rs *restorer) deleteChains(args []string) error {
	t := rs.table
	if len(args) == 0 {
		// Delete every user chain, as "iptables -X" does.
		for _, c := range append([]*Chain(nil), t.Chains...) {
			if IsBuiltin(t.Name, c.Name) {
				continue
			}
			if err := t.DeleteChain(c.Name); err != nil {
				return err
			}
			t.Deleted = append(t.Deleted, c.Name)
		}
		return nil
	}
	name := args[0]
	if !rs.strict && t.Chain(name) == nil {
		t.Deleted = append(t.Deleted, name)
		return nil
	}
	if !rs.strict {
		// Parse only records: the rules of the deleted chain come from
		// state it cannot see, so emptiness and references are not checked.
		for i, c := range t.Chains {
			if c.Name == name && !IsBuiltin(t.Name, name) {
				t.Chains = append(t.Chains[:i], t.Chains[i+1:]...)
				break
			}
		}
		t.Deleted = append(t.Deleted, name)
		return nil
	}
	if err := t.DeleteChain(name); err != nil {
		return err
	}
	return nil
}
