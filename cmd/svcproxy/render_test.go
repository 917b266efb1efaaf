package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/trace"
)

const examplesDir = "../../manifests/examples"

// runSub runs the svcproxy command in-process with stdin, as execute does,
// and returns the exit code exitCode gives.
func runSub(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := newRootCommand(nil)
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	err := cmd.ExecuteContext(context.Background())
	if err != nil {
		fmt.Fprintln(&errb, err)
	}
	return exitCode(err), out.String(), errb.String()
}

func TestRenderExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"examples", []string{"render", "-f", examplesDir, "--node-name", "node1"}, 0, nil},
		{"malformed dump", []string{"render", "-f", "../../render/testdata/malformed.yaml"}, 3, []string{
			"skipped: Service ns/noports", "skipped: Servcie ns/typo", "skipped: EndpointSlice ns/orphan",
			"skipped: Service ns/badip", "skipped: EndpointSlice ns/good-1", "8 objects or values skipped"}},
		{"unknown flag", []string{"render", "--nope"}, 2, []string{"unknown flag"}},
		{"no file", []string{"render"}, 2, []string{"needs -f"}},
		{"bad family", []string{"render", "-f", examplesDir, "--ip-family", "IPv5"}, 2, []string{"--ip-family"}},
		{"format of the other mode", []string{"render", "-f", examplesDir, "--format", "state"}, 2, []string{"--format"}},
		{"missing file", []string{"render", "-f", "does-not-exist.yaml"}, 1, []string{"does-not-exist.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runSub(t, "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestRenderMalformedRendersTheRest(t *testing.T) {
	code, out, _ := runSub(t, "", "render", "-f", "../../render/testdata/malformed.yaml")
	if code != exitPartial || !strings.Contains(out, `"ns/good:http -> 203.0.113.30:8080"`) {
		t.Errorf("exit %d, output without ns/good's rules:\n%s", code, out)
	}
}

func TestTraceFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing dst", []string{"trace", "--src", "192.0.2.1", "--port", "80"}, "needs --src, --dst and --port"},
		{"bad ip", []string{"trace", "--src", "192.0.2.x", "--dst", "192.0.2.1", "--port", "80"}, "--src"},
		{"mixed families", []string{"trace", "--src", "2001:db8::1", "--dst", "192.0.2.1", "--port", "80"}, "different IP families"},
		{"pod and node", []string{"trace", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--port", "80", "--from-pod", "--from-node"}, "exclude"},
		{"bad protocol", []string{"trace", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--port", "80", "--protocol", "icmp"}, "--protocol"},
		{"bad port", []string{"trace", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--port", "70000"}, "invalid argument"},
		{"bad output", []string{"trace", "--src", "192.0.2.1", "--dst", "192.0.2.2", "--port", "80", "-o", "yaml"}, "-o"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runSub(t, "", tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 2 saying %q", code, stderr, tc.want)
			}
		})
	}
}

// TestRenderPipeTrace is `svcproxy render ... | svcproxy trace --rules -`
// in-process, for both modes.
func TestRenderPipeTrace(t *testing.T) {
	tests := []struct {
		name, node, ip string
		renderArgs     []string
		traceArgs      []string
		verdict        string
		endpoints      []string
	}{
		{"iptables ClusterIP", "node1", "192.0.2.11", nil,
			[]string{"--src", "203.0.113.5", "--dst", "198.51.100.10", "--port", "80", "--from-pod"},
			"DNAT", []string{"203.0.113.2:8080 0.5", "203.0.113.66:8080 0.5"}},
		{"iptables NodePort with local endpoint", "node1", "192.0.2.11", nil,
			[]string{"--src", "192.0.2.101", "--dst", "192.0.2.11", "--port", "30080"},
			"DNAT", []string{"203.0.113.2:8080 1"}},
		{"iptables NodePort without local endpoint", "node2", "192.0.2.12", nil,
			[]string{"--src", "192.0.2.101", "--dst", "192.0.2.12", "--port", "30080"},
			"DROP", nil},
		{"ipvs ClusterIP", "node1", "192.0.2.11", []string{"--proxy-mode", "ipvs", "--format", "state"},
			[]string{"--mode", "ipvs", "--src", "203.0.113.5", "--dst", "198.51.100.10", "--port", "80", "--from-pod"},
			"DNAT", []string{"203.0.113.2:8080 0.5", "203.0.113.66:8080 0.5"}},
		{"ipvs NodePort (auto mode)", "node1", "192.0.2.11", []string{"--proxy-mode", "ipvs", "--format", "state"},
			[]string{"--src", "192.0.2.101", "--dst", "192.0.2.11", "--port", "30080"},
			"DNAT", []string{"203.0.113.2:8080 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"render", "-f", examplesDir, "--node-name", tc.node, "--node-ip", tc.ip, "--cluster-cidr", "203.0.113.0/25"}, tc.renderArgs...)
			code, rules, stderr := runSub(t, "", args...)
			if code != 0 {
				t.Fatalf("render: exit %d: %s", code, stderr)
			}
			args = append([]string{"trace", "--rules", "-", "--local-address", tc.ip, "-o", "json"}, tc.traceArgs...)
			code, out, stderr := runSub(t, rules, args...)
			if code != 0 {
				t.Fatalf("trace: exit %d: %s", code, stderr)
			}
			var r trace.Result
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("trace output is not JSON: %v\n%s", err, out)
			}
			var eps []string
			for _, e := range r.Endpoints {
				eps = append(eps, fmt.Sprintf("%s %g", e.Endpoint, e.Probability))
			}
			if r.Verdict != tc.verdict || !slices.Equal(eps, tc.endpoints) {
				t.Errorf("verdict %s endpoints %v, want %s %v (reason %q)", r.Verdict, eps, tc.verdict, tc.endpoints, r.Reason)
			}
		})
	}
}
