package bed

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// WaitTimeout bounds the waiters below.
var WaitTimeout = 30 * time.Second

// Eventually polls cond every 100 ms until it returns true, failing the test with cond's
// last explanation after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var detail string
	for {
		var ok bool
		ok, detail = cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bed: %s: not reached after %v: %s", what, timeout, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitHealthy waits until /healthz answers 200.
func (p *Proxy) WaitHealthy(t testing.TB) {
	t.Helper()
	Eventually(t, WaitTimeout, p.Node.Short+" healthz 200", func() (bool, string) {
		if !p.Running() {
			t.Fatalf("bed: proxy on %s exited: %v\n%s", p.Node.Short, p.proc.err, tailFile(p.LogPath, 50))
		}
		h, err := p.Healthz()
		if err != nil {
			return false, err.Error()
		}
		return h.Code == 200, fmt.Sprintf("status %d: %s", h.Code, h.Body)
	})
}

// WaitHealthzAdvance waits until /healthz reports lastUpdated after since.
func (p *Proxy) WaitHealthzAdvance(t testing.TB, since time.Time) {
	t.Helper()
	Eventually(t, WaitTimeout, p.Node.Short+" healthz lastUpdated advance", func() (bool, string) {
		h, err := p.Healthz()
		if err != nil {
			return false, err.Error()
		}
		return h.LastUpdated.After(since), h.Body
	})
}

// WaitMetric waits until the sum of metric name (filtered by `key="value"` labels)
// satisfies pred.
func (p *Proxy) WaitMetric(t testing.TB, name string, pred func(float64) bool, labels ...string) {
	t.Helper()
	Eventually(t, WaitTimeout, p.Node.Short+" metric "+name, func() (bool, string) {
		text, err := p.Metrics()
		if err != nil {
			return false, err.Error()
		}
		v, ok := MetricValue(text, name, labels...)
		if !ok {
			return false, "no sample"
		}
		return pred(v), fmt.Sprintf("value %v", v)
	})
}

// WaitSynced waits for a rules sync that ended after since
// (kubeproxy_sync_proxy_rules_last_timestamp_seconds).
func (p *Proxy) WaitSynced(t testing.TB, since time.Time) {
	t.Helper()
	sec := float64(since.UnixNano()) / 1e9
	p.WaitMetric(t, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", func(v float64) bool { return v >= sec })
}

// IPTablesSave returns `iptables-save` (`ip6tables-save` for ipv6) inside the node.
func (n *Node) IPTablesSave(ipv6 bool) (string, error) {
	cmd := "iptables-save"
	if ipv6 {
		cmd = "ip6tables-save"
	}
	return n.NS.Exec(cmd)
}

// WaitIPTables waits until iptables-save in the node contains (or, with present false,
// no longer contains) s.
func (n *Node) WaitIPTables(t testing.TB, s string, present bool) {
	t.Helper()
	n.waitRules(t, false, s, present)
}

// WaitIP6Tables is WaitIPTables for ip6tables-save.
func (n *Node) WaitIP6Tables(t testing.TB, s string, present bool) {
	t.Helper()
	n.waitRules(t, true, s, present)
}

func (n *Node) waitRules(t testing.TB, ipv6 bool, s string, present bool) {
	t.Helper()
	what := fmt.Sprintf("%s rules contain %q = %v (ipv6 %v)", n.Short, s, present, ipv6)
	Eventually(t, WaitTimeout, what, func() (bool, string) {
		out, err := n.IPTablesSave(ipv6)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(out, s) == present, fmt.Sprintf("%d bytes of rules", len(out))
	})
}

// ExecInNS runs a command in ns and fails the test on error; it returns the output.
func ExecInNS(t testing.TB, ns *Namespace, name string, args ...string) string {
	t.Helper()
	out, err := ns.Exec(name, args...)
	if err != nil {
		t.Fatalf("bed: %v", err)
	}
	return out
}
