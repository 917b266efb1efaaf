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
// full resync, without restarting. IPVS mode has no canary; its check lists the virtual
// servers and counts KUBE-SERVICES' rules (a virtual server deleted with ipvsadm is
// TestDatapath/ipvs/IPVSVirtualServerDeletedComesBack).
func TestChainsFlushedByOther(t *testing.T) {
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	svc, slice := e.web("web", "198.51.100.40", 0, e.pods...)
	api.Apply(t, svc, slice)
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{
		Args: proxyArgs(syncPeriodArg()),
		Env:  []string{"SVCPROXY_IPTABLES_BACKEND=nft"},
	})
	p.WaitHealthy(t)
	pid := p.PID()
	target := addr("198.51.100.40", 80)
	e.waitAnswer(t, target, answerTimeout)
	ipt := func(args ...string) { bed.ExecInNS(t, e.node.NS, "iptables-nft", args...) }

	t.Run("FlushKubeServices", func(t *testing.T) {
		want := countRules(t, e.node, "KUBE-SERVICES")
		if want == 0 {
			t.Fatalf("nat KUBE-SERVICES is empty before the flush")
		}
		ipt("-t", "nat", "-F", "KUBE-SERVICES")
		flushed := time.Now()
		// In IPVS mode the virtual server still DNATs a client outside the cluster
		// without these rules (they mark for masquerade and accept), so only the
		// rules themselves show the repair.
		if got := e.client.NS.TCPConnect(target, time.Second); proxyMode() == "iptables" && got.Outcome == bed.Connected {
			t.Fatalf("%s still connects right after KUBE-SERVICES was flushed: the test flushed nothing", target)
		}
		bed.Eventually(t, repairWithin, "traffic restored after KUBE-SERVICES flush", func() (bool, string) {
			a, err := e.client.NS.HTTPGet(target, time.Second)
			if err != nil {
				return false, err.Error()
			}
			return true, a.Pod
		})
		bed.Eventually(t, repairWithin, "KUBE-SERVICES rules restored", func() (bool, string) {
			got := countRules(t, e.node, "KUBE-SERVICES")
			return got == want, fmt.Sprintf("%d rules, %d before the flush", got, want)
		})
		t.Logf("traffic and rules restored %v after the flush", time.Since(flushed).Round(100*time.Millisecond))
		requireSameProcess(t, p, pid)
	})

	t.Run("DeleteCanary", func(t *testing.T) {
		onlyMode(t, "iptables", "IPVS mode keeps no canary chain")
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
