package iptables

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// Everything here that touches the kernel runs inside a network namespace
// the test creates and deletes; never in the host's.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and programs iptables inside them")
	}
}

// newNetNS creates a throwaway namespace and removes it when the test ends.
func newNetNS(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "svcpx-ipt-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	return name
}

// isolateLock gives legacy tools a private lock file, so this test neither
// waits for nor blocks anything else on the host using /run/xtables.lock.
func isolateLock(t *testing.T, b Backend) {
	t.Helper()
	if b == Legacy {
		t.Setenv("XTABLES_LOCKFILE", filepath.Join(t.TempDir(), "xtables.lock"))
	}
}

func newTestKernel(t *testing.T, family v1.IPFamily, b Backend) (Kernel, string) {
	t.Helper()
	ns := newNetNS(t)
	isolateLock(t, b)
	k, err := NewKernel(family, b, WithNetNS(ns))
	if err != nil {
		t.Fatalf("NewKernel(%s, %s): %v", family, b, err)
	}
	return k, ns
}

var backends = []Backend{Legacy, NFT}

func mustSave(t *testing.T, k Kernel, table Table) string {
	t.Helper()
	out, err := k.Save(table)
	if err != nil {
		t.Fatalf("Save(%s): %v", table, err)
	}
	return string(out)
}

// ruleLines keeps the KUBE-* chain declarations (sorted) and the rules
// (grouped by chain, chains sorted, order within a chain kept) of save
// output, dropping counters, comments and built-in policies: the backends
// list chains in different orders.
func ruleLines(save string) []string {
	var decls []string
	rules := map[string][]string{}
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, ":KUBE-"):
			name, _, _ := strings.Cut(l, " ")
			decls = append(decls, name)
		case strings.HasPrefix(l, "-A "):
			chain := strings.Fields(l)[1]
			rules[chain] = append(rules[chain], l)
		}
	}
	sort.Strings(decls)
	chains := make([]string, 0, len(rules))
	for c := range rules {
		chains = append(chains, c)
	}
	sort.Strings(chains)
	out := decls
	for _, c := range chains {
		out = append(out, rules[c]...)
	}
	return out
}

func wantLines(t *testing.T, save string, want ...string) {
	t.Helper()
	got := strings.Join(ruleLines(save), "\n")
	if got != strings.Join(want, "\n") {
		t.Errorf("saved rules:\n%s\nwant:\n%s\nfull save:\n%s", got, strings.Join(want, "\n"), save)
	}
}

const smallRestore = `*filter
:KUBE-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A KUBE-SERVICES -d 198.51.100.20/32 -p tcp -m comment --comment "ns1/none:p80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES -d 198.51.100.10/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 203.0.113.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 203.0.113.5:8080
COMMIT
`

var smallNAT = []string{
	":KUBE-MARK-MASQ", ":KUBE-SEP-BBBBBBBBBBBBBBBB", ":KUBE-SERVICES", ":KUBE-SVC-AAAAAAAAAAAAAAAA",
	"-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
	`-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 203.0.113.5/32 -j KUBE-MARK-MASQ`,
	`-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 203.0.113.5:8080`,
	`-A KUBE-SERVICES -d 198.51.100.10/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA`,
	`-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB`,
}

var smallFilter = []string{
	":KUBE-FORWARD", ":KUBE-SERVICES",
	"-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
	`-A KUBE-SERVICES -d 198.51.100.20/32 -p tcp -m comment --comment "ns1/none:p80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`,
}

func TestKernelRestoreSave(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			k, ns := newTestKernel(t, v1.IPv4Protocol, b)
			if err := k.Restore([]byte(smallRestore)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			wantLines(t, mustSave(t, k, TableNAT), smallNAT...)
			wantLines(t, mustSave(t, k, TableFilter), smallFilter...)
			// --noflush: a second input leaves chains it does not name alone
			// and replaces the ones it declares.
			if err := k.Restore([]byte("*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\nCOMMIT\n")); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			wantLines(t, mustSave(t, k, TableNAT), smallNAT[:len(smallNAT)-1]...)
			// The rules went to the test namespace, not the host's.
			host, err := exec.Command(toolName(v1.IPv4Protocol, b, "-save"), "-t", "nat").Output()
			if err != nil {
				t.Logf("host %s-save: %v (ignored)", b, err)
			}
			if strings.Contains(string(host), "KUBE-SVC-AAAAAAAAAAAAAAAA") {
				t.Errorf("rule restored in namespace %s shows in the host namespace", ns)
			}
		})
	}
}

