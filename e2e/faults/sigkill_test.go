package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"k8s.io/apimachinery/pkg/runtime"
)

const (
	// killServices × killPorts service ports, each with two endpoints, make a sync long
	// enough to be caught in the act.
	killServices = 200
	killPorts    = 3
	// killAttempts bounds the bursts of changes made to catch a sync in progress.
	killAttempts = 5
)

// TestSIGKILLMidSync: the proxy is SIGKILLed while iptables-restore runs for a burst of
// changes, then started again. A client sending to an unchanged service all along sees
// no failed request, and once the restarted proxy has synced, the nat and filter tables
// equal those a fresh proxy builds on a clean node for the same objects.
func TestSIGKILLMidSync(t *testing.T) {
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	svc, slice := e.web("web", "198.51.100.5", 0, e.pods...)
	objs := []runtime.Object{svc, slice}
	bulk := bulkServices(e, e.pods)
	api.Apply(t, objs...)
	api.Apply(t, bulk...)
	spec := bed.ProxySpec{Args: proxyArgs(), Env: []string{"SVCPROXY_IPTABLES_BACKEND=nft"}}
	p := e.c.StartProxyWith(t, e.node, spec)
	p.WaitHealthy(t)
	target := addr("198.51.100.5", 80)
	e.waitAnswer(t, target, answerTimeout)

	l := startLoad(t, e.client.NS, target)
	caught := false
	for attempt := 0; attempt < killAttempts && !caught; attempt++ {
		// Alternate every bulk service between both pods and one, so every burst
		// rewrites all their chains.
		bulk = bulkServices(e, e.pods[:1+attempt%2])
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, o := range bulk {
				if err := bed.Apply(api.Client, o); err != nil {
					t.Errorf("burst: %v", err)
					return
				}
			}
		}()
		caught = killDuringRestore(t, p, done)
		<-done
	}
	if !caught {
		t.Fatalf("no iptables-restore of the proxy seen during %d bursts of %d changes", killAttempts, killServices)
	}
	restarted := time.Now()
	p.Restart(t)
	p.WaitHealthy(t)
	waitSyncedBoth(t, p, restarted)
	l.Stop(t)
	got := map[string]string{}
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		got[tool] = saveNormalized(t, e.node, tool)
	}

	// The reference: a fresh proxy on a node whose tables were emptied.
	p.Stop(t)
	flushAll(t, e.node)
	fresh := time.Now()
	p.Restart(t)
	p.WaitHealthy(t)
	waitSyncedBoth(t, p, fresh)
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		want := saveNormalized(t, e.node, tool)
		if got[tool] != want {
			dir := t.TempDir()
			_ = os.WriteFile(filepath.Join(dir, "after-kill"), []byte(got[tool]), 0o644)
			_ = os.WriteFile(filepath.Join(dir, "fresh"), []byte(want), 0o644)
			t.Errorf("%s after SIGKILL and restart differs from a fresh proxy's (%s): %s", tool, dir, firstDiff(got[tool], want))
		}
	}
	if n := strings.Count(got["iptables-nft-save"], "-A KUBE-SERVICES "); n < killServices*killPorts {
		t.Errorf("only %d KUBE-SERVICES rules, want at least %d", n, killServices*killPorts)
	}
}

// bulkServices returns killServices Services with killPorts ports each (clusterIPs
// allocated by the apiserver) and their slices with pods as endpoints.
func bulkServices(e *env, pods []*bed.Pod) []runtime.Object {
	var objs []runtime.Object
	for i := range killServices {
		name := fmt.Sprintf("bulk-%03d", i)
		var svcOpts []bed.ServiceOption
		sliceOpts := []bed.SliceOption{}
		for j := range killPorts {
			port := fmt.Sprintf("p%d", j)
			svcOpts = append(svcOpts, bed.Port(port, int32(80+j), "TCP", 8080))
			sliceOpts = append(sliceOpts, bed.SlicePort(port, 8080, "TCP"))
		}
		for _, p := range pods {
			sliceOpts = append(sliceOpts, bed.Endpoint(p.IP.String(), bed.OnNode(p.Node.Name)))
		}
		objs = append(objs, bed.Service(e.c.Key(name), svcOpts...), bed.EndpointSlice(e.c.Key(name+"-1"), name, sliceOpts...))
	}
	return objs
}

// killDuringRestore watches the proxy's children until the burst is done; when an
// iptables-restore child shows up it SIGKILLs the proxy and reports true.
func killDuringRestore(t *testing.T, p *bed.Proxy, burstDone <-chan struct{}) bool {
	t.Helper()
	pid := p.PID()
	settle := time.After(30 * time.Second) // bounds the watch after the burst
	for {
		for _, child := range children(pid) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child))
			if strings.Contains(string(comm), "restore") || strings.HasPrefix(string(comm), "iptables-nft-re") {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill proxy %d: %v", pid, err)
				}
				t.Logf("SIGKILLed proxy %d while %s (pid %d) ran", pid, strings.TrimSpace(string(comm)), child)
				bed.Eventually(t, 10*time.Second, "killed proxy gone", func() (bool, string) { return !p.Running(), "" })
				return true
			}
		}
		select {
		case <-settle:
			return false
		case <-burstDone:
			// Keep watching a little: the last changes are still being synced.
			burstDone = nil
			settle = time.After(5 * time.Second)
		default:
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// children lists the child processes of pid (all its threads).
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(s); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// waitSyncedBoth waits for a sync of each family that ended after since.
func waitSyncedBoth(t *testing.T, p *bed.Proxy, since time.Time) {
	t.Helper()
	sec := float64(since.UnixNano()) / 1e9
	for _, fam := range []string{"IPv4", "IPv6"} {
		p.WaitMetric(t, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", func(v float64) bool { return v >= sec }, `ip_family="`+fam+`"`)
	}
}

// flushAll empties and deletes every chain of the nft backend's tables in the node.
func flushAll(t *testing.T, n *bed.Node) {
	t.Helper()
	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		for _, table := range []string{"nat", "filter", "mangle"} {
			bed.ExecInNS(t, n.NS, tool, "-t", table, "-F")
			bed.ExecInNS(t, n.NS, tool, "-t", table, "-X")
		}
	}
}
