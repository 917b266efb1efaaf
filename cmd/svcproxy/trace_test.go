package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/trace"
)

// TestTraceLiveKernel restores rendered rules into a throwaway network
// namespace and runs the built binary's `trace` there against the live
// kernel (iptables-save and netlink addresses of that namespace).
func TestTraceLiveKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	bin := filepath.Join(t.TempDir(), "svcproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ns := fmt.Sprintf("svcproxy-trace-%d", os.Getpid())
	run := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
		}
		return string(out)
	}
	run("", "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns, err, out)
		}
	})
	inNS := func(args ...string) []string { return append([]string{"ip", "netns", "exec", ns}, args...) }
	run("", inNS("ip", "link", "set", "lo", "up")...)
	// A veth pair, as the kernel of the bed may lack the dummy module.
	run("", inNS("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")...)
	run("", inNS("ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")...)
	run("", inNS("ip", "link", "set", "eth0", "up")...)

	code, rules, stderr := runSub(t, "", "render", "-f", examplesDir, "--node-name", "node1", "--node-ip", "192.0.2.11", "--cluster-cidr", "203.0.113.0/25")
	if code != 0 {
		t.Fatalf("render: exit %d: %s", code, stderr)
	}
	run(rules, inNS("iptables-restore")...)

	tests := []struct {
		name      string
		args      []string
		verdict   string
		endpoints []string
		masq      bool
	}{
		{"pod to ClusterIP", []string{"--src", "203.0.113.5", "--dst", "198.51.100.10", "--port", "80", "--from-pod"},
			"DNAT", []string{"203.0.113.2:8080 0.5", "203.0.113.66:8080 0.5"}, false},
		{"NodePort on the node's address (netlink)", []string{"--src", "192.0.2.101", "--dst", "192.0.2.11", "--port", "30080"},
			"DNAT", []string{"203.0.113.2:8080 1"}, false},
		{"node to sticky ClusterIP", []string{"--src", "192.0.2.11", "--dst", "198.51.100.12", "--port", "80", "--from-node"},
			"DNAT", []string{"203.0.113.2:8080 0.5", "203.0.113.66:8080 0.5"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := run("", inNS(append([]string{bin, "trace", "-o", "json"}, tc.args...)...)...)
			var r trace.Result
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			var eps []string
			for _, e := range r.Endpoints {
				eps = append(eps, fmt.Sprintf("%s %g", e.Endpoint, e.Probability))
			}
			if r.Mode != "iptables" || r.Verdict != tc.verdict || r.Masquerade != tc.masq || !slices.Equal(eps, tc.endpoints) {
				t.Errorf("mode %s verdict %s masq %v endpoints %v; want iptables %s %v %v (reason %q)",
					r.Mode, r.Verdict, r.Masquerade, eps, tc.verdict, tc.masq, tc.endpoints, r.Reason)
			}
		})
	}
}