func TestKernelRestoreErrorKeepsRules(t *testing.T) {
	cases := []struct {
		name     string
		input    string
		wantLine int
		wantRule string
	}{{
		name:     "unknown option",
		input:    "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\n-A KUBE-SERVICES -p tcp --bogus\nCOMMIT\n",
		wantLine: 4, wantRule: "-A KUBE-SERVICES -p tcp --bogus",
	}, {
		name:     "bad mask",
		input:    "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 198.51.100.10/33 -j RETURN\nCOMMIT\n",
		wantLine: 3, wantRule: "-A KUBE-SERVICES -d 198.51.100.10/33 -j RETURN",
	}, {
		name:     "jump to missing chain",
		input:    "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\n-A KUBE-SERVICES -j KUBE-SVC-MISSING\nCOMMIT\n",
		wantLine: 4, wantRule: "-A KUBE-SERVICES -j KUBE-SVC-MISSING",
	}, {
		name:     "append to undeclared chain",
		input:    "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-NOT-DECLARED -j RETURN\nCOMMIT\n",
		wantLine: 3, wantRule: "-A KUBE-NOT-DECLARED -j RETURN",
	}, {
		name:     "garbage line",
		input:    "*nat\n:KUBE-SERVICES - [0:0]\nxxx\nCOMMIT\n",
		wantLine: 3, wantRule: "xxx",
	}}
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			k, _ := newTestKernel(t, v1.IPv4Protocol, b)
			if err := k.Restore([]byte(smallRestore)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					err := k.Restore([]byte(tc.input))
					var re *RestoreError
					if !errors.As(err, &re) {
						t.Fatalf("Restore = %v, want *RestoreError", err)
					}
					if re.Line != tc.wantLine || re.Rule != tc.wantRule {
						t.Errorf("RestoreError at line %d %q, want line %d %q; output: %s",
							re.Line, re.Rule, tc.wantLine, tc.wantRule, re.Output)
					}
					if re.Err == nil || re.Output == "" {
						t.Errorf("RestoreError without cause or output: %#v", re)
					}
					wantLines(t, mustSave(t, k, TableNAT), smallNAT...)
				})
			}
		})
	}
}

func countRule(save, rule string) int {
	n := 0
	for _, l := range strings.Split(save, "\n") {
		if l == rule {
			n++
		}
	}
	return n
}

