package bed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Answer is what an echo server replies: its pod, the source address it saw and the local
// port the request arrived on.
type Answer struct {
	Pod    string `json:"pod"`
	Source string `json:"source"`
	Port   int    `json:"port"`
}

// SourceIP is the IP part of Source.
func (a Answer) SourceIP() string {
	host, _, err := net.SplitHostPort(a.Source)
	if err != nil {
		return a.Source
	}
	return host
}

type echoServer struct {
	servers []*http.Server
	packets []net.PacketConn
	wg      sync.WaitGroup
}

// startEcho serves HTTP on each TCP port and echoes UDP datagrams on the same ports, all
// on sockets created inside ns (wildcard addresses, both families).
func startEcho(ns *Namespace, pod string, ports []int) (*echoServer, error) {
	e := &echoServer{}
	for _, port := range ports {
		addr := fmt.Sprintf(":%d", port)
		l, err := ns.Listen("tcp", addr)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("echo listen tcp %s in %s: %w", addr, ns.Name, err)
		}
		srv := &http.Server{Handler: echoHandler(pod), ReadHeaderTimeout: 5 * time.Second}
		e.servers = append(e.servers, srv)
		e.wg.Add(1)
		go func() { defer e.wg.Done(); _ = srv.Serve(l) }()

		pc, err := ns.ListenPacket("udp", addr)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("echo listen udp %s in %s: %w", addr, ns.Name, err)
		}
		e.packets = append(e.packets, pc)
		e.wg.Add(1)
		go func() { defer e.wg.Done(); serveUDPEcho(pc, pod, port) }()
	}
	return e, nil
}

func echoHandler(pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		port := 0
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
			port = a.Port
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Answer{Pod: pod, Source: r.RemoteAddr, Port: port})
	})
}

func serveUDPEcho(pc net.PacketConn, pod string, port int) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		b, _ := json.Marshal(Answer{Pod: pod, Source: from.String(), Port: port})
		_, _ = pc.WriteTo(b, from)
	}
}

// Close stops serving and waits for the serving goroutines.
func (e *echoServer) Close() {
	for _, s := range e.servers {
		s.Close()
	}
	for _, pc := range e.packets {
		pc.Close()
	}
	e.wg.Wait()
}

// HTTPGet sends one GET over a new connection from inside the namespace to target
// ("ip:port", "[ip6]:port") and decodes the echo answer.
func (n *Namespace) HTTPGet(target string, timeout time.Duration) (Answer, error) {
	return getAnswer(n.DialContext, target, timeout)
}

func getAnswer(dial func(ctx context.Context, network, addr string) (net.Conn, error), target string, timeout time.Duration) (Answer, error) {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	return answerOver(&http.Client{Transport: tr, Timeout: timeout}, target)
}

// answerOver sends one GET to target through c and decodes the echo answer.
func answerOver(c *http.Client, target string) (Answer, error) {
	resp, err := c.Get("http://" + target + "/")
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	var a Answer
	if resp.StatusCode != http.StatusOK {
		return a, fmt.Errorf("GET %s: status %d", target, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return a, fmt.Errorf("decode answer from %s: %w", target, err)
	}
	return a, nil
}

// HTTPGetReset is HTTPGet over a connection the client ends with a RST (SO_LINGER 0)
// instead of a FIN: no TIME_WAIT is left on the path, so the connection-tracking
// tables (conntrack, IPVS) forget it within seconds.
func (n *Namespace) HTTPGetReset(target string, timeout time.Duration) (Answer, error) {
	return getAnswer(n.dialReset, target, timeout)
}

// dialReset connects from inside the namespace with SO_LINGER 0, so closing the
// connection sends a RST.
func (n *Namespace) dialReset(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := n.DialContext(ctx, network, addr)
	if tc, ok := c.(*net.TCPConn); ok {
		if lerr := tc.SetLinger(0); lerr != nil {
			c.Close()
			return nil, fmt.Errorf("set SO_LINGER 0: %w", lerr)
		}
	}
	return c, err
}

// KeptConn sends HTTP requests from a namespace over one TCP connection (keep-alive),
// which Close ends with a RST.
type KeptConn struct {
	tr     *http.Transport
	client *http.Client
	target string
}

// KeptConn opens no connection yet: the first Get does.
func (n *Namespace) KeptConn(target string) *KeptConn {
	tr := &http.Transport{DialContext: n.dialReset, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute}
	return &KeptConn{tr: tr, client: &http.Client{Transport: tr, Timeout: RequestTimeout}, target: target}
}

// Get sends one request over the kept connection and decodes the echo answer.
func (k *KeptConn) Get() (Answer, error) { return answerOver(k.client, k.target) }

// Close ends the connection.
func (k *KeptConn) Close() { k.tr.CloseIdleConnections() }

// UDPRequest sends one datagram from a new socket and waits for the echo answer.
func (n *Namespace) UDPRequest(target string, timeout time.Duration) (Answer, error) {
	conn, err := n.Dial("udp", target, timeout)
	if err != nil {
		return Answer{}, err
	}
	defer conn.Close()
	return UDPExchange(conn, timeout)
}

// UDPExchange sends one datagram on conn and reads one answer; use it on a long-lived
// socket (n.Dial("udp", ...)) to keep one conntrack entry.
func UDPExchange(conn net.Conn, timeout time.Duration) (Answer, error) {
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Answer{}, err
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		return Answer{}, err
	}
	buf := make([]byte, 2048)
	k, err := conn.Read(buf)
	if err != nil {
		return Answer{}, err
	}
	var a Answer
	if err := json.Unmarshal(buf[:k], &a); err != nil {
		return a, fmt.Errorf("decode udp answer: %w", err)
	}
	return a, nil
}

