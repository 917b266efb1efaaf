package conntrack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// requireKernel skips tests that need root and the given tools. They only
// touch network namespaces they create.
func requireKernel(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping kernel test: needs root to create network namespaces, iptables rules and conntrack entries")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping kernel test: %s not found in PATH (%v)", tool, err)
		}
	}
}

// testNetns is a network namespace made for one test and deleted after it.
type testNetns struct {
	name string
	h    netns.NsHandle
}

func newNetns(t *testing.T, role string) *testNetns {
	t.Helper()
	name := fmt.Sprintf("spct-%d-%s", os.Getpid(), role)
	if _, err := runCmd(nil, "ip", "netns", "add", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := runCmd(nil, "ip", "netns", "del", name); err != nil {
			t.Error(err)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	ns := &testNetns{name: name, h: h}
	ns.run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// runCmd runs a command, inside ns when ns is not nil, for at most 30s,
// and returns its stdout.
func runCmd(ns *testNetns, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ns != nil {
		args = append([]string{"ip", "netns", "exec", ns.name}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// run runs a command inside the namespace and returns its stdout.
func (ns *testNetns) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCmd(ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// do runs fn on an OS thread moved into the namespace. The thread stays
// locked and dies with its goroutine, so no other code ever runs in the
// namespace by accident.
func (ns *testNetns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
