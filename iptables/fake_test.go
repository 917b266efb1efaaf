package iptables

import (
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func joinLines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

const emptyNAT = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
`

func TestFakeStartsWithBuiltinChains(t *testing.T) {
	f := NewFake(v1.IPv6Protocol)
	if f.Family() != v1.IPv6Protocol {
		t.Errorf("Family = %s", f.Family())
	}
	if got := f.Dump(TableNAT); got != emptyNAT {
		t.Errorf("nat:\n%s\nwant:\n%s", got, emptyNAT)
	}
	for _, tc := range []struct {
		table Table
		chain string
	}{{TableFilter, "FORWARD"}, {TableMangle, "POSTROUTING"}, {TableNAT, "PREROUTING"}} {
		if ok, err := f.ChainExists(tc.table, tc.chain); !ok || err != nil {
			t.Errorf("ChainExists(%s, %s) = %v, %v", tc.table, tc.chain, ok, err)
		}
	}
}

func TestFakeRestore(t *testing.T) {
	full := joinLines("*filter", ":KUBE-SERVICES - [0:0]",
		`-A KUBE-SERVICES -m comment --comment "ns/svc:p80 has no endpoints" -d 198.51.100.9/32 -p tcp --dport 80 -j REJECT`,
		"COMMIT", "*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-A - [0:0]", ":KUBE-SVC-B - [0:0]",
		"-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp --dport 80 -j KUBE-SVC-A",
		"-A KUBE-SERVICES -d 198.51.100.2/32 -p tcp --dport 80 -j KUBE-SVC-B",
		"-A KUBE-SVC-A -j DNAT --to-destination 203.0.113.11:80",
		"-A KUBE-SVC-B -j DNAT --to-destination 203.0.113.12:80",
		"COMMIT")
	// A partial sync rewrites the top-level chain and one service, removes
	// another, and leaves what it does not mention alone.
	partial := joinLines("*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-A - [0:0]", ":KUBE-SVC-B - [0:0]",
		"-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp --dport 80 -j KUBE-SVC-A",
		"-A KUBE-SVC-A -j DNAT --to-destination 203.0.113.21:80",
		"-X KUBE-SVC-B", "COMMIT")
	wantNAT := joinLines("*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
		":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-A - [0:0]",
		"-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp --dport 80 -j KUBE-SVC-A",
		"-A KUBE-SVC-A -j DNAT --to-destination 203.0.113.21:80", "COMMIT")

	f := NewFake(v1.IPv4Protocol)
	if err := f.Restore([]byte(full)); err != nil {
		t.Fatalf("full restore: %v", err)
	}
	filterAfterFull := f.Dump(TableFilter)
	if !strings.Contains(filterAfterFull, `--comment "ns/svc:p80 has no endpoints"`) {
		t.Errorf("filter lacks the REJECT rule:\n%s", filterAfterFull)
	}
	if err := f.Restore([]byte(partial)); err != nil {
		t.Fatalf("partial restore: %v", err)
	}
	if got := f.Dump(TableNAT); got != wantNAT {
		t.Errorf("nat after partial restore:\n%s\nwant:\n%s", got, wantNAT)
	}
	if got := f.Dump(TableFilter); got != filterAfterFull {
		t.Errorf("filter changed by a nat-only restore:\n%s", got)
	}
	rs := f.Restores()
	if len(rs) != 2 || string(rs[0]) != full || string(rs[1]) != partial {
		t.Errorf("Restores() = %d inputs, want the two given", len(rs))
	}
	if string(f.LastRestore()) != partial {
		t.Errorf("LastRestore is not the partial input")
	}
	saved, err := f.Save(TableNAT)
	if err != nil || string(saved) != wantNAT {
		t.Errorf("Save(nat) = %q, %v", saved, err)
	}
	if !strings.HasPrefix(string(f.SaveAll()), "*filter\n") || !strings.Contains(string(f.SaveAll()), wantNAT) {
		t.Errorf("SaveAll lacks tables:\n%s", f.SaveAll())
	}
}

func TestFakeRestoreErrors(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		inject   int
		wantLine int
		wantErr  error
	}{
		{
			name:     "jump to a missing chain",
			input:    joinLines("*nat", ":KUBE-SERVICES - [0:0]", "-A KUBE-SERVICES -j KUBE-SVC-GONE", "COMMIT"),
			wantLine: 3,
		},
		{
			name:     "delete a referenced chain",
			input:    joinLines("*nat", ":KUBE-SVC-A - [0:0]", "-A PREROUTING -j KUBE-SVC-A", "-X KUBE-SVC-A", "COMMIT"),
			wantLine: 4,
		},
		{
			name:     "injected failure names the first rule line",
			input:    joinLines("*nat", ":KUBE-SERVICES - [0:0]", "-A KUBE-SERVICES -j RETURN", "COMMIT"),
			inject:   1,
			wantLine: 3,
			wantErr:  ErrInjected,
		},
		{
			name:     "injected failure on an input without rules names COMMIT",
			input:    joinLines("*nat", ":KUBE-SERVICES - [0:0]", "COMMIT"),
			inject:   1,
			wantLine: 3,
			wantErr:  ErrInjected,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(v1.IPv4Protocol)
			f.FailNextRestores(tc.inject)
			err := f.Restore([]byte(tc.input))
			var re *RestoreError
			if !errors.As(err, &re) {
				t.Fatalf("Restore error = %v, want a *RestoreError", err)
			}
			if re.Line != tc.wantLine {
				t.Errorf("RestoreError.Line = %d, want %d (%v)", re.Line, tc.wantLine, err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v does not wrap %v", err, tc.wantErr)
			}
			if got := f.Dump(TableNAT); got != emptyNAT {
				t.Errorf("failed restore changed nat:\n%s", got)
			}
			if len(f.Restores()) != 1 {
				t.Errorf("failed input not recorded")
			}
			// Injected failures are used up; the same input then succeeds.
			if tc.inject > 0 {
				if err := f.Restore([]byte(tc.input)); err != nil {
					t.Errorf("restore after injected failures: %v", err)
				}
			}
		})
	}
}

func TestFakeRuleAndChainOps(t *testing.T) {
	f := NewFake(v1.IPv4Protocol)
	jump := []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}
	other := []string{"-s", "192.0.2.1", "-j", "RETURN"}

	if err := f.EnsureRule(Prepend, TableNAT, "PREROUTING", jump...); err == nil {
		t.Errorf("EnsureRule jumping to a missing chain succeeded")
	}
	if err := f.EnsureRule(Append, TableNAT, "KUBE-NOPE", other...); err == nil {
		t.Errorf("EnsureRule into a missing chain succeeded")
	}
	for i := 0; i < 2; i++ { // idempotent
		if err := f.EnsureChain(TableNAT, "KUBE-SERVICES"); err != nil {
			t.Fatalf("EnsureChain: %v", err)
		}
		if err := f.EnsureRule(Append, TableNAT, "PREROUTING", other...); err != nil {
			t.Fatalf("EnsureRule append: %v", err)
		}
		if err := f.EnsureRule(Prepend, TableNAT, "PREROUTING", jump...); err != nil {
			t.Fatalf("EnsureRule prepend: %v", err)
		}
	}
	want := joinLines("*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
		":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]",
		`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		"-A PREROUTING -s 192.0.2.1 -j RETURN", "COMMIT")
	if got := f.Dump(TableNAT); got != want {
		t.Fatalf("nat:\n%s\nwant:\n%s", got, want)
	}
	if err := f.DeleteChain(TableNAT, "KUBE-SERVICES"); err == nil {
		t.Errorf("DeleteChain of a referenced chain succeeded")
	}
	if err := f.DeleteRule(TableNAT, "PREROUTING", jump...); err != nil {
		t.Errorf("DeleteRule: %v", err)
	}
	for _, missing := range [][]string{jump, {"-j", "ACCEPT"}} {
		if err := f.DeleteRule(TableNAT, "PREROUTING", missing...); err != nil {
			t.Errorf("DeleteRule of a missing rule: %v", err)
		}
	}
	if err := f.DeleteRule(TableNAT, "KUBE-NOPE", other...); err != nil {
		t.Errorf("DeleteRule in a missing chain: %v", err)
	}
	if err := f.Restore([]byte(joinLines("*nat", "-A KUBE-SERVICES -j RETURN", "COMMIT"))); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteChain(TableNAT, "KUBE-SERVICES"); err == nil {
		t.Errorf("DeleteChain of a non-empty chain succeeded")
	}
	for _, step := range []func() error{
		func() error { return f.FlushChain(TableNAT, "KUBE-SERVICES") },
		func() error { return f.FlushChain(TableNAT, "KUBE-NOPE") },
		func() error { return f.DeleteChain(TableNAT, "KUBE-SERVICES") },
		func() error { return f.DeleteChain(TableNAT, "KUBE-NOPE") },
		func() error { return f.FlushChain(TableNAT, "PREROUTING") },
	} {
		if err := step(); err != nil {
			t.Fatalf("cleanup step: %v", err)
		}
	}
	if ok, err := f.ChainExists(TableNAT, "KUBE-SERVICES"); ok || err != nil {
		t.Errorf("ChainExists after delete = %v, %v", ok, err)
	}
	if err := f.DeleteChain(TableNAT, "PREROUTING"); err == nil {
		t.Errorf("DeleteChain of a built-in chain succeeded")
	}
	if got := f.Dump(TableNAT); got != emptyNAT {
		t.Errorf("nat after cleanup:\n%s", got)
	}
	if _, err := f.ChainExists("bogus", "X"); err == nil {
		t.Errorf("ChainExists in a missing table gave no error")
	}
}
