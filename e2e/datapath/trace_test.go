package datapath

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// Trace checks: after a scenario has counted real answers, `svcproxy trace` run in the
// node namespace where the packet enters must predict the same set of pods and the same
// masquerade outcome (SCENARIOS.md). A disagreement is a failing test: either the
// tracer or the rules are wrong.

// tracePacket describes the first packet of a connection as `svcproxy trace` takes it.
type tracePacket struct {
	Src, Dst string
	Port     int32
	Protocol string // tcp (default), udp, sctp
	Origin   string // "pod" (--from-pod), "node" (--from-node) or "" (from outside)
}

// podPacket is a packet from pod p to target ("ip:port"), in target's family.
func podPacket(p *bed.Pod, target string) tracePacket {
	pkt := clientPacket(p.IP, p.IPv6, target)
	pkt.Origin = "pod"
	return pkt
}

// externalPacket is a packet from client cl (outside the cluster) to target.
func externalPacket(cl *bed.Client, target string) tracePacket {
	return clientPacket(cl.IP, cl.IPv6, target)
}

func clientPacket(ip4, ip6 net.IP, target string) tracePacket {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		panic("datapath: bad target " + target)
	}
	n, _ := strconv.Atoi(port)
	src := ip4
	if strings.Contains(host, ":") {
		src = ip6
	}
	return tracePacket{Src: src.String(), Dst: host, Port: int32(n), Protocol: "tcp"}
}

// udp returns the packet as UDP.
func (p tracePacket) udp() tracePacket { p.Protocol = "udp"; return p }

// sctp returns the packet as SCTP.
func (p tracePacket) sctp() tracePacket { p.Protocol = "sctp"; return p }

func (p tracePacket) String() string {
	origin := p.Origin
	if origin == "" {
		origin = "external"
	}
	return p.Protocol + " " + p.Src + " -> " + net.JoinHostPort(p.Dst, strconv.Itoa(int(p.Port))) + " from " + origin
}

// traceResult is the part of `svcproxy trace -o json` (schema 1) the checks use.
type traceResult struct {
	SchemaVersion int    `json:"schemaVersion"`
	Mode          string `json:"mode"`
	Verdict       string `json:"verdict"`
	Handled       bool   `json:"handled"`
	Service       string `json:"service"`
	Endpoints     []struct {
		Endpoint    string  `json:"endpoint"`
		Probability float64 `json:"probability"`
		Masquerade  bool    `json:"masquerade"`
	} `json:"endpoints"`
	Masquerade bool   `json:"masquerade"`
	Affinity   bool   `json:"affinity"`
	Reason     string `json:"reason"`
	raw        string
}

// trace runs the proxies' svcproxy binary's trace subcommand inside node's namespace,
// in the Env's mode, and decodes its JSON.
func (e *Env) trace(t *testing.T, node *bed.Node, pkt tracePacket) traceResult {
	t.Helper()
	bin := bed.ProxyBinary(t)
	if p := e.Proxies[node.Short]; p != nil && p.Binary != "" {
		bin = p.Binary
	}
	args := []string{"trace", "--src", pkt.Src, "--dst", pkt.Dst, "--port", strconv.Itoa(int(pkt.Port)),
		"--protocol", pkt.Protocol, "--mode", e.Mode, "-o", "json"}
	switch pkt.Origin {
	case "pod":
		args = append(args, "--from-pod")
	case "node":
		args = append(args, "--from-node")
	}
	// stdout only: the binary's logs go to stderr.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := node.NS.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		t.Fatalf("trace %s in %s: %v\nstderr: %s", pkt, node.Short, err, stderr.String())
	}
	out := stdout.String()
	var r traceResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("trace %s in %s: decode %q: %v", pkt, node.Short, out, err)
	}
	if r.SchemaVersion != 1 || r.Mode != e.Mode {
		t.Fatalf("trace %s in %s: schemaVersion %d mode %q, want 1 and %q:\n%s", pkt, node.Short, r.SchemaVersion, r.Mode, e.Mode, out)
	}
	r.raw = out
	return r
}

