package iptables

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// leftovers lists what remains of ours in f: chains named KUBE-* other than
// kubelet's KUBE-FIREWALL, and rules of built-in chains jumping elsewhere
// than KUBE-FIREWALL.
func leftovers(f *Fake) []string {
	var out []string
	for _, tbl := range f.State().Tables {
		for _, c := range tbl.Chains {
			if strings.HasPrefix(c.Name, "KUBE-") && c.Name != chainKubeletFirewall {
				out = append(out, tbl.Name+"/"+c.Name)
			}
			if c.Policy == "-" {
				continue
			}
			for _, r := range c.Rules {
				if r.Target() != chainKubeletFirewall {
					out = append(out, tbl.Name+"/"+c.Name+": "+r.ArgString())
				}
			}
		}
	}
	return out
}

func TestCleanup(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, f *Fake)
	}{
		{name: "nothing installed", prepare: func(*testing.T, *Fake) {}},
		{name: "after a sync", prepare: func(t *testing.T, f *Fake) {
			mustSync(t, NewProxier(f, testOptions()), traceSnapshot())
		}},
		{name: "after an IPv4 sync without localhost nodeports", prepare: func(t *testing.T, f *Fake) {
			opts := testOptions()
			opts.LocalhostNodePorts = false
			mustSync(t, NewProxier(f, opts), traceSnapshot())
		}},
		{name: "leftovers of an older run", prepare: func(t *testing.T, f *Fake) {
			mustSync(t, NewProxier(f, testOptions()), traceSnapshot())
			// A jump with another comment, and a service chain nobody knows.
			if err := f.EnsureRule(Append, TableNAT, "OUTPUT", "-m", "comment", "--comment", "kube-proxy of old", "-j", chainServices); err != nil {
				t.Fatal(err)
			}
			if err := f.Restore([]byte("*nat\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n-A KUBE-SEP-AAAAAAAAAAAAAAAA -j KUBE-MARK-MASQ\nCOMMIT\n")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(v1.IPv4Protocol)
			tc.prepare(t, f)
			if err := Cleanup(f); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			if l := leftovers(f); len(l) > 0 {
				t.Errorf("left behind:\n%s", strings.Join(l, "\n"))
			}
			before := string(f.SaveAll())
			if err := Cleanup(f); err != nil {
				t.Fatalf("second Cleanup: %v", err)
			}
			assertSameState(t, string(f.SaveAll()), before)
		})
	}
}
