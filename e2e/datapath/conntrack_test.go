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
// client stays pinned to the old backend; the WithoutCleanupFails scenarios turn the
// cleanup off (test hook) to prove it is what fixes the first.
//
// The SCTP pair does the same with one association. An association cannot move to
// another pod: once its flow is deleted the client's next chunks reach no endpoint
// that knows it, so the client does what applications do, gives up after a few
// unanswered sends and opens a new association, which the current rules send to the
// new pod. Without the cleanup the old association keeps reaching the old pod.

func init() {
	register("UDPEndpointSwap", func(t *testing.T, e *Env) { ctEndpointSwap(t, e, "UDP") })
	// In IPVS mode the virtual server's own connection table decides the backend (and
	// expire_nodest_conn drops connections to removed real servers), so a stale
	// conntrack flow alone does not pin the client there.
	register("UDPEndpointSwapWithoutCleanupFails",
		func(t *testing.T, e *Env) { ctEndpointSwapWithoutCleanup(t, e, "UDP") }, "iptables")
	register("SCTPEndpointSwap", func(t *testing.T, e *Env) { ctEndpointSwap(t, e, "SCTP") })
	register("SCTPEndpointSwapWithoutCleanupFails",
		func(t *testing.T, e *Env) { ctEndpointSwapWithoutCleanup(t, e, "SCTP") }, "iptables")
}

const (
	// ctInterval is the UDP client's sending period.
	ctInterval = 100 * time.Millisecond
	// ctMaxSends bounds a stream (60 s).
	ctMaxSends = 600
	// ctAfterSwap is how many sends after the first reply from the new backend must
	// all be answered by it.
	ctAfterSwap = 20
	// ctReopenAfter is how many sends in a row without an answer make an SCTP client
	// give up its association and open a new one.
	ctReopenAfter = 5
)

// ctReply is the outcome of one send of a stream.
type ctReply struct {
	at  time.Time
	pod string // "" when no reply came within the interval
	err error
}

// ctFlow is one kept flow a stream sends over: a UDP socket or an SCTP association.
type ctFlow interface {
	Exchange(timeout time.Duration) (bed.Answer, error)
	Close() error
}

type udpFlow struct{ net.Conn }

func (f udpFlow) Exchange(timeout time.Duration) (bed.Answer, error) {
	return bed.UDPExchange(f.Conn, timeout)
}

// ctStream sends a message every ctInterval over one flow and records replies.
type ctStream struct {
	mu      sync.Mutex
	replies []ctReply
	reopens int
	stop    chan struct{}
	done    chan struct{}
}

// ctStartStream opens a flow of protocol from ns to ip:80 and sends on it until Stop
// (or ctMaxSends); it is stopped when the test ends. A UDP stream keeps its socket
// whatever happens; an SCTP stream reopens its association after ctReopenAfter
// unanswered sends.
func ctStartStream(t *testing.T, ns *bed.Namespace, protocol, ip string) *ctStream {
	t.Helper()
	if protocol == "UDP" {
		conn, err := ns.Dial("udp", epAddr(ip, 80), bed.RequestTimeout)
		if err != nil {
			t.Fatalf("udp socket to %s: %v", epAddr(ip, 80), err)
		}
		return ctRunStream(t, udpFlow{conn}, nil)
	}
	open := func() (ctFlow, error) { return sctpDial(ns, ip, 80, bed.RequestTimeout) }
	f, err := open()
	if err != nil {
		t.Fatalf("first %s flow: %v", protocol, err)
	}
	return ctRunStream(t, f, open)
}