// assertTrace traces pkt in node (where it enters) and compares it with the answers a
// scenario just counted for the same packet shape: the endpoints with probability > 0
// are exactly the pods that answered (each pod of pods mapped to its address:targetPort
// in pkt's family), and masquerading agrees with the sources the pods saw (masqueraded
// ⇔ a pod saw another address than pkt.Src). With ClientIP affinity a client sticks to
// one pod, so the answering pods need only be among the predicted ones.
func (e *Env) assertTrace(t *testing.T, node *bed.Node, pkt tracePacket, answered bed.Counts, targetPort int32, pods ...*bed.Pod) traceResult {
	t.Helper()
	r := e.trace(t, node, pkt)
	byAddr := map[string]string{} // ip:port -> pod
	addrOf := map[string]string{} // pod -> ip:port
	for _, p := range pods {
		ip := p.IP
		if strings.Contains(pkt.Dst, ":") {
			ip = p.IPv6
		}
		a := net.JoinHostPort(ip.String(), strconv.Itoa(int(targetPort)))
		byAddr[a], addrOf[p.Name] = p.Name, a
	}
	got := map[string]bool{} // predicted endpoints
	var masq, plain bool     // predicted for the endpoints that answered
	for _, ep := range r.Endpoints {
		if ep.Probability <= 0 {
			continue
		}
		got[ep.Endpoint] = true
		if answered.ByPod[byAddr[ep.Endpoint]] > 0 {
			masq = masq || ep.Masquerade
			plain = plain || !ep.Masquerade
		}
	}
	want := map[string]bool{} // answered endpoints
	for pod, n := range answered.ByPod {
		if n == 0 {
			continue
		}
		a, ok := addrOf[pod]
		if !ok {
			t.Fatalf("trace check: pod %s answered but is not one of the candidates given", pod)
		}
		want[a] = true
	}
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	defer func() {
		t.Helper()
		if len(problems) > 0 {
			t.Errorf("trace %s in %s disagrees with real traffic (%v, sources %v):\n  %s\ntrace:\n%s",
				pkt, node.Short, answered, answered.Sources, strings.Join(problems, "\n  "), r.raw)
		}
	}()
	if len(want) == 0 {
		fail("trace check given no answers; use assertTraceNoAnswer")
		return r
	}
	if r.Verdict != "DNAT" {
		fail("verdict %s, want DNAT", r.Verdict)
	}
	for a := range want {
		if !got[a] {
			fail("%s (%s) answered but the trace does not predict it (predicted %v)", a, byAddr[a], traceKeys(got))
		}
	}
	if !r.Affinity {
		for a := range got {
			if !want[a] {
				fail("trace predicts %s (%s) but it never answered (answered %v)", a, byAddr[a], traceKeys(want))
			}
		}
	}
	sawMasq, sawPlain := false, answered.Sources[pkt.Src] > 0
	for src, n := range answered.Sources {
		sawMasq = sawMasq || (src != pkt.Src && n > 0)
	}
	if sawMasq != masq || sawPlain != plain {
		fail("pods saw masqueraded=%v unmasqueraded=%v, trace predicts masqueraded=%v unmasqueraded=%v",
			sawMasq, sawPlain, masq, plain)
	}
	return r
}

// assertTraceAffinity checks that the trace of pkt reports ClientIP affinity as on.
func (e *Env) assertTraceAffinity(t *testing.T, r traceResult, on bool) {
	t.Helper()
	if r.Affinity != on {
		t.Errorf("trace reports affinity %v, want %v:\n%s", r.Affinity, on, r.raw)
	}
}

// assertTraceNoAnswer traces pkt in node for a scenario where it got no answer: the
// verdict must be one of verdicts and no endpoint may be predicted.
func (e *Env) assertTraceNoAnswer(t *testing.T, node *bed.Node, pkt tracePacket, verdicts ...string) traceResult {
	t.Helper()
	r := e.trace(t, node, pkt)
	ok := false
	for _, v := range verdicts {
		ok = ok || r.Verdict == v
	}
	var predicted []string
	for _, ep := range r.Endpoints {
		if ep.Probability > 0 {
			predicted = append(predicted, ep.Endpoint)
		}
	}
	if !ok || len(predicted) > 0 {
		t.Errorf("trace %s in %s disagrees with real traffic (no answer): verdict %s endpoints %v, want a verdict in %v and none\ntrace:\n%s",
			pkt, node.Short, r.Verdict, predicted, verdicts, r.raw)
	}
	return r
}

// assertTraceRefused makes one bounded TCP connection attempt from ns to target and
// checks the trace of pkt in node against its outcome: refused (RST or ICMP) ⇔ REJECT,
// nothing back ⇔ DROP. The modes may differ here (IPVS answers a virtual server without
// real servers itself), so the real outcome decides.
func (e *Env) assertTraceRefused(t *testing.T, node *bed.Node, pkt tracePacket, ns *bed.Namespace, target string) {
	t.Helper()
	r := ns.TCPConnect(target, time.Second)
	switch r.Outcome {
	case bed.Refused, bed.Unreachable:
		e.assertTraceNoAnswer(t, node, pkt, "REJECT")
	case bed.TimedOut:
		e.assertTraceNoAnswer(t, node, pkt, "DROP")
	default:
		t.Errorf("connect to %s: %s after %v (%v), want refused or no answer", target, r.Outcome, r.Elapsed, r.Err)
	}
}

func traceKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
