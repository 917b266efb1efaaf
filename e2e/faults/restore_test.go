package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// failingRestore is a wrapper put first in the proxy's PATH under the name of the real
// tool: while the counter file holds N > 0 it counts down and fails (after reading its
// input, as a tool refusing a rule would), else it runs the real tool.
const failingRestore = `#!/bin/sh
n=$(cat %[1]q 2>/dev/null || echo 0)
if [ "$n" -gt 0 ]; then
	echo $((n - 1)) > %[1]q
	cat > /dev/null
	echo "iptables-restore: line 1 failed (injected by the faults test)" >&2
	exit 1
fi
exec %[2]q "$@"
`

// restoreWrapper installs failingRestore for tool (e.g. iptables-nft-restore) in a new
// directory and returns it with the counter file.
func restoreWrapper(t *testing.T, tool string) (dir, counter string) {
	t.Helper()
	real := "/usr/sbin/" + tool
	if _, err := os.Stat(real); err != nil {
		t.Fatalf("%s: %v", real, err)
	}
	dir = t.TempDir()
	counter = filepath.Join(dir, "fail-next")
	setCounter(t, counter, 0)
	script := fmt.Sprintf(failingRestore, counter, real)
	if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, counter
}

func setCounter(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreFailureHealthz: while iptables-restore fails, the rules of the last good
// sync stay and carry traffic, the failures are counted, and /healthz turns 503 once a
// change has waited 2 × sync period; when the tool works again, the change is programmed
// and /healthz is 200 again.
func TestRestoreFailureHealthz(t *testing.T) {
	onlyMode(t, "iptables", "IPVS mode programs Services over netlink; TestNetlinkFailureHealthz is its counterpart")
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	dir, counter := restoreWrapper(t, "iptables-nft-restore")
	svc, slice := e.web("web", "198.51.100.20", 0, e.pods...)
	api.Apply(t, svc, slice)
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{
		Args: proxyArgs(syncPeriodArg()),
		Env:  []string{"PATH=" + dir + ":" + os.Getenv("PATH"), "SVCPROXY_IPTABLES_BACKEND=nft"},
	})
	p.WaitHealthy(t)
	pid := p.PID()
	target := addr("198.51.100.20", 80)
	e.waitAnswer(t, target, answerTimeout)
	const failures = `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`
	v4 := `ip_family="IPv4"`
	before := metric(t, p, failures, v4)

	l := startLoad(t, e.client.NS, target)
	setCounter(t, counter, 1000) // fail until healed
	changed := time.Now()
	svc2, slice2 := e.web("web2", "198.51.100.21", 0, e.pods[1])
	api.Apply(t, svc2, slice2)

	p.WaitMetric(t, failures, func(v float64) bool { return v > before }, v4)
	waitUnhealthy(t, p, changed, "restores fail")
	rules := bed.ExecInNS(t, e.node.NS, "iptables-nft-save", "-t", "nat")
	if strings.Contains(rules, "198.51.100.21/32") {
		t.Errorf("web2 programmed although every restore failed")
	}
	if !strings.Contains(rules, "198.51.100.20/32") {
		t.Errorf("web's rules lost after failed restores:\n%s", rules)
	}
	requireSameProcess(t, p, pid)

	setCounter(t, counter, 0)
	healed := metric(t, p, failures, v4)
	e.waitAnswer(t, addr("198.51.100.21", 80), answerTimeout)
	waitHealthyAgain(t, p, "after the tool heals")
	l.Stop(t)
	requireSameProcess(t, p, pid)
	// At most the restore already running when the counter was reset may still fail.
	if after := metric(t, p, failures, v4); after > healed+1 {
		t.Errorf("restore failures went on after healing: %v → %v", healed, after)
	}
}