func ctRunStream(t *testing.T, f ctFlow, reopen func() (ctFlow, error)) *ctStream {
	s := &ctStream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer func() { f.Close() }()
		tick := time.NewTicker(ctInterval)
		defer tick.Stop()
		unanswered := 0
		for i := 0; i < ctMaxSends; i++ {
			// A reply later than the interval counts as none; a late one may then be read
			// by the next send, which is harmless: only who answered matters.
			a, err := f.Exchange(ctInterval - 10*time.Millisecond)
			s.mu.Lock()
			s.replies = append(s.replies, ctReply{at: time.Now(), pod: a.Pod, err: err})
			s.mu.Unlock()
			if unanswered++; a.Pod != "" {
				unanswered = 0
			}
			if reopen != nil && unanswered >= ctReopenAfter {
				// A failed reopen is retried at the next tick; its error is a reply too.
				if nf, err := reopen(); err == nil {
					f.Close()
					f, unanswered = nf, 0
					s.mu.Lock()
					s.reopens++
					s.mu.Unlock()
				}
			}
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

func (s *ctStream) reopened() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reopens
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
			t.Fatalf("stream: %d of %d replies from %s within %v of %v; replies %v",
				seen, n, pod, bound, t0.Format("15:04:05.000"), ctSummary(s.after(t0)))
		}
		time.Sleep(ctInterval / 2)
	}
}

// ctSwapSetup builds a protocol service (UDP or SCTP) whose only endpoint is old, a
// client pod on node1 with a stream already answered by old, and returns the stream.
func ctSwapSetup(t *testing.T, e *Env, name, protocol string) (old, repl *bed.Pod, ip string, s *ctStream, client *bed.Pod) {
	t.Helper()
	c := e.C
	if protocol == "SCTP" {
		sctpRequire(t, c.Node("node1"))
	}
	old = c.AddPod(t, c.Node("node2"), name+"-old")
	repl = c.AddPod(t, c.Node("node2"), name+"-new")
	client = c.AddPod(t, c.Node("node1"), name+"-client")
	if protocol == "SCTP" {
		sctpServe(t, old, 8080)
		sctpServe(t, repl, 8080)
	}
	ip = e.ClusterIP()
	epApply(t, e, epService(e, name, protocol, ip, nil, epEndpoint(old))...)
	epWaitFirst(t, "first "+protocol+" answer via "+epAddr(ip, 80), epFirstAnswerTimeout,
		ctAsk(client.NS, protocol, ip), old)
	s = ctStartStream(t, client.NS, protocol, ip)
	ctWaitReplies(t, s, time.Time{}, old.Name, 5, 5*time.Second)
	return old, repl, ip, s, client
}

// ctAsk is one request over a new flow.
func ctAsk(ns *bed.Namespace, protocol, ip string) func() (bed.Answer, error) {
	if protocol == "SCTP" {
		return func() (bed.Answer, error) { return sctpRequest(ns, ip, 80, bed.RequestTimeout) }
	}
	return func() (bed.Answer, error) { return ns.UDPRequest(epAddr(ip, 80), bed.RequestTimeout) }
}

// ctFresh counts answers to n new flows and returns them with the matching trace packet.
func ctFresh(client *bed.Pod, protocol, ip string, n int) (bed.Counts, tracePacket) {
	target := epAddr(ip, 80)
	if protocol == "SCTP" {
		return sctpCount(client.NS, ip, 80, n), podPacket(client, target).sctp()
	}
	return client.NS.CountUDPAnswers(target, n), podPacket(client, target).udp()
}

