package iptables

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// fakeSaves answers "tool args" with canned output; anything else fails, as
// a missing tool would.
func fakeSaves(outputs map[string]string) (CommandRunner, *[]string) {
	var calls []string
	return func(name string, args ...string) ([]byte, error) {
		cmd := strings.Join(append([]string{name}, args...), " ")
		calls = append(calls, cmd)
		out, ok := outputs[cmd]
		if !ok {
			return nil, errors.New("exit status 1")
		}
		return []byte(out), nil
	}, &calls
}

const (
	hintMangle   = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	canaryMangle = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
	emptyMangle  = "*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
)

func rulesSave(n int) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
	for i := 0; i < n; i++ {
		b.WriteString("-A INPUT -j ACCEPT\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func TestDetectBackendWith(t *testing.T) {
	cases := []struct {
		name    string
		family  v1.IPFamily
		outputs map[string]string
		want    Backend
		wantErr bool
	}{{
		name:   "hint in nft mangle wins over more legacy rules",
		family: v1.IPv4Protocol,
		outputs: map[string]string{
			"iptables-nft-save -t mangle": hintMangle, "iptables-legacy-save -t mangle": canaryMangle,
			"iptables-legacy-save": rulesSave(50), "iptables-nft-save": rulesSave(1),
		},
		want: NFT,
	}, {
		name:   "canary in legacy mangle",
		family: v1.IPv4Protocol,
		outputs: map[string]string{
			"iptables-nft-save -t mangle": emptyMangle, "iptables-legacy-save -t mangle": canaryMangle,
			"iptables-legacy-save": rulesSave(0), "iptables-nft-save": rulesSave(9),
		},
		want: Legacy,
	}, {
		name:   "hint only in the other family's nft tables",
		family: v1.IPv4Protocol,
		outputs: map[string]string{
			"iptables-nft-save -t mangle": emptyMangle, "ip6tables-nft-save -t mangle": hintMangle,
			"iptables-legacy-save -t mangle": emptyMangle,
		},
		want: NFT,
	}, {
		name:   "no hint, legacy has more rules over both families",
		family: v1.IPv6Protocol,
		outputs: map[string]string{
			"ip6tables-legacy-save": rulesSave(2), "iptables-legacy-save": rulesSave(2),
			"ip6tables-nft-save": rulesSave(3),
		},
		want: Legacy,
	}, {
		name:   "no hint, nft has more rules",
		family: v1.IPv4Protocol,
		outputs: map[string]string{
			"iptables-legacy-save": rulesSave(1), "iptables-nft-save": rulesSave(4),
		},
		want: NFT,
	}, {
		name:    "tie on an empty host goes to nft",
		family:  v1.IPv4Protocol,
		outputs: map[string]string{"iptables-legacy-save": rulesSave(0), "iptables-nft-save": rulesSave(0)},
		want:    NFT,
	}, {
		name:   "hint named only in a rule, not declared, does not count",
		family: v1.IPv4Protocol,
		outputs: map[string]string{
			"iptables-nft-save -t mangle": "*mangle\n-A PREROUTING -m comment --comment KUBE-IPTABLES-HINT -j ACCEPT\nCOMMIT\n",
			"iptables-legacy-save":        rulesSave(5), "iptables-nft-save": rulesSave(1),
		},
		want: Legacy,
	}, {
		name:    "no tool runs",
		family:  v1.IPv4Protocol,
		outputs: map[string]string{},
		wantErr: true,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run, calls := fakeSaves(tc.outputs)
			got, err := DetectBackendWith(tc.family, run)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("DetectBackendWith = %q, %v; want %q, error %v (calls %q)", got, err, tc.want, tc.wantErr, *calls)
			}
		})
	}
}

func TestDetectBackendEnv(t *testing.T) {
	for _, tc := range []struct {
		env     string
		want    Backend
		wantErr bool
	}{{"legacy", Legacy, false}, {"nft", NFT, false}, {" nft\n", NFT, false}, {"iptables", "", true}} {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(BackendEnv, tc.env)
			got, err := DetectBackend(v1.IPv4Protocol)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("DetectBackend with %s=%q = %q, %v; want %q, error %v", BackendEnv, tc.env, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// nsRunner runs the tools inside namespace ns.
func nsRunner(ns string) CommandRunner {
	return func(name string, args ...string) ([]byte, error) {
		return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).Output()
	}
}

func TestDetectBackendReal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup []string // iptables command making kubelet's hint
		want  Backend
	}{
		{"nft hint", []string{"iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}, NFT},
		{"legacy hint", []string{"iptables-legacy", "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}, Legacy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetNS(t)
			isolateLock(t, Legacy)
			if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, tc.setup...)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", tc.setup, err, out)
			}
			got, err := DetectBackendWith(v1.IPv4Protocol, nsRunner(ns))
			if err != nil || got != tc.want {
				t.Errorf("DetectBackendWith in %s = %q, %v; want %q", ns, got, err, tc.want)
			}
		})
	}
}
