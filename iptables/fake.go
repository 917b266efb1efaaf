package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// Fake is a Kernel that keeps its rules in memory, so tests can ask what
// the kernel holds now rather than which calls were made. Restore follows
// iptables-restore --noflush semantics (see dump.ApplyRestore). It is safe
// for concurrent use.
type Fake struct {
	mu       sync.Mutex
	family   v1.IPFamily
	state    *dump.Dump
	restores [][]byte
	failNext int
	// failChecks fails the next ChainExists calls, as a held xtables lock does.
	failChecks int
}

var _ Kernel = (*Fake)(nil)

// ErrInjected is the error inside a *RestoreError from FailNextRestores.
var ErrInjected = errors.New("injected restore failure")

// ErrLockHeld is what FailNextChainChecks makes ChainExists return: the tools'
// "Another app is currently holding the xtables lock" after their wait.
var ErrLockHeld = errors.New("injected: another app is currently holding the xtables lock")

// NewFake returns an empty fake kernel of one IP family: the filter, nat
// and mangle tables with their built-in chains and ACCEPT policies.
func NewFake(family v1.IPFamily) *Fake {
	f := &Fake{family: family, state: &dump.Dump{}}
	for _, t := range []Table{TableFilter, TableNAT, TableMangle} {
		f.state.EnsureTable(string(t))
	}
	return f
}

// Family returns the fake's IP family.
func (f *Fake) Family() v1.IPFamily { return f.family }

// Restore records data and applies it with noflush semantics. A rejected
// input (or an injected failure) returns a *RestoreError; a failing table
// block leaves its table untouched.
func (f *Fake) Restore(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, append([]byte(nil), data...))
	if f.failNext > 0 {
		f.failNext--
		line, text := blameLine(data)
		return &RestoreError{Line: line, Rule: text, Output: fmt.Sprintf("iptables-restore: line %d failed", line), Err: ErrInjected}
	}
	if err := f.state.ApplyRestore(data, true); err != nil {
		var le *dump.LineError
		if errors.As(err, &le) {
			return &RestoreError{Line: le.Line, Rule: le.Text, Output: fmt.Sprintf("iptables-restore: line %d failed", le.Line), Err: le.Err}
		}
		return &RestoreError{Output: err.Error(), Err: err}
	}
	return nil
}

// blameLine picks the line an injected failure names: the first rule line,
// or else the first COMMIT, like a kernel refusing the first change.
func blameLine(data []byte) (int, string) {
	commit, commitText := 0, ""
	for i, l := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "-") {
			return i + 1, l
		}
		if t == "COMMIT" && commit == 0 {
			commit, commitText = i+1, l
		}
	}
	return commit, commitText
}

// Save returns iptables-save output for table (built-in chains first, then
// user chains sorted, counters zero).
func (f *Fake) Save(table Table) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.state.Save(string(table))
	if out == nil {
		return nil, fmt.Errorf("save %s: table does not exist", table)
	}
	return out, nil
}

// EnsureChain creates chain in table if it does not exist.
func (f *Fake) EnsureChain(table Table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(table)
	if err != nil {
		return err
	}
	if t.Chain(chain) != nil {
		return nil
	}
	_, err = t.AddChain(chain)
	return err
}

// EnsureRule adds the rule at pos unless chain already holds an identical one.
func (f *Fake) EnsureRule(pos Position, table Table, chain string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("ensure rule in %s/%s: %w", table, chain, err)
	}
	r, err := dump.NewRule(chain, append([]string(nil), args...))
	if err != nil {
		return fmt.Errorf("ensure rule in %s/%s: %w", table, chain, err)
	}
	for _, have := range c.Rules {
		if have.Equal(r) {
			return nil
		}
	}
	if tg := r.Target(); dump.IsChainTarget(tg) {
		if t, _ := f.table(table); t.Chain(tg) == nil {
			return fmt.Errorf("ensure rule in %s/%s: %w: jump to %s", table, chain, dump.ErrNoChain, tg)
		}
	}
	switch pos {
	case Prepend:
		c.Rules = append([]*dump.Rule{r}, c.Rules...)
	case Append:
		c.Rules = append(c.Rules, r)
	default:
		return fmt.Errorf("ensure rule: unknown position %q", pos)
	}
	return nil
}

