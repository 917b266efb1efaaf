package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/svcproxy/svcproxy/e2e/vm"
)

const (
	guestOutPrefix = "demo-out|"
	guestDemo      = "/vm/demo"
	guestManifests = "/vm/examples"
	vmTimeout      = 12 * time.Minute
)

// runInVM runs the demo in IPVS mode inside the qemu VM of e2e/vm: the host runs the
// apiserver, the guest (whose kernel has IPVS) runs this same command against it, and
// its tables come back over the serial console.
func runInVM(t *commandTB, cfg config) {
	root := repoRoot(t)
	if cfg.Manifests == "" {
		cfg.Manifests = filepath.Join(root, "manifests", "examples")
	}
	// cfg.Svcproxy is a host binary; the VM gets its own static build of ./cmd/svcproxy.
	files := map[string][]byte{}
	paths, err := filepath.Glob(filepath.Join(cfg.Manifests, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no *.yaml in %s (%v)", cfg.Manifests, err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v", err)
		}
		files[guestManifests+"/"+filepath.Base(p)] = b
	}
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.Command("go", "build", "-o", bin, "./e2e/demo")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	runWithHeartbeat(t, "building the demo for the VM (static)", build)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatalf("%v", err)
	}
	files[guestDemo] = b

	api := startAPI(t)
	ca, err := os.ReadFile(api.CAFile)
	if err != nil {
		t.Fatalf("read apiserver CA: %v", err)
	}
	opts := vm.Options{
		Svcproxy: true,
		Script: fmt.Sprintf("%s -mode=ipvs -svcproxy=%s -manifests=%s -requests=%d",
			guestDemo, vm.SvcproxyPath, guestManifests, cfg.Requests),
		Files:     files,
		APIServer: &vm.APIServer{Port: api.Port, CA: ca, Token: api.AdminToken},
		Env:       map[string]string{bed.ProxyTokenEnv: api.ProxyToken},
		Timeout:   vmTimeout,
	}
	progress("preparing the VM: kernel, initramfs, static svcproxy (the first time downloads a kernel)")
	con := &consoleRelay{last: time.Now()}
	stop := con.heartbeat()
	res, err := vm.Exec(opts, t.TempDir(), con.logf)
	stop()
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("the demo inside the VM failed (exit code %d); its messages are above", res.ExitCode)
	}
}

// consoleRelay sorts the VM's console: the guest demo's tables go to stdout, its
// progress lines and the VM's own messages to stderr.
type consoleRelay struct {
	mu        sync.Mutex
	inPayload bool
	last      time.Time
}

func (c *consoleRelay) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = time.Now()
	switch {
	case strings.Contains(line, "SVCPROXY-VM-PAYLOAD-START"):
		c.inPayload = true
		progress("VM booted; the demo runs inside")
	case strings.Contains(line, "SVCPROXY-VM-END"):
		c.inPayload = false
	case c.inPayload && strings.HasPrefix(line, guestOutPrefix):
		fmt.Println(strings.TrimPrefix(line, guestOutPrefix))
	case c.inPayload && strings.HasPrefix(line, "demo: "):
		fmt.Fprintf(os.Stderr, "  vm %s\n", line)
	case c.inPayload:
		fmt.Fprintf(os.Stderr, "  vm: %s\n", line)
	case strings.HasPrefix(line, "vm: "):
		progress("%s", line)
	}
}

// heartbeat prints a line whenever the VM has been quiet for a while (the first
// preparation builds and downloads for minutes without output).
func (c *consoleRelay) heartbeat() (stop func()) {
	done := make(chan struct{})
	began := time.Now()
	go func() {
		tick := time.NewTicker(heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				c.mu.Lock()
				quiet := time.Since(c.last)
				c.mu.Unlock()
				if quiet >= heartbeat {
					progress("  still working on the VM (%v so far)", time.Since(began).Round(time.Second))
				}
			}
		}
	}()
	return func() { close(done) }
}
