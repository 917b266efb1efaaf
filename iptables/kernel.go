package iptables

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
)

// Table is an iptables table name.
type Table string

const (
	TableNAT    Table = "nat"
	TableFilter Table = "filter"
	TableMangle Table = "mangle"
)

// Position says where EnsureRule puts a rule that is missing.
type Position string

const (
	Prepend Position = "-I"
	Append  Position = "-A"
)

// Kernel is the iptables kernel layer of one IP family. The data plane hands
// it whole restore inputs; it never builds rules itself. There is one real
// implementation (exec of the iptables tools) and one fake that keeps state.
type Kernel interface {
	Family() v1.IPFamily
	// Restore feeds data, an iptables-restore input holding one or more
	// "*table ... COMMIT" blocks, to iptables-restore --noflush --counters,
	// waiting for the xtables lock. Each table's COMMIT is atomic. A rejected
	// input returns a *RestoreError.
	Restore(data []byte) error
	// Save returns iptables-save output for one table.
	Save(table Table) ([]byte, error)
	// EnsureChain creates chain in table if it does not exist.
	EnsureChain(table Table, chain string) error
	// EnsureRule adds the rule at pos unless an identical rule is already in chain.
	EnsureRule(pos Position, table Table, chain string, args ...string) error
	// DeleteRule removes the rule if present; a missing rule or chain is not an error.
	DeleteRule(table Table, chain string, args ...string) error
	// ChainExists reports whether chain exists in table.
	ChainExists(table Table, chain string) (bool, error)
	// CountRules returns how many rules chain holds; a missing chain has 0.
	// It lets the data plane notice that another program changed its rules
	// without reading back the whole table.
	CountRules(table Table, chain string) (int, error)
	// FlushChain and DeleteChain act on one chain; a missing chain is not an error.
	FlushChain(table Table, chain string) error
	DeleteChain(table Table, chain string) error
}

// RestoreError is a restore input the kernel tool refused. Line is the
// 1-based line of the input it blamed (0 if unknown) and Rule that line.
type RestoreError struct {
	Line   int
	Rule   string
	Output string
	Err    error
}

func (e *RestoreError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("iptables-restore failed at line %d (%q): %v: %s", e.Line, e.Rule, e.Err, e.Output)
	}
	return fmt.Sprintf("iptables-restore failed: %v: %s", e.Err, e.Output)
}

func (e *RestoreError) Unwrap() error { return e.Err }