// DeleteRule removes the first identical rule; a missing rule or chain is not an error.
func (f *Fake) DeleteRule(table Table, chain string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.chain(table, chain)
	if err != nil {
		return nil
	}
	r := &dump.Rule{Chain: chain, Args: args}
	for i, have := range c.Rules {
		if have.Equal(r) {
			c.Rules = append(c.Rules[:i], c.Rules[i+1:]...)
			return nil
		}
	}
	return nil
}

// ChainExists reports whether chain exists in table.
func (f *Fake) ChainExists(table Table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failChecks > 0 {
		f.failChecks--
		return false, ErrLockHeld
	}
	_, err := f.chain(table, chain)
	if errors.Is(err, dump.ErrNoChain) {
		return false, nil
	}
	return err == nil, err
}

// CountRules returns the number of rules in chain; a missing chain has 0.
func (f *Fake) CountRules(table Table, chain string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.chain(table, chain)
	if errors.Is(err, dump.ErrNoChain) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return len(c.Rules), nil
}

// FlushChain empties chain; a missing chain is not an error.
func (f *Fake) FlushChain(table Table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, err := f.chain(table, chain); err == nil {
		c.Rules = nil
	}
	return nil
}

// DeleteChain deletes chain; a missing chain is not an error, but like the
// kernel it refuses a chain that still has rules or is jumped to.
func (f *Fake) DeleteChain(table Table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(table)
	if err != nil {
		return err
	}
	if t.Chain(chain) == nil {
		return nil
	}
	if err := t.DeleteChain(chain); err != nil {
		return fmt.Errorf("delete chain %s/%s: %w", table, chain, err)
	}
	return nil
}

// FailNextRestores makes the next n calls of Restore fail with a
// *RestoreError (wrapping ErrInjected) without changing any state.
func (f *Fake) FailNextRestores(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = n
}

// FailNextChainChecks makes the next n calls of ChainExists fail with ErrLockHeld.
func (f *Fake) FailNextChainChecks(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failChecks = n
}

// Restores returns a copy of every input Restore received, failed ones
// included, oldest first.
func (f *Fake) Restores() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]byte, len(f.restores))
	for i, r := range f.restores {
		out[i] = append([]byte(nil), r...)
	}
	return out
}

// LastRestore returns the latest Restore input, nil if there was none.
func (f *Fake) LastRestore() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.restores) == 0 {
		return nil
	}
	return append([]byte(nil), f.restores[len(f.restores)-1]...)
}

// Dump renders table like iptables-save; "" if the table does not exist.
func (f *Fake) Dump(table Table) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(f.state.Save(string(table)))
}

// State returns a deep copy of the fake's tables, for tests that inspect
// chains and rules (or feed the tracer) instead of comparing text.
func (f *Fake) State() *dump.Dump {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.Clone()
}

// SaveAll renders every table (filter, nat, mangle, then any other) as one
// iptables-save text, the form the tracer reads.
func (f *Fake) SaveAll() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b bytes.Buffer
	for _, t := range f.state.Tables {
		b.Write(f.state.Save(t.Name))
	}
	return b.Bytes()
}

func (f *Fake) table(table Table) (*dump.Table, error) {
	t := f.state.Table(string(table))
	if t == nil {
		return nil, fmt.Errorf("table %s does not exist", table)
	}
	return t, nil
}

func (f *Fake) chain(table Table, chain string) (*dump.Chain, error) {
	t, err := f.table(table)
	if err != nil {
		return nil, err
	}
	c := t.Chain(chain)
	if c == nil {
		return nil, fmt.Errorf("%w: %s in table %s", dump.ErrNoChain, chain, table)
	}
	return c, nil
}
