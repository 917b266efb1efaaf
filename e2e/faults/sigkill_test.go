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

// TestSIGKILLMidSync: the proxy is SIGKILLed in the middle of a sync of a burst of
// changes, then started again. A client sending to an unchanged service all along sees
// no failed request, and once the restarted proxy has synced, the kernel state equals
// the one a fresh proxy builds on a clean node for the same objects: the nat and filter
// tables in iptables mode; in IPVS mode also the virtual and real servers, ipsets and
// kube-ipvs0's addresses.
//
// iptables mode kills while an iptables-restore child of the proxy runs. IPVS mode has no
// child to watch: the node's link to the apiserver is cut while the burst is written, so
// the proxy receives every change at once when the link is back, and the kill comes while
// the kernel holds only part of the burst (some bulk virtual servers switched, others not).
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
		// Alternate every bulk service between one pod and both, so every burst
		// rewrites all their chains (real servers).
		bulk = bulkServices(e, e.pods[:1+attempt%2])
		if proxyMode() == "ipvs" {
			caught = killDuringIPVSSync(t, e, p, bulk, attempt%2 == 1)
			continue
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			applyAll(t, api, bulk)
		}()
		caught = killDuringRestore(t, p, done)
		<-done
	}
	if !caught {
		t.Fatalf("no sync of the proxy caught in the act during %d bursts of %d changes", killAttempts, killServices)
	}
	restarted := time.Now()
	p.Restart(t)
	p.WaitHealthy(t)
	waitSyncedBoth(t, p, restarted)
	l.Stop(t)
	got := kernelState(t, e.node)

	// The reference: a fresh proxy on a node whose state was removed.
	p.Stop(t)
	cleanNode(t, e.node, p)
	fresh := time.Now()
	p.Restart(t)
	p.WaitHealthy(t)
	waitSyncedBoth(t, p, fresh)
	want := kernelState(t, e.node)
	for what := range want {
		if got[what] != want[what] {
			dir := t.TempDir()
			_ = os.WriteFile(filepath.Join(dir, "after-kill"), []byte(got[what]), 0o644)
			_ = os.WriteFile(filepath.Join(dir, "fresh"), []byte(want[what]), 0o644)
			t.Errorf("%s after SIGKILL and restart differs from a fresh proxy's (%s): %s", what, dir, firstDiff(got[what], want[what]))
		}
	}
	if n := strings.Count(got["iptables-nft-save"], "-A KUBE-SERVICES "); proxyMode() == "iptables" && n < killServices*killPorts {
		t.Errorf("only %d KUBE-SERVICES rules, want at least %d", n, killServices*killPorts)
	}
	if n := strings.Count(got["ipvs"], "-A -t "); proxyMode() == "ipvs" && n < killServices*killPorts {
		t.Errorf("only %d virtual servers, want at least %d", n, killServices*killPorts)
	}
}

func applyAll(t *testing.T, api *bed.APIServer, objs []runtime.Object) {
	for _, o := range objs {
		if err := bed.Apply(api.Client, o); err != nil {
			t.Errorf("burst: %v", err)
			return
		}
	}
}

// kernelState is what TestSIGKILLMidSync compares, by name.
func kernelState(t *testing.T, n *bed.Node) map[string]string {
	t.Helper()
	if proxyMode() == "ipvs" {
		return map[string]string{"ipvs": ipvsNormalized(t, n)}
	}
	got := map[string]string{}
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		got[tool] = saveNormalized(t, n, tool)
	}
	return got
}

// cleanNode removes what a proxy of the package's mode leaves in the node.
func cleanNode(t *testing.T, n *bed.Node, p *bed.Proxy) {
	t.Helper()
	if proxyMode() == "ipvs" {
		if out, err := n.NS.Exec(p.Binary, "--cleanup"); err != nil {
			t.Fatalf("svcproxy --cleanup: %v\n%s", err, tail(out, 20))
		}
		return
	}
	flushAll(t, n)
}

// killDuringIPVSSync writes bulk while the node cannot reach the apiserver, lets the
// proxy see it all at once, and SIGKILLs the proxy when some but not all bulk virtual
// servers have pod2 in the state bulk gives them (active when withPod2, else not).
// It reports false when the sync finished between two looks.
func killDuringIPVSSync(t *testing.T, e *env, p *bed.Proxy, bulk []runtime.Object, withPod2 bool) bool {
	t.Helper()
	pod2 := e.pods[1].IP.String()
	e.node.CutAPI(t)
	applyAll(t, e.api, bulk)
	e.node.RestoreAPI(t)
	total := killServices * killPorts
	deadline := time.Now().Add(2 * time.Minute) // the informers' reconnect backoff and a slow sync
	for time.Now().Before(deadline) {
		// web keeps pod2 throughout: one more active entry.
		n := activeRealServers(t, e.node, pod2) - 1
		switched := n
		if !withPod2 {
			switched = total - n
		}
		if switched > 0 && switched < total {
			pid := p.PID()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill proxy %d: %v", pid, err)
			}
			t.Logf("SIGKILLed proxy %d with %d of %d bulk virtual servers switched", pid, switched, total)
			bed.Eventually(t, 10*time.Second, "killed proxy gone", func() (bool, string) { return !p.Running(), "" })
			return true
		}
		if switched == total {
			t.Logf("burst fully synced between two looks")
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the proxy did not apply the burst within 2 minutes")
	return false
}

// activeRealServers counts the real servers at address ip with a weight above 0.
func activeRealServers(t *testing.T, n *bed.Node, ip string) int {
	t.Helper()
	c := 0
	for _, l := range strings.Split(bed.ExecInNS(t, n.NS, "ipvsadm", "-Sn"), "\n") {
		if strings.Contains(l, " -r "+ip+":") && !strings.HasSuffix(strings.TrimSpace(l), " -w 0") {
			c++
		}
	}
	return c
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
