package faults

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// lockHold is how long another process holds the xtables lock.
const lockHold = 5 * time.Second

// TestXtablesLockHeld: with the legacy backend, another process holds the xtables lock
// for lockHold while a Service is added. The proxy waits (its rules do not change while
// the lock is held), does not crash, keeps serving the existing Service, and programs the
// new one once the lock is free. XTABLES_LOCKFILE points the proxy's tools and the holder
// at a lock file of this test, so the host's /run/xtables.lock is not involved.
//
// In IPVS mode a new Service changes no iptables rule (they match ipsets), so the lock
// is held while the proxy starts instead, when its first sync must write them.
func TestXtablesLockHeld(t *testing.T) {
	bed.RequireRoot(t)
	if _, err := exec.LookPath("flock"); err != nil {
		t.Fatalf("flock (util-linux) is needed: %v", err)
	}
	api := bed.API(t)
	e := newEnv(t, api)
	lockFile := filepath.Join(t.TempDir(), "xtables.lock")
	svc, slice := e.web("web", "198.51.100.30", 0, e.pods...)
	api.Apply(t, svc, slice)
	spec := bed.ProxySpec{
		Args: proxyArgs(syncPeriodArg()),
		Env:  []string{"SVCPROXY_IPTABLES_BACKEND=legacy", "XTABLES_LOCKFILE=" + lockFile},
	}
	if proxyMode() == "ipvs" {
		lockHeldAtStart(t, e, spec, lockFile)
		return
	}
	p := e.c.StartProxyWith(t, e.node, spec)
	p.WaitHealthy(t)
	pid := p.PID()
	target := addr("198.51.100.30", 80)
	e.waitAnswer(t, target, answerTimeout)
	if rules := legacyNAT(t, e.node); !strings.Contains(rules, "198.51.100.30/32") {
		t.Fatalf("web is not in the legacy nat table; is the proxy on the legacy backend?\n%s", rules)
	}

	l := startLoad(t, e.client.NS, target)
	holder := holdLock(t, lockFile, lockHold)
	svc2, slice2 := e.web("web2", "198.51.100.31", 0, e.pods[1])
	api.Apply(t, svc2, slice2)
	for holder.running() {
		if strings.Contains(legacyNAT(t, e.node), "198.51.100.31/32") && holder.running() {
			t.Fatalf("web2 programmed while another process held %s: the proxy's tools ignore XTABLES_LOCKFILE or take no lock", lockFile)
		}
		requireSameProcess(t, p, pid)
		time.Sleep(200 * time.Millisecond)
	}
	e.waitAnswer(t, addr("198.51.100.31", 80), answerTimeout)
	l.Stop(t)
	requireSameProcess(t, p, pid)
}

// lockHeldAtStart: the proxy starts while another process holds the xtables lock. Its
// first sync waits for the lock (and, held longer than the tools wait, fails and is
// retried), the proxy does not crash, and once the lock is free the Service answers. The
// hold is long enough for the proxy to reach its sync under the VM's emulated CPU: its
// ipsets, written just before the iptables rules, must appear while the lock is held.
func lockHeldAtStart(t *testing.T, e *env, spec bed.ProxySpec, lockFile string) {
	holder := holdLock(t, lockFile, 3*lockHold)
	p := e.c.StartProxyWith(t, e.node, spec)
	pid := p.PID()
	inSync := false
	for holder.running() {
		if strings.Contains(legacyNAT(t, e.node), "KUBE-CLUSTER-IP") && holder.running() {
			t.Fatalf("IPVS-mode rules written while another process held %s: the proxy's tools ignore XTABLES_LOCKFILE or take no lock", lockFile)
		}
		if sets, err := e.node.NS.Exec("ipset", "list", "-n"); err == nil && strings.Contains(sets, "KUBE-CLUSTER-IP") {
			inSync = true
		}
		requireSameProcess(t, p, pid)
		time.Sleep(200 * time.Millisecond)
	}
	if !inSync {
		t.Fatalf("the proxy did not reach its first sync in the %v the lock was held: nothing was tested", 3*lockHold)
	}
	p.WaitHealthy(t)
	e.waitAnswer(t, addr("198.51.100.30", 80), answerTimeout)
	if rules := legacyNAT(t, e.node); !strings.Contains(rules, "KUBE-CLUSTER-IP") {
		t.Errorf("IPVS-mode rules not in the legacy nat table after the lock was freed:\n%s", rules)
	}
	requireSameProcess(t, p, pid)
}

// legacyNAT is iptables-legacy-save of the nat table in the node (the save tool takes
// no lock).
func legacyNAT(t *testing.T, n *bed.Node) string {
	t.Helper()
	return bed.ExecInNS(t, n.NS, "iptables-legacy-save", "-t", "nat")
}

type lockHolder struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (h *lockHolder) running() bool {
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// holdLock starts `flock -x file sleep d` and returns once the lock is taken. The lock is
// flock(2) on the file, which is what the legacy tools take.
func holdLock(t *testing.T, file string, d time.Duration) *lockHolder {
	t.Helper()
	cmd := exec.Command("flock", "-x", file, "sh", "-c", "echo locked; exec sleep "+strconv.Itoa(int(d.Seconds())))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start flock: %v", err)
	}
	h := &lockHolder{cmd: cmd, done: make(chan struct{})}
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		s, _ := r.ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, r)
		_ = cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		if h.running() {
			_ = cmd.Process.Kill()
		}
		<-h.done
	})
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "locked" {
			t.Fatalf("flock holder said %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("flock did not take %s within 10s", file)
	}
	return h
}
