// Command demo is `make demo`: it starts a real kube-apiserver, two node namespaces,
// three pods and a client (the e2e test bed), creates the example Services of
// manifests/examples/, runs svcproxy on both nodes and prints which pods answered the
// client's requests, the source address they saw, and the nodes' health answers. Then it
// tears everything down, also on failure and on Ctrl-C.
//
//	go run ./e2e/demo                 # iptables mode, on this kernel (root)
//	go run ./e2e/demo -mode=ipvs      # the same inside the qemu VM of e2e/vm (IPVS)
//
// Everything runs in network namespaces the demo creates; the machine's own network
// namespace is not changed.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/svcproxy/svcproxy/e2e/vm"
)

var start = time.Now()

// progress prints a status line on stderr, so stdout holds only the tables.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: [%4.0fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	mode := flag.String("mode", "iptables", "data plane: iptables (on this kernel) or ipvs (inside the qemu VM)")
	svcproxy := flag.String("svcproxy", "", "svcproxy binary (default: go build ./cmd/svcproxy)")
	manifests := flag.String("manifests", "", "directory of the example objects (default: <repo>/manifests/examples)")
	requests := flag.Int("requests", 20, "requests per path")
	flag.Parse()
	if *mode != "iptables" && *mode != "ipvs" {
		fmt.Fprintf(os.Stderr, "demo: -mode=%q: want iptables or ipvs\n", *mode)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces, veth pairs, iptables): run `sudo make demo`")
		os.Exit(1)
	}
	cfg := config{Mode: *mode, Manifests: *manifests, Svcproxy: *svcproxy, Requests: *requests, Progress: progress}
	body := func(t *commandTB) { runHere(t, cfg) }
	if *mode == "ipvs" && !vm.InGuest() {
		body = func(t *commandTB) { runInVM(t, cfg) }
	}
	ok, interrupted := runTB(body)
	switch {
	case interrupted:
		progress("interrupted; torn down")
		os.Exit(130)
	case !ok:
		progress("failed; torn down")
		os.Exit(1)
	}
	progress("done; torn down")
}

// runHere runs the demo on this kernel (the host, or the guest of the VM).
func runHere(t *commandTB, cfg config) {
	if cfg.Manifests == "" {
		cfg.Manifests = filepath.Join(repoRoot(t), "manifests", "examples")
	}
	api := startAPI(t)
	if cfg.Svcproxy == "" {
		cfg.Svcproxy = buildSvcproxy(t)
	}
	rep := run(t, api, cfg)
	if vm.InGuest() {
		// The console drops empty lines: mark every line for the host to unwrap.
		var b strings.Builder
		rep.print(&b)
		for _, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
			fmt.Println(guestOutPrefix + line)
		}
	} else {
		rep.print(os.Stdout)
	}
	for _, p := range rep.problems() {
		t.Errorf("unexpected: %s", p)
	}
}

// startAPI starts etcd and kube-apiserver, or in the VM (or with
// $SVCPROXY_BED_KUBECONFIG) connects to the host's.
func startAPI(t *commandTB) *bed.APIServer {
	if vm.InGuest() || os.Getenv(bed.KubeconfigEnv) != "" {
		progress("connecting to the external apiserver")
		api := bed.API(t)
		t.Cleanup(api.Stop) // only its temporary files: the apiserver is not ours
		return api
	}
	bin, err := bed.BinDir()
	if err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := os.Stat(filepath.Join(bin, "kube-apiserver")); err != nil {
		build := exec.Command(filepath.Join(repoRoot(t), "e2e", "apiserver", "build.sh"))
		runWithHeartbeat(t, "building kube-apiserver and etcd (cold: 6-12 minutes)", build)
	}
	progress("starting etcd and kube-apiserver")
	api, err := bed.StartAPIServer()
	if err != nil {
		t.Fatalf("start apiserver: %v", err)
	}
	t.Cleanup(api.Stop)
	t.OnInterrupt(api.Stop)
	progress("apiserver ready at %s", api.URL)
	return api
}

func buildSvcproxy(t *commandTB) string {
	bin := filepath.Join(t.TempDir(), "svcproxy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/svcproxy")
	build.Dir = repoRoot(t)
	runWithHeartbeat(t, "building svcproxy", build)
	return bin
}

func repoRoot(t *commandTB) string {
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatalf("find the repository: %v", err)
	}
	return root
}

// heartbeat is how often a long step says it is still running.
const heartbeat = 20 * time.Second

// runWithHeartbeat runs a build with its output on stderr and a line every
// heartbeat, because a cold build is silent for minutes.
func runWithHeartbeat(t *commandTB, what string, cmd *exec.Cmd) {
	progress("%s", what)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	// Ctrl-C reaches the build through the terminal; a failed demo must not leave it.
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	began, said := time.Now(), time.Now()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			progress("%s: done in %v", what, time.Since(began).Round(time.Second))
			return
		case <-tick.C:
			t.checkpoint() // an interrupt stops here; the cleanup kills the build
			if time.Since(said) >= heartbeat {
				said = time.Now()
				progress("  still %s (%v so far)", what, time.Since(began).Round(time.Second))
			}
		}
	}
}