func TestKernelChainOps(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			k, _ := newTestKernel(t, v1.IPv4Protocol, b)
			const chain = "KUBE-TEST"
			if ok, err := k.ChainExists(TableFilter, chain); err != nil || ok {
				t.Fatalf("ChainExists before create = %v, %v; want false, nil", ok, err)
			}
			for i := 0; i < 2; i++ {
				if err := k.EnsureChain(TableFilter, chain); err != nil {
					t.Fatalf("EnsureChain #%d: %v", i+1, err)
				}
			}
			if ok, err := k.ChainExists(TableFilter, chain); err != nil || !ok {
				t.Fatalf("ChainExists after create = %v, %v; want true, nil", ok, err)
			}
			accept := []string{"-s", "192.0.2.11/32", "-j", "ACCEPT"}
			drop := []string{"-s", "192.0.2.12/32", "-j", "DROP"}
			jump := []string{"-m", "comment", "--comment", "svcproxy test jump", "-j", chain}
			for i := 0; i < 2; i++ {
				if err := k.EnsureRule(Append, TableFilter, chain, accept...); err != nil {
					t.Fatalf("EnsureRule append #%d: %v", i+1, err)
				}
				if err := k.EnsureRule(Prepend, TableFilter, chain, drop...); err != nil {
					t.Fatalf("EnsureRule prepend #%d: %v", i+1, err)
				}
				if err := k.EnsureRule(Prepend, TableFilter, "INPUT", jump...); err != nil {
					t.Fatalf("EnsureRule jump #%d: %v", i+1, err)
				}
			}
			wantLines(t, mustSave(t, k, TableFilter),
				":KUBE-TEST",
				`-A INPUT -m comment --comment "svcproxy test jump" -j KUBE-TEST`,
				"-A KUBE-TEST -s 192.0.2.12/32 -j DROP",
				"-A KUBE-TEST -s 192.0.2.11/32 -j ACCEPT")

			if err := k.EnsureRule(Append, TableFilter, "KUBE-MISSING", accept...); err == nil {
				t.Errorf("EnsureRule into a missing chain succeeded")
			}
			for _, tc := range []struct {
				name  string
				chain string
				args  []string
			}{
				{"missing rule", chain, []string{"-s", "192.0.2.99/32", "-j", "ACCEPT"}},
				{"missing chain", "KUBE-MISSING", accept},
				{"jump to missing chain", "INPUT", []string{"-j", "KUBE-MISSING"}},
			} {
				if err := k.DeleteRule(TableFilter, tc.chain, tc.args...); err != nil {
					t.Errorf("DeleteRule %s: %v", tc.name, err)
				}
			}
			if err := k.DeleteChain(TableFilter, chain); err == nil {
				t.Errorf("DeleteChain of a chain in use succeeded")
			}
			if err := k.DeleteRule(TableFilter, "INPUT", jump...); err != nil {
				t.Fatalf("DeleteRule jump: %v", err)
			}
			if n := countRule(mustSave(t, k, TableFilter), `-A INPUT -m comment --comment "svcproxy test jump" -j KUBE-TEST`); n != 0 {
				t.Errorf("jump rule still there %d times after DeleteRule", n)
			}
			if err := k.FlushChain(TableFilter, chain); err != nil {
				t.Fatalf("FlushChain: %v", err)
			}
			wantLines(t, mustSave(t, k, TableFilter), ":KUBE-TEST")
			if err := k.DeleteChain(TableFilter, chain); err != nil {
				t.Fatalf("DeleteChain: %v", err)
			}
			if ok, err := k.ChainExists(TableFilter, chain); err != nil || ok {
				t.Errorf("ChainExists after delete = %v, %v; want false, nil", ok, err)
			}
			for _, table := range []Table{TableFilter, TableNAT} {
				if err := k.FlushChain(table, "KUBE-MISSING"); err != nil {
					t.Errorf("FlushChain missing in %s: %v", table, err)
				}
				if err := k.DeleteChain(table, "KUBE-MISSING"); err != nil {
					t.Errorf("DeleteChain missing in %s: %v", table, err)
				}
			}
		})
	}
}

func TestKernelIPv6(t *testing.T) {
	const input = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]\n" +
		"-A KUBE-SERVICES -d 2001:db8:5::10/128 -p tcp -m tcp --dport 80 -j KUBE-SEP-CCCCCCCCCCCCCCCC\n" +
		"-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp -j DNAT --to-destination [2001:db8:1::5]:8080\nCOMMIT\n"
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			k, _ := newTestKernel(t, v1.IPv6Protocol, b)
			if k.Family() != v1.IPv6Protocol {
				t.Errorf("Family() = %s", k.Family())
			}
			if err := k.Restore([]byte(input)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			wantLines(t, mustSave(t, k, TableNAT),
				":KUBE-SEP-CCCCCCCCCCCCCCCC", ":KUBE-SERVICES",
				"-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp -j DNAT --to-destination [2001:db8:1::5]:8080",
				"-A KUBE-SERVICES -d 2001:db8:5::10/128 -p tcp -m tcp --dport 80 -j KUBE-SEP-CCCCCCCCCCCCCCCC")
			err := k.Restore([]byte("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 198.51.100.10/32 -j RETURN\nCOMMIT\n"))
			var re *RestoreError
			if !errors.As(err, &re) || re.Line != 3 {
				t.Errorf("IPv4 address in ip6tables input: err %v, want RestoreError at line 3", err)
			}
			if err := k.EnsureChain(TableFilter, "KUBE-TEST6"); err != nil {
				t.Fatalf("EnsureChain: %v", err)
			}
			for i := 0; i < 2; i++ {
				if err := k.EnsureRule(Append, TableFilter, "KUBE-TEST6", "-s", "2001:db8:2::11/128", "-j", "ACCEPT"); err != nil {
					t.Fatalf("EnsureRule: %v", err)
				}
			}
			if n := countRule(mustSave(t, k, TableFilter), "-A KUBE-TEST6 -s 2001:db8:2::11/128 -j ACCEPT"); n != 1 {
				t.Errorf("rule present %d times, want 1", n)
			}
		})
	}
}

