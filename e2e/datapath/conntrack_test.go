package datapath

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/e2e/bed"
)

// Conntrack scenarios: a UDP client keeps one socket (one conntrack flow) while its
// backend is replaced. The proxy must delete the stale flow after the sync, or the
// client stays pinned to the old backend; the second scenario turns the cleanup off
// (test hook) to prove it is what fixes the first.

func init() {
	register("UDPEndpointSwap", testUDPEndpointSwap)
	// In IPVS mode the virtual server's own connection table decides the backend (and
	// expire_nodest_conn drops connections to removed real servers), so a stale
	// conntrack flow alone does not pin the client there.
	register("UDPEndpointSwapWithoutCleanupFails", testUDPEndpointSwapWithoutCleanup, "iptables")
}

const (
	// ctInterval is the UDP client's sending period.
	ctInterval = 100 * time.Millisecond
	// ctMaxSends bounds a stream (60 s).
	ctMaxSends = 600
	// ctAfterSwap is how many sends after the first reply from the new backend must
	// all be answered by it.
	ctAfterSwap = 20
)

// ctReply is the outcome of one send of a stream.
type ctReply struct {
	at  time.Time
	pod string // "" when no reply came within the interval
	err error
}

// ctStream sends a datagram every ctInterval over one UDP socket and records replies.
type ctStream struct {
	mu      sync.Mutex
	replies []ctReply
	stop    chan struct{}
	done    chan struct{}
}

// ctStartStream opens one UDP socket from ns to target and sends on it until Stop (or
// ctMaxSends); it is stopped when the test ends.
func ctStartStream(t *testing.T, ns *bed.Namespace, target string) *ctStream {
	t.Helper()
	conn, err := ns.Dial("udp", target, bed.RequestTimeout)
	if err != nil {
		t.Fatalf("udp socket to %s: %v", target, err)
	}
	s := &ctStream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close()
		tick := time.NewTicker(ctInterval)
		defer tick.Stop()
		for i := 0; i < ctMaxSends; i++ {
			// A reply later than the interval counts as none; a late one may then be read
			// by the next send, which is harmless: only who answered matters.
			a, err := bed.UDPExchange(conn, ctInterval-10*time.Millisecond)
			s.mu.Lock()
			s.replies = append(s.replies, ctReply{at: time.Now(), pod: a.Pod, err: err})
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.Stop)
	return s
}

// Stop ends the stream and waits for its sender.
func (s *ctStream) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// after returns the replies recorded at or after t0.
func (s *ctStream) after(t0 time.Time) []ctReply {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ctReply
	for _, r := range s.replies {
		if !r.at.Before(t0) {
			out = append(out, r)
		}
	}
	return out
}

// ctSummary counts replies by pod ("none" for no reply).
func ctSummary(rs []ctReply) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		if r.pod == "" {
			m["none"]++
			continue
		}
		m[r.pod]++
	}
	return m
}

