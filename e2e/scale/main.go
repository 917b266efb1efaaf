// Command scale measures a kube-proxy-compatible proxy at scale against the bed's real
// kube-apiserver: cold start, single-endpoint latency, sync lag under endpoint churn,
// CPU, peak RSS, restore sizes, and iptables-restore's own floor. Root only; everything
// runs in network namespaces it creates and removes.
//
//	go run ./e2e/scale -services 1000 -endpoints 10 -mode iptables -proxy-binary PATH -runs 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

func main() {
	cfg := Config{Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...) }}
	var backends, extra, out string
	flag.IntVar(&cfg.Services, "services", 1000, "Services to create")
	flag.IntVar(&cfg.Endpoints, "endpoints", 10, "endpoints per Service")
	flag.StringVar(&cfg.Mode, "mode", "iptables", "--proxy-mode of the proxy (iptables; ipvs needs the VM)")
	flag.StringVar(&cfg.ProxyBinary, "proxy-binary", "", "proxy binary (kube-proxy flags); empty builds ./cmd/svcproxy")
	flag.StringVar(&backends, "backends", "nft", "comma-separated SVCPROXY_IPTABLES_BACKEND values (legacy,nft); \"default\" leaves it unset")
	flag.IntVar(&cfg.Runs, "runs", 3, "runs per backend")
	flag.IntVar(&cfg.Adds, "adds", 20, "single-endpoint additions per run")
	flag.IntVar(&cfg.ChurnRate, "churn-rate", 100, "endpoint updates per second during the churn")
	flag.DurationVar(&cfg.ChurnDuration, "churn", 60*time.Second, "churn duration (0 skips it)")
	flag.IntVar(&cfg.Workers, "workers", 32, "concurrent apiserver writers")
	flag.DurationVar(&cfg.ColdTimeout, "cold-timeout", 20*time.Minute, "bound of the cold start")
	flag.DurationVar(&cfg.FloorTimeout, "floor-timeout", 3*time.Minute, "bound of each iptables-restore floor measurement (0 skips it)")
	flag.DurationVar(&cfg.CurveStep, "curve", 0, "report VmRSS, CPU and sync lag per window of this length during the churn (0: no curve)")
	flag.StringVar(&cfg.ProfileDir, "profile-dir", "", "save CPU profiles of cold start and churn here")
	flag.StringVar(&extra, "extra-args", "", "space-separated extra proxy flags")
	flag.StringVar(&out, "out", "", "also write the Markdown table to this file")
	flag.Parse()
	for _, b := range strings.Split(backends, ",") {
		if b == "default" {
			b = ""
		}
		cfg.Backends = append(cfg.Backends, b)
	}
	cfg.ExtraArgs = strings.Fields(extra)
	if out != "" {
		cfg.OnResult = func(all []Result) { _ = os.WriteFile(out, []byte(Table(cfg, all)), 0o644) }
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "scale: needs root (network namespaces, iptables)")
		os.Exit(2)
	}
	table, err := run(cfg)
	if table != "" {
		fmt.Print(table)
		if out != "" {
			_ = os.WriteFile(out, []byte(table), 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// run owns every resource: a SIGINT/SIGTERM or a failure tears down the proxy,
// namespaces and apiserver before returning.
func run(cfg Config) (string, error) {
	tb := newRunTB(cfg.Logf)
	var mu sync.Mutex
	var current *runTB // the run in progress, whose cleanups come first
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			mu.Lock()
			if current != nil {
				current.finish()
			}
			mu.Unlock()
			tb.finish()
		})
	}
	defer teardown()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if s, ok := <-sig; ok {
			cfg.Logf("%v: tearing down", s)
			teardown()
			os.Exit(130)
		}
	}()
	if cfg.ProxyBinary == "" {
		bin, err := buildSvcproxy(tb)
		if err != nil {
			return "", err
		}
		cfg.ProxyBinary = bin
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return "", err
		}
	}
	// iptables-legacy's lock file is shared by every namespace on the host: a private
	// one keeps other users' iptables calls from queueing ours.
	tb.Setenv("XTABLES_LOCKFILE", filepath.Join(tb.TempDir(), "xtables.lock"))
	api, err := bed.StartAPIServer(bed.ServiceCIDRs(ServiceCIDR))
	if err != nil {
		return "", fmt.Errorf("start apiserver: %w", err)
	}
	tb.Cleanup(api.Stop)
	h, err := NewHarness(context.Background(), api, cfg)
	if err != nil {
		return "", err
	}
	var results []Result
	var failures []error
	broken := map[string]bool{}
	for run := 1; run <= cfg.Runs; run++ {
		for _, b := range cfg.Backends {
			if broken[b] {
				continue
			}
			rt := newRunTB(cfg.Logf)
			mu.Lock()
			current = rt
			mu.Unlock()
			var res Result
			err := rt.run(func() { res = h.Run(rt, b, run) })
			mu.Lock()
			rt.finish()
			current = nil
			mu.Unlock()
			if err != nil {
				// A failed run (a cold start past its bound, ...) ends that backend only.
				cfg.Logf("[%s run %d] failed: %v", b, run, err)
				failures = append(failures, fmt.Errorf("%s run %d: %w", backendLabel(b), run, err))
				broken[b] = true
				continue
			}
			for _, e := range res.Errors {
				cfg.Logf("[%s run %d] error: %s", b, run, e)
			}
			results = append(results, res)
			if cfg.OnResult != nil {
				cfg.OnResult(results)
			}
		}
	}
	return Table(cfg, results), errors.Join(failures...)
}

func buildSvcproxy(tb *runTB) (string, error) {
	root, err := bed.RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(tb.TempDir(), "svcproxy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/svcproxy")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build svcproxy: %w", err)
	}
	return bin, nil
}
