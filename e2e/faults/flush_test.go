package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// repairWithin bounds how long the proxy may take to repair rules another program
// removed: its verification runs every sync period, and the full resync it forces is
// at most a sync period more; the rest is slack for a loaded machine.
const repairWithin = 4 * syncPeriod

// TestChainsFlushedByOther: another program flushes nat KUBE-SERVICES, or deletes the
// mangle canary chain. The proxy notices within a sync period (a check every sync
// period of the canaries and of KUBE-SERVICES' rule count) and restores its rules with a
// full resync, without restarting.
func TestChainsFlushedByOther(t *testing.T) {
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	svc, slice := e.web("web", "198.51.100.40", 0, e.pods...)
	api.Apply(t, svc, slice)
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{
		Args: proxyArgs("--iptables-sync-period=" + syncPeriod.String()),
		Env:  []string{"SVCPROXY_IPTABLES_BACKEND=nft"},
	})
	p.WaitHealthy(t)
	pid := p.PID()
	target := addr("198.51.100.40", 80)
	e.waitAnswer(t, target, answerTimeout)
	ipt := func(args ...string) { bed.ExecInNS(t, e.node.NS, "iptables-nft", args...) }

	t.Run("FlushKubeServices", func(t *testing.T) {
		want := countRules(t, e.node, "KUBE-SERVICES")
		ipt("-t", "nat", "-F", "KUBE-SERVICES")
		flushed := time.Now()
		if got := e.client.NS.TCPConnect(target, time.Second); got.Outcome == bed.Connected {
			t.Fatalf("%s still connects right after KUBE-SERVICES was flushed: the test flushed nothing", target)
		}
		bed.Eventually(t, repairWithin, "traffic restored after KUBE-SERVICES flush", func() (bool, string) {
			a, err := e.client.NS.HTTPGet(target, time.Second)
			if err != nil {
				return false, err.Error()
			}
			return true, a.Pod
		})
		t.Logf("traffic restored %v after the flush", time.Since(flushed).Round(100*time.Millisecond))
		if got := countRules(t, e.node, "KUBE-SERVICES"); got != want {
			t.Errorf("KUBE-SERVICES has %d rules after the repair, %d before the flush", got, want)
		}
		requireSameProcess(t, p, pid)
	})

	t.Run("DeleteCanary", func(t *testing.T) {
		const fullSyncs = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
		v4 := `ip_family="IPv4"`
		before := metric(t, p, fullSyncs, v4)
		ipt("-t", "mangle", "-F", "KUBE-PROXY-CANARY")
		ipt("-t", "mangle", "-X", "KUBE-PROXY-CANARY")
		bed.Eventually(t, repairWithin, "full resync after the canary was deleted", func() (bool, string) {
			v := metric(t, p, fullSyncs, v4)
			return v > before, fmt.Sprintf("full syncs %v, %v before", v, before)
		})
		out := bed.ExecInNS(t, e.node.NS, "iptables-nft-save", "-t", "mangle")
		if !strings.Contains(out, ":KUBE-PROXY-CANARY") {
			t.Errorf("canary chain not re-created by the full resync:\n%s", out)
		}
		e.waitAnswer(t, target, answerTimeout)
		requireSameProcess(t, p, pid)
	})
}

// countRules counts the rules of a nat chain in the node (nft backend).
func countRules(t *testing.T, n *bed.Node, chain string) int {
	t.Helper()
	out := bed.ExecInNS(t, n.NS, "iptables-nft-save", "-t", "nat")
	return strings.Count(out, "\n-A "+chain+" ")
}
