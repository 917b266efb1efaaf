package sysctl

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Keys under /proc/sys/net belong to the network namespace of the thread
// that opens them. These tests verify that on the real kernel, writing only
// inside a namespace they create.

func newNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and writes sysctls inside it")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "svcpx-sysctl-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	return name
}

// inNetNS runs f on a locked thread switched into ns. The thread is never
// unlocked, so it exits with the goroutine instead of going back to the pool.
func inNetNS(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			done <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			done <- err
			return
		}
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("enter netns %s: %v", ns, err)
	}
}

// readInNS reads a key with a subprocess in ns, the `ip netns exec` way.
func readInNS(t *testing.T, ns, name string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/"+name).Output()
	if err != nil {
		t.Fatalf("ip netns exec %s cat %s: %v", ns, name, err)
	}
	return strings.TrimSpace(string(out))
}

func TestProcInNetNS(t *testing.T) {
	ns := newNetNS(t)
	keys := []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet"}
	p := New()
	hostBefore := map[string]string{}
	for _, k := range keys {
		v, err := p.Get(k)
		if err != nil {
			t.Fatalf("Get %s in the host namespace: %v", k, err)
		}
		hostBefore[k] = v
		if got := readInNS(t, ns, k); got != "0" {
			t.Fatalf("fresh namespace has %s=%s, want 0", k, got)
		}
	}

	var errs []error
	got := map[string]string{}
	inNetNS(t, ns, func() {
		for _, k := range keys {
			if _, err := EnsureValue(p, k, "1"); err != nil {
				errs = append(errs, err)
			}
			v, err := p.Get(k)
			errs = append(errs, err)
			got[k] = v
		}
		// Read-only key (mode 0444): even root gets EACCES.
		if err := p.Set("net/ipv4/conf/all/mc_forwarding", "1"); !errors.Is(err, ErrReadOnly) {
			errs = append(errs, errors.New("Set of read-only mc_forwarding: want ErrReadOnly, got "+errString(err)))
		}
		if err := p.Set("net/ipv4/no_such_key", "1"); !errors.Is(err, ErrNotExist) {
			errs = append(errs, errors.New("Set of a missing key: want ErrNotExist, got "+errString(err)))
		}
		if _, err := p.Get("net/ipv4/no_such_key"); !errors.Is(err, ErrNotExist) {
			errs = append(errs, errors.New("Get of a missing key: want ErrNotExist, got "+errString(err)))
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if got[k] != "1" {
			t.Errorf("Get %s on the namespace thread = %q, want 1", k, got[k])
		}
		if v := readInNS(t, ns, k); v != "1" {
			t.Errorf("%s seen by a process in the namespace = %q, want 1", k, v)
		}
		if v, err := p.Get(k); err != nil || v != hostBefore[k] {
			t.Errorf("host %s = %q, %v after the test; want it unchanged at %q", k, v, err, hostBefore[k])
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