// Counts tallies repeated requests.
type Counts struct {
	ByPod    map[string]int // answers per pod
	Sources  map[string]int // source IPs the pods saw
	Failures int
	Errors   []string // distinct failure messages (at most 5)
}

func (c Counts) String() string {
	var pods []string
	for p, k := range c.ByPod {
		pods = append(pods, fmt.Sprintf("%s=%d", p, k))
	}
	sort.Strings(pods)
	return fmt.Sprintf("answers[%s] failures=%d %v", strings.Join(pods, " "), c.Failures, c.Errors)
}

func (c *Counts) add(a Answer, err error) {
	if err != nil {
		c.Failures++
		msg := err.Error()
		for _, e := range c.Errors {
			if e == msg {
				return
			}
		}
		if len(c.Errors) < 5 {
			c.Errors = append(c.Errors, msg)
		}
		return
	}
	c.ByPod[a.Pod]++
	c.Sources[a.SourceIP()]++
}

// RequestTimeout bounds each request made by CountAnswers and CountUDPAnswers.
var RequestTimeout = 2 * time.Second

// CountAnswers makes n HTTP requests (each on a new connection) to target.
func (n *Namespace) CountAnswers(target string, count int) Counts {
	c := Counts{ByPod: map[string]int{}, Sources: map[string]int{}}
	for range count {
		c.add(n.HTTPGet(target, RequestTimeout))
	}
	return c
}

// CountAnswersReset is CountAnswers with HTTPGetReset.
func (n *Namespace) CountAnswersReset(target string, count int) Counts {
	c := Counts{ByPod: map[string]int{}, Sources: map[string]int{}}
	for range count {
		c.add(n.HTTPGetReset(target, RequestTimeout))
	}
	return c
}

// CountUDPAnswers sends n datagrams, each from a new socket, to target.
func (n *Namespace) CountUDPAnswers(target string, count int) Counts {
	c := Counts{ByPod: map[string]int{}, Sources: map[string]int{}}
	for range count {
		c.add(n.UDPRequest(target, RequestTimeout))
	}
	return c
}

// ConnectOutcome classifies a TCP connection attempt.
type ConnectOutcome string

const (
	Connected   ConnectOutcome = "connected"
	Refused     ConnectOutcome = "refused"     // RST or ICMP port-unreachable (REJECT)
	Unreachable ConnectOutcome = "unreachable" // ICMP host/net unreachable
	TimedOut    ConnectOutcome = "timeout"     // nothing came back
	OtherError  ConnectOutcome = "error"
)

// ConnectResult is the outcome of TCPConnect.
type ConnectResult struct {
	Outcome ConnectOutcome
	Elapsed time.Duration
	Err     error
}

// TCPConnect tries one TCP connection from inside the namespace and classifies the result.
func (n *Namespace) TCPConnect(target string, timeout time.Duration) ConnectResult {
	start := time.Now()
	conn, err := n.Dial("tcp", target, timeout)
	r := ConnectResult{Elapsed: time.Since(start), Err: err}
	switch {
	case err == nil:
		conn.Close()
		r.Outcome = Connected
	case errors.Is(err, syscall.ECONNREFUSED):
		r.Outcome = Refused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		r.Outcome = Unreachable
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		r.Outcome = TimedOut
	default:
		r.Outcome = OtherError
	}
	return r
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func readAllLimited(r io.Reader, n int64) string {
	b, _ := io.ReadAll(io.LimitReader(r, n))
	return string(b)
}