func TestNewKernelRejects(t *testing.T) {
	for _, tc := range []struct {
		family v1.IPFamily
		b      Backend
	}{{"IPv5", NFT}, {v1.IPv4Protocol, "iptables"}, {v1.IPv4Protocol, ""}} {
		if _, err := NewKernel(tc.family, tc.b); err == nil {
			t.Errorf("NewKernel(%q, %q) succeeded", tc.family, tc.b)
		}
	}
}

func ExampleNewKernel() {
	b, err := DetectBackend(v1.IPv4Protocol)
	if err != nil {
		fmt.Println(err)
		return
	}
	k, err := NewKernel(v1.IPv4Protocol, b)
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = k.Restore([]byte("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"))
}

func TestNewRestoreError(t *testing.T) {
	input := "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n"
	cause := errors.New("exit status 2")
	// Outputs captured from iptables 1.8.9 legacy and nft.
	cases := []struct {
		name, output string
		wantLine     int
		wantRule     string
	}{
		{"legacy parse error", "iptables-restore v1.8.9 (legacy): unknown option \"--bogus\"\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.", 3, "-A KUBE-SERVICES -j RETURN"},
		{"legacy commit failure", "iptables-restore: line 4 failed", 4, "-A KUBE-SERVICES -j KUBE-SVC-X"},
		{"nft commit failure", "iptables-nft-restore: line 2 failed: No chain/target/match by that name.", 2, ":KUBE-SERVICES - [0:0]"},
		{"nft missing jump target blames COMMIT", "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KUBE-SVC-X' does not exist\nError occurred at line: 5\nTry `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.", 4, "-A KUBE-SERVICES -j KUBE-SVC-X"},
		{"nft bad table", "iptables-nft-restore v1.8.9 (nf_tables): iptables-nft-restore: line 1 table name 'bogus' invalid\nError occurred at line: 1", 1, "*nat"},
		{"missing COMMIT", "iptables-restore: COMMIT expected at line 6", 6, ""},
		{"line past the input", "iptables-restore: line 99 failed", 99, ""},
		{"lock timeout", "Another app is currently holding the xtables lock. Stopped waiting after 5s.", 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			re := newRestoreError([]byte(input), tc.output, cause)
			if re.Line != tc.wantLine || re.Rule != tc.wantRule {
				t.Errorf("line %d %q, want line %d %q", re.Line, re.Rule, tc.wantLine, tc.wantRule)
			}
			if !errors.Is(re, cause) || re.Output != tc.output {
				t.Errorf("cause or output lost: %#v", re)
			}
		})
	}
}

func TestKernelBackend(t *testing.T) {
	for _, b := range backends {
		k, err := NewKernel(v1.IPv4Protocol, b)
		if err != nil {
			t.Fatalf("NewKernel: %v", err)
		}
		if got := KernelBackend(k); got != b {
			t.Errorf("KernelBackend = %q, want %q", got, b)
		}
	}
	var notExec Kernel
	if got := KernelBackend(notExec); got != "" {
		t.Errorf("KernelBackend(nil) = %q, want empty", got)
	}
}
