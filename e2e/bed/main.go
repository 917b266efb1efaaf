package bed

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Main runs the tests of a package that uses the bed and returns the exit code. It stops the
// shared apiserver and the svcproxy build directory at the end, and on SIGINT/SIGTERM kills
// every process the bed started and deletes every namespace it created before exiting.
func Main(m *testing.M, opts ...APIOption) int {
	for _, o := range opts {
		o(&apiOptions)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "bed: %v: tearing down\n", s)
			teardown()
			os.Exit(130)
		case <-done:
		}
	}()
	code := m.Run()
	close(done)
	signal.Stop(sig)
	teardown()
	return code
}

// teardown releases everything process-wide: started processes, namespaces, the apiserver
// and the svcproxy build. Safe to call more than once.
func teardown() {
	for _, p := range registeredProcesses() {
		p.stop(5 * time.Second)
	}
	for _, name := range registeredNamespaces() {
		if err := netns.DeleteNamed(name); err != nil {
			fmt.Fprintf(os.Stderr, "bed: delete netns %s: %v\n", name, err)
		}
		unregisterNamespace(name)
	}
	stopSharedAPI()
	removeProxyBuild()
}

var registry struct {
	sync.Mutex
	namespaces map[string]bool
	processes  map[*process]bool
}

func registerNamespace(name string) {
	registry.Lock()
	defer registry.Unlock()
	if registry.namespaces == nil {
		registry.namespaces = map[string]bool{}
	}
	registry.namespaces[name] = true
}

func unregisterNamespace(name string) {
	registry.Lock()
	defer registry.Unlock()
	delete(registry.namespaces, name)
}

func registeredNamespaces() []string {
	registry.Lock()
	defer registry.Unlock()
	var names []string
	for n := range registry.namespaces {
		names = append(names, n)
	}
	return names
}

// process is a started child with its Wait running in the background, so it can be
// stopped by PID from any goroutine and reaped exactly once.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func startProcess(cmd *exec.Cmd, start func(*exec.Cmd) error) (*process, error) {
	// The child dies with us even if the test binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := start(cmd); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	registry.Lock()
	if registry.processes == nil {
		registry.processes = map[*process]bool{}
	}
	registry.processes[p] = true
	registry.Unlock()
	return p, nil
}

func registeredProcesses() []*process {
	registry.Lock()
	defer registry.Unlock()
	var ps []*process
	for p := range registry.processes {
		ps = append(ps, p)
	}
	return ps
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *process) stop(grace time.Duration) {
	defer func() {
		registry.Lock()
		delete(registry.processes, p)
		registry.Unlock()
	}()
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// running reports whether the process has not exited yet.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// RepoRoot is the directory of the main module's go.mod (found with `go env GOMOD`), or
// $SVCPROXY_REPO when set (useful where no Go toolchain exists, as in the VM).
func RepoRoot() (string, error) {
	if r := os.Getenv("SVCPROXY_REPO"); r != "" {
		return r, nil
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("bed: needs root (network namespaces, veth, iptables); run the e2e tests as root")
	}
}
