package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/config"
)

const kubeadmConfig = "../../config/testdata/kubeadm-config.conf"

// recorder is a runFunc that records what the command handed to the proxy.
type recorder struct {
	called bool
	cfg    *v1alpha1.KubeProxyConfiguration
	opts   *config.Options
	err    error
}

func (r *recorder) run(_ context.Context, cfg *v1alpha1.KubeProxyConfiguration, opts *config.Options) error {
	r.called, r.cfg, r.opts = true, cfg, opts
	return r.err
}

func runCmd(t *testing.T, r *recorder, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(context.Background(), args, &out, &errb, r.run)
	return code, out.String(), errb.String()
}

func TestHelpListsFlags(t *testing.T) {
	r := &recorder{}
	code, out, _ := runCmd(t, r, "--help")
	if code != 0 || r.called {
		t.Fatalf("--help: exit %d, proxy started %v", code, r.called)
	}
	for _, name := range []string{
		"kubeconfig", "master", "config", "write-config-to", "proxy-mode", "hostname-override",
		"bind-address", "bind-address-hard-fail", "healthz-bind-address", "metrics-bind-address",
		"cluster-cidr", "detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix",
		"masquerade-all", "iptables-masquerade-bit", "iptables-sync-period", "iptables-min-sync-period",
		"iptables-localhost-nodeports", "ipvs-scheduler", "ipvs-sync-period", "ipvs-min-sync-period",
		"ipvs-strict-arp", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout",
		"ipvs-exclude-cidrs", "nodeport-addresses", "conntrack-max-per-core", "conntrack-min",
		"conntrack-tcp-timeout-established", "conntrack-tcp-timeout-close-wait", "conntrack-tcp-be-liberal",
		"conntrack-udp-timeout", "conntrack-udp-timeout-stream", "config-sync-period", "oom-score-adj",
		"profiling", "kube-api-qps", "kube-api-burst", "kube-api-content-type", "cleanup", "init-only",
		"v", "vmodule",
	} {
		if !strings.Contains(out, "--"+name+" ") && !strings.Contains(out, "--"+name+"[") {
			t.Errorf("--help does not list --%s", name)
		}
	}
	if !strings.Contains(out, `(default "iptables")`) || !strings.Contains(out, "(default 14)") {
		t.Errorf("--help lacks kube-proxy defaults:\n%s", out)
	}
}

// TestWriteConfigStdout: --config with --write-config-to - prints the
// effective configuration, which decodes back to the same object.
func TestWriteConfigStdout(t *testing.T) {
	r := &recorder{}
	code, out, errOut := runCmd(t, r, "--config", kubeadmConfig, "--write-config-to", "-", "--hostname-override", "Node1")
	if code != 0 || r.called {
		t.Fatalf("exit %d, proxy started %v, stderr %s", code, r.called, errOut)
	}
	got, err := config.Decode([]byte(out))
	if err != nil {
		t.Fatalf("output does not decode: %v\n%s", err, out)
	}
	want, err := config.Load(kubeadmConfig)
	if err != nil {
		t.Fatal(err)
	}
	config.SetDefaults(want)
	want.APIVersion, want.Kind = v1alpha1.SchemeGroupVersion.String(), "KubeProxyConfiguration"
	want.HostnameOverride = "node1"
	if !apiequality.Semantic.DeepEqual(got, want) {
		t.Errorf("written config differs:\n%s", out)
	}
}

func TestWriteConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kube-proxy.yaml")
	r := &recorder{}
	code, out, errOut := runCmd(t, r, "--proxy-mode=ipvs", "--ipvs-scheduler=lc", "--write-config-to", path)
	if code != 0 || r.called || out != "" {
		t.Fatalf("exit %d, proxy started %v, stdout %q, stderr %s", code, r.called, out, errOut)
	}
	got, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mode != config.ModeIPVS || got.IPVS.Scheduler != "lc" || *got.IPTables.MasqueradeBit != 14 {
		t.Errorf("written config: mode=%s scheduler=%s", got.Mode, got.IPVS.Scheduler)
	}
}

