package ipvssmoke

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/svcproxy/svcproxy/e2e/vm"
)

// guest skips the test outside the VM: these tests program IPVS, links and
// rules, which belong in the VM's kernel and never on the host.
func guest(t *testing.T) {
	t.Helper()
	if !vm.InGuest() {
		t.Skipf("runs only inside the test VM (%s=1); see e2e/vm TestSmoke", vm.GuestEnv)
	}
}

// newNS creates a named network namespace, deleted when the test ends.
func newNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// sh runs a command and fails the test with its output when it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs fn on an OS thread switched into ns. Sockets created by fn stay
// in ns and may be used from any goroutine afterwards.
func inNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when the goroutine ends.
		return fmt.Errorf("return to netns: %w", err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// serve answers every connection on l with reply, until l is closed.
func serve(l net.Listener, reply string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s %s\n", reply, c.RemoteAddr())
		c.Close()
	}
}
