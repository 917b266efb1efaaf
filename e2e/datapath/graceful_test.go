package datapath

import (
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// GracefulTermination: a long TCP connection keeps working while its endpoint is
// removed, new connections go to the endpoints left, and in IPVS mode the real server
// stays at weight 0 until the connection is gone, then disappears.

func init() {
	register("GracefulTermination", testGracefulTermination)
}

const (
	// gracefulConnClose is how long IPVS keeps a connection ended by a RST (its CLOSE
	// state timeout).
	gracefulConnClose = 10 * time.Second
	// gracefulRequests are sent over the long connection after the removal.
	gracefulRequests = 10
)

func testGracefulTermination(t *testing.T, e *Env) {
	c := e.C
	a := c.AddPod(t, c.Node("node2"), "graceful-a")
	b := c.AddPod(t, c.Node("node2"), "graceful-b")
	client := c.AddPod(t, c.Node("node1"), "graceful-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "graceful", "TCP", ip, nil, epEndpoint(a), epEndpoint(b))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), a, b)

	kept := client.NS.KeptConn(target)
	t.Cleanup(kept.Close)
	first, err := kept.Get()
	if err != nil {
		t.Fatalf("first request over the kept connection: %v", err)
	}
	leaving, staying := a, b
	if first.Pod == b.Name {
		leaving, staying = b, a
	}
	t.Logf("kept connection %s reached %s; removing that endpoint", first.Source, leaving.Name)

	epUpdate(t, e, epSlice(e, "graceful", "TCP", epEndpoint(staying)))
	// New connections reach only the endpoint left.
	epWaitExact(t, client.NS, target, epChangeBound(e), staying)

	// The kept connection still works, on the same pod and the same source port.
	for i := 0; i < gracefulRequests; i++ {
		ans, err := kept.Get()
		switch {
		case err != nil:
			t.Fatalf("request %d over the kept connection after the removal: %v", i+1, err)
		case ans.Pod != leaving.Name || ans.Source != first.Source:
			t.Fatalf("request %d over the kept connection: answered by %s from %s, want %s from %s (the same connection)",
				i+1, ans.Pod, ans.Source, leaving.Name, first.Source)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if e.Mode != "ipvs" {
		// iptables mode: the conntrack flow keeps the connection; nothing to remove.
		kept.Close()
		return
	}

	node1 := client.Node
	rs := epAddr(leaving.IP.String(), 8080)
	if w, ok := gracefulWeight(t, node1, target, rs); !ok || w != "0" {
		t.Errorf("while its connection is open, real server %s has weight %q (present %v), want 0", rs, w, ok)
	}
	kept.Close()
	closed := time.Now()
	// Gone once IPVS forgets the connection and a sync checks (the periodic one at the latest).
	bound := gracefulConnClose + ipvsSyncPeriod + epChangeBound(e) + 5*time.Second
	bed.Eventually(t, bound, "real server "+rs+" deleted after its connection closed", func() (bool, string) {
		w, ok := gracefulWeight(t, node1, target, rs)
		return !ok, "weight " + w
	})
	t.Logf("real server %s deleted %v after its last connection ended", rs, time.Since(closed).Round(time.Millisecond))
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "after the graceful termination", counts, epRequests, staying)
}

// gracefulWeight returns real server rs's weight under virtual server vs in node's IPVS
// table, and whether it is there.
func gracefulWeight(t *testing.T, n *bed.Node, vs, rs string) (string, bool) {
	out := bed.ExecInNS(t, n.NS, "ipvsadm", "-Ln", "-t", vs)
	for _, line := range strings.Split(out, "\n") {
		// "  -> 203.0.113.5:8080   Masq    1      0          0"
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "->" && f[1] == rs {
			return f[3], true
		}
	}
	return "", false
}
