// Package dump holds iptables rulesets as data: it parses iptables-save and
// iptables-restore text, applies restore inputs with the kernel tool's
// semantics, and renders a table back the way iptables-save does. It does no
// I/O; the fake kernel and the packet tracer are built on it.
package dump

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
)

// Dump is a set of iptables tables, each with its chains in order.
type Dump struct {
	Tables []*Table
}

// Table is one iptables table.
type Table struct {
	Name   string
	Chains []*Chain
	// Deleted lists the chains an input deleted with -X, in order. Parse
	// keeps it so a test can assert what a restore input removes;
	// ApplyRestore leaves it alone.
	Deleted []string
}

// Chain is one chain of a table. Policy is "-" for user chains.
type Chain struct {
	Name   string
	Policy string
	Rules  []*Rule
}

// builtinChains lists each known table's built-in chains in the kernel's
// order, which is also iptables-save's order.
var builtinChains = map[string][]string{
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":      {"PREROUTING", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
}

// BuiltinChains returns the built-in chains of a known table, nil otherwise.
func BuiltinChains(table string) []string {
	return append([]string(nil), builtinChains[table]...)
}

// IsBuiltin reports whether chain is a built-in chain of table.
func IsBuiltin(table, chain string) bool {
	for _, c := range builtinChains[table] {
		if c == chain {
			return true
		}
	}
	return false
}

// NewTable returns a table holding only its built-in chains, policy ACCEPT,
// as the kernel creates it.
func NewTable(name string) *Table {
	t := &Table{Name: name}
	for _, c := range builtinChains[name] {
		t.Chains = append(t.Chains, &Chain{Name: c, Policy: "ACCEPT"})
	}
	return t
}

// Table returns the named table, or nil.
func (d *Dump) Table(name string) *Table {
	for _, t := range d.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// EnsureTable returns the named table, creating it with its built-in chains.
func (d *Dump) EnsureTable(name string) *Table {
	if t := d.Table(name); t != nil {
		return t
	}
	t := NewTable(name)
	d.Tables = append(d.Tables, t)
	return t
}

// Chain returns the named chain of table, or nil.
func (d *Dump) Chain(table, chain string) *Chain {
	if t := d.Table(table); t != nil {
		return t.Chain(chain)
	}
	return nil
}

// Chain returns the named chain, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// AddChain creates an empty user chain; it is an error if it exists.
func (t *Table) AddChain(name string) (*Chain, error) {
	if t.Chain(name) != nil {
		return nil, fmt.Errorf("chain %s already exists in table %s", name, t.Name)
	}
	c := &Chain{Name: name, Policy: "-"}
	t.Chains = append(t.Chains, c)
	return c, nil
}

// References returns the rules of t, outside chain itself, that jump or go to chain.
func (t *Table) References(chain string) []*Rule {
	var refs []*Rule
	for _, c := range t.Chains {
		if c.Name == chain {
			continue
		}
		for _, r := range c.Rules {
			if r.Target() == chain {
				refs = append(refs, r)
			}
		}
	}
	return refs
}

// DeleteChain removes a user chain the way the kernel does: it must exist,
// be empty and not be the target of any rule.
func (t *Table) DeleteChain(name string) error {
	if IsBuiltin(t.Name, name) {
		return fmt.Errorf("cannot delete built-in chain %s", name)
	}
	for i, c := range t.Chains {
		if c.Name != name {
			continue
		}
		if refs := t.References(name); len(refs) > 0 {
			return fmt.Errorf("chain %s is referenced by %d rule(s), first %q", name, len(refs), refs[0].String())
		}
		if len(c.Rules) > 0 {
			return fmt.Errorf("chain %s is not empty (%d rules)", name, len(c.Rules))
		}
		t.Chains = append(t.Chains[:i], t.Chains[i+1:]...)
		return nil
	}
	return fmt.Errorf("chain %s does not exist in table %s", name, t.Name)
}

// Clone returns a deep copy of the table; rules are shared because they are
// never mutated once parsed.
func (t *Table) Clone() *Table {
	n := &Table{Name: t.Name, Deleted: append([]string(nil), t.Deleted...)}
	for _, c := range t.Chains {
		n.Chains = append(n.Chains, &Chain{Name: c.Name, Policy: c.Policy, Rules: append([]*Rule(nil), c.Rules...)})
	}
	return n
}

// Clone returns a deep copy of the dump.
func (d *Dump) Clone() *Dump {
	n := &Dump{}
	for _, t := range d.Tables {
		n.Tables = append(n.Tables, t.Clone())
	}
	return n
}

// sortedChains returns built-in chains in kernel order, then user chains by
// name, which is how iptables-save lists them.
func (t *Table) sortedChains() []*Chain {
	var builtin, user []*Chain
	for _, name := range builtinChains[t.Name] {
		if c := t.Chain(name); c != nil {
			builtin = append(builtin, c)
		}
	}
	for _, c := range t.Chains {
		if !IsBuiltin(t.Name, c.Name) {
			user = append(user, c)
		}
	}
	sort.Slice(user, func(i, j int) bool { return user[i].Name < user[j].Name })
	return append(builtin, user...)
}

// Save renders one table like iptables-save (without the timestamp
// comments, so the output is deterministic). A missing table renders as nil.
func (d *Dump) Save(table string) []byte {
	t := d.Table(table)
	if t == nil {
		return nil
	}
	var b bytes.Buffer
	t.write(&b)
	return b.Bytes()
}

// String renders every table in order.
func (d *Dump) String() string {
	var b bytes.Buffer
	for _, t := range d.Tables {
		t.write(&b)
	}
	return b.String()
}

func (t *Table) write(b *bytes.Buffer) {
	chains := t.sortedChains()
	fmt.Fprintf(b, "*%s\n", t.Name)
	for _, c := range chains {
		fmt.Fprintf(b, ":%s %s [0:0]\n", c.Name, c.Policy)
	}
	for _, c := range chains {
		for _, r := range c.Rules {
			b.WriteString(r.String())
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
}

// RuleCount returns the number of rules in the table.
func (t *Table) RuleCount() int {
	n := 0
	for _, c := range t.Chains {
		n += len(c.Rules)
	}
	return n
}

// ChainNames returns the table's chain names with the given prefix, sorted.
func (t *Table) ChainNames(prefix string) []string {
	var names []string
	for _, c := range t.Chains {
		if strings.HasPrefix(c.Name, prefix) {
			names = append(names, c.Name)
		}
	}
	sort.Strings(names)
	return names
}