// TestInvalidInput: a bad value exits 1 with exactly one line on stderr and
// never reaches the proxy.
func TestInvalidInput(t *testing.T) {
	badFile := filepath.Join(t.TempDir(), "bad.conf")
	if err := os.WriteFile(badFile, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nconntrack:\n  min: -1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // the whole stderr line
	}{
		{"masquerade bit out of range", []string{"--iptables-masquerade-bit=32"},
			"invalid configuration: iptables.masqueradeBit: 32: must be within [0, 31]"},
		{"unparsable integer", []string{"--iptables-masquerade-bit=abc"},
			`invalid argument "abc" for "--iptables-masquerade-bit" flag: must be an integer`},
		{"nftables", []string{"--proxy-mode=nftables"},
			`invalid configuration: mode: "nftables": not supported yet by svcproxy (use iptables or ipvs)`},
		{"bad cluster CIDR", []string{"--cluster-cidr=203.0.113.0"},
			`invalid configuration: clusterCIDR: "203.0.113.0": must be a valid CIDR (e.g. 203.0.113.0/25) or an IPv4,IPv6 pair`},
		{"unknown flag", []string{"--proxy-mod=ipvs"}, "unknown flag: --proxy-mod"},
		{"invalid value in config file", []string{"--config", badFile},
			"invalid configuration: conntrack.min: -1: must be greater than or equal to 0"},
		{"stray argument", []string{"ipvs"}, `unknown command "ipvs" for "svcproxy"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			code, out, errOut := runCmd(t, r, tc.args...)
			if code != 1 || r.called {
				t.Errorf("exit %d, proxy started %v; want exit 1 without starting", code, r.called)
			}
			if errOut != tc.want+"\n" {
				t.Errorf("stderr\n got: %q\nwant: %q", errOut, tc.want+"\n")
			}
			if out != "" {
				t.Errorf("stdout not empty: %q", out)
			}
		})
	}
}

func TestRunReceivesConfig(t *testing.T) {
	r := &recorder{}
	code, _, errOut := runCmd(t, r, "--config", kubeadmConfig, "--master", "https://192.0.2.1:6443", "--cleanup")
	if code != 0 || !r.called {
		t.Fatalf("exit %d, proxy started %v, stderr %s", code, r.called, errOut)
	}
	if r.cfg.Mode != config.ModeIPTables || r.cfg.ClusterCIDR != "203.0.113.0/25" || *r.cfg.Conntrack.Min != 131072 {
		t.Errorf("proxy got an undefaulted config: %+v", r.cfg)
	}
	if r.opts.Master != "https://192.0.2.1:6443" || !r.opts.Cleanup {
		t.Errorf("proxy got options %+v", r.opts)
	}

	r = &recorder{err: errors.New("restore nat table: exit status 2")}
	code, _, errOut = runCmd(t, r)
	if code != 1 || errOut != "restore nat table: exit status 2\n" {
		t.Errorf("proxy failure: exit %d, stderr %q", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	old := version
	version = "v1.2.3-test"
	t.Cleanup(func() { version = old })
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := runCmd(t, &recorder{}, args...)
		if code != 0 || out != "svcproxy v1.2.3-test\n" {
			t.Errorf("%v: exit %d, stdout %q", args, code, out)
		}
	}
}

// TestSignalCancelsContext sends SIGTERM to this test process while the
// command runs; the proxy's context must be cancelled and the command exit 0.
func TestSignalCancelsContext(t *testing.T) {
	ctx, stop := signalContext()
	defer stop()
	started := make(chan struct{})
	run := func(ctx context.Context, _ *v1alpha1.KubeProxyConfiguration, _ *config.Options) error {
		close(started)
		<-ctx.Done()
		return nil
	}
	done := make(chan int, 1)
	go func() {
		var out, errb bytes.Buffer
		done <- execute(ctx, nil, &out, &errb, run)
	}()
	<-started
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("context not cancelled by SIGTERM")
	}
}