// ctWaitReplies waits (bounded) until the stream has n replies from pod after t0 and
// returns when the n-th came.
func ctWaitReplies(t *testing.T, s *ctStream, t0 time.Time, pod string, n int, bound time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		seen := 0
		for _, r := range s.after(t0) {
			if r.pod == pod {
				seen++
				if seen == n {
					return r.at
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("UDP stream: %d of %d replies from %s within %v of %v; replies %v",
				seen, n, pod, bound, t0.Format("15:04:05.000"), ctSummary(s.after(t0)))
		}
		time.Sleep(ctInterval / 2)
	}
}

// ctSwapSetup builds a UDP service whose only endpoint is old, a client pod on node1
// with a stream already answered by old, and returns the stream.
func ctSwapSetup(t *testing.T, e *Env, name string) (old, repl *bed.Pod, target string, s *ctStream, client *bed.Pod) {
	t.Helper()
	c := e.C
	old = c.AddPod(t, c.Node("node2"), name+"-old")
	repl = c.AddPod(t, c.Node("node2"), name+"-new")
	client = c.AddPod(t, c.Node("node1"), name+"-client")
	ip := e.ClusterIP()
	target = epAddr(ip, 80)
	epApply(t, e, epService(e, name, "UDP", ip, nil, epEndpoint(old))...)
	epWaitFirst(t, "first UDP answer via "+target, epFirstAnswerTimeout, func() (bed.Answer, error) {
		return client.NS.UDPRequest(target, bed.RequestTimeout)
	}, old)
	s = ctStartStream(t, client.NS, target)
	ctWaitReplies(t, s, time.Time{}, old.Name, 5, 5*time.Second)
	return old, repl, target, s, client
}

func testUDPEndpointSwap(t *testing.T, e *Env) {
	old, repl, target, s, client := ctSwapSetup(t, e, "udpswap")

	// Replace the backend. The old pod keeps running, so a stale flow would show as
	// answers from it rather than silence.
	epUpdate(t, e, epSlice(e, "udpswap", "UDP", epEndpoint(repl)))
	programmed := time.Now()
	bound := epChangeBound(e) + ctInterval
	first := ctWaitReplies(t, s, programmed, repl.Name, 1, bound)
	t.Logf("UDP stream over one socket: first reply from %s %v after Programmed (bound %v)",
		repl.Name, first.Sub(programmed).Round(time.Millisecond), bound)
	ctWaitReplies(t, s, first, repl.Name, ctAfterSwap, 2*ctAfterSwap*ctInterval+5*time.Second)
	s.Stop()
	after := s.after(first)
	if sum := ctSummary(after); sum[repl.Name] != len(after) {
		t.Errorf("after the first reply from %s, the stream got %v over %d sends, want all from %s\n%s",
			repl.Name, sum, len(after), repl.Name, ctFlows(client.Node, target))
	}
	if n := ctSummary(s.after(programmed))[old.Name]; n > 0 {
		t.Logf("%d replies from %s after Programmed (the sync Programmed saw may predate the swap)", n, old.Name)
	}
	// The trace is of a new flow: new sockets must match it.
	fresh := client.NS.CountUDPAnswers(target, 10)
	e.assertTrace(t, client.Node, podPacket(client, target).udp(), fresh, 8080, old, repl)
}

func testUDPEndpointSwapWithoutCleanup(t *testing.T, e *Env) {
	// Only node1's proxy DNATs the client pod's flow; it runs without cleanup here.
	epRestartWith(t, e.Proxies["node1"], []string{conntrack.DisableEnv + "=1"}, nil)
	old, repl, target, s, client := ctSwapSetup(t, e, "udpstale")

	epUpdate(t, e, epSlice(e, "udpstale", "UDP", epEndpoint(repl)))
	programmed := time.Now()
	// The window in which the cleanup would have fixed it (see UDPEndpointSwap), and two
	// seconds more.
	window := epChangeBound(e) + ctInterval + 2*time.Second
	// Meanwhile a new socket (a new flow) goes through the new rules: they are in place,
	// only the old flow is stuck.
	epWaitFirst(t, "new UDP socket reaches "+repl.Name, window, func() (bed.Answer, error) {
		return client.NS.UDPRequest(target, bed.RequestTimeout)
	}, repl)
	time.Sleep(time.Until(programmed.Add(window)))
	s.Stop()
	got := s.after(programmed)
	sum := ctSummary(got)
	t.Logf("without conntrack cleanup: %d sends over %v after Programmed: %v", len(got), window, sum)
	if sum[repl.Name] != 0 {
		t.Errorf("without conntrack cleanup the old flow reached %s %d times; the test cannot show the cleanup matters\n%s",
			repl.Name, sum[repl.Name], ctFlows(client.Node, target))
	}
	if sum[old.Name] == 0 {
		t.Errorf("without conntrack cleanup the stream got no stale answers from %s (%v): the flow was not kept\n%s",
			old.Name, sum, ctFlows(client.Node, target))
	}
	// The stale flow disagrees with the rules by design; a new flow must not.
	fresh := client.NS.CountUDPAnswers(target, 10)
	e.assertTrace(t, client.Node, podPacket(client, target).udp(), fresh, 8080, old, repl)
}

// ctFlows lists node's UDP conntrack flows to target's address, for failure messages.
func ctFlows(n *bed.Node, target string) string {
	host, _, _ := net.SplitHostPort(target)
	out, err := n.NS.Exec("conntrack", "-L", "-p", "udp", "--orig-dst", host)
	if err != nil {
		return fmt.Sprintf("conntrack -L in %s: %v", n.Short, err)
	}
	return fmt.Sprintf("conntrack flows in %s to %s:\n%s", n.Short, host, strings.TrimSpace(out))
}