func ctEndpointSwap(t *testing.T, e *Env, protocol string) {
	name := strings.ToLower(protocol) + "swap"
	old, repl, ip, s, client := ctSwapSetup(t, e, name, protocol)

	// Replace the backend. The old pod keeps running, so a stale flow would show as
	// answers from it rather than silence.
	epUpdate(t, e, epSlice(e, name, protocol, epEndpoint(repl)))
	programmed := time.Now()
	bound := epChangeBound(e) + ctInterval
	if protocol == "SCTP" {
		// The client notices the dead association and opens a new one.
		bound += (ctReopenAfter+1)*ctInterval + time.Second
	}
	first := ctWaitReplies(t, s, programmed, repl.Name, 1, bound)
	t.Logf("%s stream: first reply from %s %v after Programmed (bound %v, %d reopened flows)",
		protocol, repl.Name, first.Sub(programmed).Round(time.Millisecond), bound, s.reopened())
	ctWaitReplies(t, s, first, repl.Name, ctAfterSwap, 2*ctAfterSwap*ctInterval+5*time.Second)
	s.Stop()
	after := s.after(first)
	// UDP: every send answered by the new pod. SCTP: a new association may still
	// lose a few answers to the emulated VM's pace (a reply later than the send
	// interval counts as none); up to one reopen's worth, and never the old pod.
	late := 0
	if protocol == "SCTP" {
		late = ctReopenAfter
	}
	if sum := ctSummary(after); sum[repl.Name]+sum["none"] != len(after) || sum["none"] > late {
		t.Errorf("after the first reply from %s, the stream got %v over %d sends, want all from %s (at most %d unanswered)\n%s",
			repl.Name, sum, len(after), repl.Name, late, ctFlows(client.Node, protocol, ip))
	}
	if n := ctSummary(s.after(programmed))[old.Name]; n > 0 {
		t.Logf("%d replies from %s after Programmed (the sync Programmed saw may predate the swap)", n, old.Name)
	}
	// The trace is of a new flow: new flows must match it.
	fresh, pkt := ctFresh(client, protocol, ip, 10)
	e.assertTrace(t, client.Node, pkt, fresh, 8080, old, repl)
}

func ctEndpointSwapWithoutCleanup(t *testing.T, e *Env, protocol string) {
	if protocol == "SCTP" {
		sctpRequire(t, e.C.Node("node1"))
	}
	// Only node1's proxy DNATs the client pod's flow; it runs without cleanup here.
	epRestartWith(t, e.Proxies["node1"], []string{conntrack.DisableEnv + "=1"}, nil)
	name := strings.ToLower(protocol) + "stale"
	old, repl, ip, s, client := ctSwapSetup(t, e, name, protocol)

	epUpdate(t, e, epSlice(e, name, protocol, epEndpoint(repl)))
	programmed := time.Now()
	// The window in which the cleanup would have fixed it (see ctEndpointSwap), and two
	// seconds more.
	window := epChangeBound(e) + ctInterval + 2*time.Second
	if protocol == "SCTP" {
		window += (ctReopenAfter+1)*ctInterval + time.Second
	}
	// Meanwhile a new flow goes through the new rules: they are in place, only the old
	// flow is stuck.
	epWaitFirst(t, "new "+protocol+" flow reaches "+repl.Name, window, ctAsk(client.NS, protocol, ip), repl)
	time.Sleep(time.Until(programmed.Add(window)))
	s.Stop()
	got := s.after(programmed)
	sum := ctSummary(got)
	t.Logf("without conntrack cleanup: %d sends over %v after Programmed: %v (%d reopened flows)",
		len(got), window, sum, s.reopened())
	if sum[repl.Name] != 0 {
		t.Errorf("without conntrack cleanup the old flow reached %s %d times; the test cannot show the cleanup matters\n%s",
			repl.Name, sum[repl.Name], ctFlows(client.Node, protocol, ip))
	}
	if sum[old.Name] == 0 {
		t.Errorf("without conntrack cleanup the stream got no stale answers from %s (%v): the flow was not kept\n%s",
			old.Name, sum, ctFlows(client.Node, protocol, ip))
	}
	// The stale flow disagrees with the rules by design; a new flow must not.
	fresh, pkt := ctFresh(client, protocol, ip, 10)
	e.assertTrace(t, client.Node, pkt, fresh, 8080, old, repl)
}

// ctFlows lists node's conntrack flows of protocol to host, for failure messages.
func ctFlows(n *bed.Node, protocol, host string) string {
	out, err := n.NS.Exec("conntrack", "-L", "-p", strings.ToLower(protocol), "--orig-dst", host)
	if err != nil {
		return fmt.Sprintf("conntrack -L in %s: %v", n.Short, err)
	}
	return fmt.Sprintf("conntrack flows in %s to %s:\n%s", n.Short, host, strings.TrimSpace(out))
}
