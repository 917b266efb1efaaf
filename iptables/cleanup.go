package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

// Cleanup removes everything the iptables data plane installs (and what
// kube-proxy's iptables mode installs, which is named the same): the jumps
// from built-in chains, our top-level and per-service chains in nat and
// filter (found with iptables-save, so chains left by older runs go too)
// and the canaries. kubelet's KUBE-FIREWALL is left alone. It is idempotent.
func Cleanup(kernel Kernel) error {
	var errs []error
	for _, j := range jumpRules {
		if err := kernel.DeleteRule(j.table, j.from, j.args()...); err != nil {
			errs = append(errs, fmt.Errorf("delete jump from %s to %s in %s: %w", j.from, j.to, j.table, err))
		}
	}
	for _, t := range []Table{TableNAT, TableFilter} {
		if err := cleanupTable(kernel, t); err != nil {
			errs = append(errs, err)
		}
	}
	if err := kernel.FlushChain(TableMangle, ChainCanary); err != nil {
		errs = append(errs, fmt.Errorf("flush canary chain in mangle: %w", err))
	} else if err := kernel.DeleteChain(TableMangle, ChainCanary); err != nil {
		errs = append(errs, fmt.Errorf("delete canary chain in mangle: %w", err))
	}
	return errors.Join(errs...)
}

// cleanupTable deletes our chains of one table in one restore, after
// removing rules of other chains that still jump to them (jumps with
// arguments other than ours, e.g. from an older version), which would make
// the deletion fail.
func cleanupTable(kernel Kernel, t Table) error {
	data, err := kernel.Save(t)
	if err != nil {
		return fmt.Errorf("read %s table: %w", t, err)
	}
	d, err := dump.Parse(data)
	if err != nil {
		return fmt.Errorf("parse %s table: %w", t, err)
	}
	tbl := d.Table(string(t))
	if tbl == nil {
		return nil
	}
	top := natTopChains
	if t == TableFilter {
		top = filterTopChains
	}
	ours := map[string]bool{}
	for _, c := range tbl.Chains {
		if IsServiceChain(c.Name) || c.Name == ChainCanary || slices.Contains(top, c.Name) {
			ours[c.Name] = true
		}
	}
	if len(ours) == 0 {
		return nil
	}
	var errs []error
	for _, c := range tbl.Chains {
		if ours[c.Name] {
			continue
		}
		for _, r := range c.Rules {
			if ours[r.Target()] {
				klog.InfoS("Removing leftover jump to a chain being deleted", "table", t, "chain", c.Name, "rule", r.ArgString())
				if err := kernel.DeleteRule(t, c.Name, r.Args...); err != nil {
					errs = append(errs, fmt.Errorf("delete rule %q of %s in %s: %w", r.ArgString(), c.Name, t, err))
				}
			}
		}
	}
	names := make([]string, 0, len(ours))
	for name := range ours {
		names = append(names, name)
	}
	slices.Sort(names)
	var in bytes.Buffer
	fmt.Fprintf(&in, "*%s\n", t)
	for _, name := range names {
		fmt.Fprintf(&in, ":%s - [0:0]\n", name)
	}
	for _, name := range names {
		fmt.Fprintf(&in, "-X %s\n", name)
	}
	in.WriteString("COMMIT\n")
	if err := kernel.Restore(in.Bytes()); err != nil {
		errs = append(errs, fmt.Errorf("delete chains of %s table: %w", t, err))
	}
	return errors.Join(errs...)
}
