package vm

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

func TestArchiveIsReadableByCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed (hack/install-deps.sh installs it)")
	}
	a := newArchive()
	a.symlink("/lib", "usr/lib")
	a.file("/usr/lib/x/data", 0o644, []byte("hello"))
	a.file("/init", 0o755, []byte("#!/bin/sh\n"))
	a.charDev("/dev/console", 0o600, 5, 1)
	var buf bytes.Buffer
	if err := a.write(&buf); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -itv: %v", err)
	}
	listing := string(out)
	for _, want := range []string{
		"drwxr-xr-x", "usr/lib/x/data", "-rwxr-xr-x", "init",
		"lib -> usr/lib", "crw-------", "5,", "dev/console",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio listing misses %q:\n%s", want, listing)
		}
	}
}

func TestRunScript(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		env  map[string]string
		want string // output of running the script with the test binary replaced by echo
	}{
		{
			name: "quoted env and pattern",
			opts: Options{Package: "./x", Run: "TestA/it's", Args: []string{"-test.count=1"}, Timeout: 5 * time.Minute},
			env:  map[string]string{"A": "x y", "B": "it's"},
			want: "x y|it's|-test.v -test.timeout=4m0s -test.run=TestA/it's -test.count=1\n",
		},
		{
			name: "script instead of a binary",
			opts: Options{Script: `echo "$A|$B|script"`},
			env:  map[string]string{"A": "$HOME", "B": "`x`"},
			want: "$HOME|`x`|script\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			script, err := runScript(tc.env, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			script = strings.Replace(script, "'"+TestBinaryPath+"'", `echo "$A|$B|"`, 1)
			out, err := exec.Command("sh", "-c", script).Output()
			if err != nil {
				t.Fatalf("sh: %v\nscript:\n%s", err, script)
			}
			// echo "$A|$B|" then the flags: join the two parts as the test wants.
			got := strings.Replace(string(out), "| ", "|", 1)
			if got != tc.want {
				t.Fatalf("output %q, want %q\nscript:\n%s", got, tc.want, script)
			}
		})
	}
	if _, err := runScript(nil, Options{}); err == nil {
		t.Fatal("runScript without Package or Script succeeded")
	}
}

func TestKubeconfig(t *testing.T) {
	s := &APIServer{Port: 6443, CA: []byte("ca-pem"), Token: "tok"}
	cfg, err := clientcmd.Load(s.kubeconfig())
	if err != nil {
		t.Fatalf("parse kubeconfig: %v", err)
	}
	c := cfg.Clusters["host"]
	if c == nil || c.Server != "https://198.18.0.2:6443" || c.TLSServerName != "127.0.0.1" || string(c.CertificateAuthorityData) != "ca-pem" {
		t.Fatalf("cluster = %+v", c)
	}
	if u := cfg.AuthInfos["host"]; u == nil || u.Token != "tok" {
		t.Fatalf("user = %+v", u)
	}
}

func TestConsoleVerdict(t *testing.T) {
	const nonce = "0123abcd"
	tests := []struct {
		name     string
		console  string
		timedOut bool
		wantRC   int
		wantErr  string // substring; empty for success
	}{
		{
			name:    "payload passed",
			console: "\x1bc\x1b[?7lSeaBIOS\nSVCPROXY-VM-PAYLOAD-START 0123abcd\nok\r\nSVCPROXY-VM-END 0123abcd rc=0\n[ 1.0] reboot: Power down\n",
		},
		{
			name:    "payload failed",
			console: "SVCPROXY-VM-END 0123abcd rc=3\n[ 1.0] reboot: Power down\n",
			wantRC:  3,
		},
		{
			name:    "marker printed by the payload with another nonce",
			console: "SVCPROXY-VM-END ffff rc=0\n[ 1.0] reboot: Power down\n",
			wantErr: "no end marker",
		},
		{
			name:    "kernel panic before the end",
			console: "SVCPROXY-VM-PAYLOAD-START 0123abcd\nKernel panic - not syncing\n",
			wantErr: "did not power off",
		},
		{
			name:     "time bound",
			console:  "SVCPROXY-VM-PAYLOAD-START 0123abcd\n",
			timedOut: true,
			wantErr:  "time bound",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &console{nonce: nonce, start: time.Now()}
			var logged []string
			c.read(strings.NewReader(tc.console), func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) })
			var bound error
			if tc.timedOut {
				bound = fmt.Errorf("killed qemu after the 1s time bound")
			}
			err := c.verdict(bound, tc.timedOut)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("verdict = %v, want error containing %q", err, tc.wantErr)
			}
			if c.exitCode != tc.wantRC {
				t.Fatalf("exit code = %d, want %d", c.exitCode, tc.wantRC)
			}
			for _, l := range logged {
				if strings.ContainsAny(l, "\x1b\r") {
					t.Fatalf("logged line %q keeps escape sequences or CR", l)
				}
			}
		})
	}
}

// needVM skips unless this machine can boot the test VM.
func needVM(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("booting the test VM needs root (apt-get download, depmod on the cache)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed; hack/install-deps.sh installs it")
	}
}

// TestSmoke boots the VM and runs e2e/vm/ipvssmoke inside: IPVS, dummy
// links, ipsets, both iptables backends, IPVS NAT traffic, and the way back
// to this host's loopback (plain HTTP and an apiserver-like TLS endpoint).
func TestSmoke(t *testing.T) {
	needVM(t)
	var probeHits, versionHits atomic.Int32
	probe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probeHits.Add(1)
		fmt.Fprint(w, "hello from the host")
	}))
	defer probe.Close()
	const token, version = "smoke-token", "v1.36.3-vmsmoke"
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token || r.URL.Path != "/version" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		versionHits.Add(1)
		json.NewEncoder(w).Encode(map[string]string{"gitVersion": version, "major": "1", "minor": "36"})
	}))
	defer api.Close()
	apiPort := api.Listener.Addr().(*net.TCPAddr).Port

	res := Run(t, Options{
		Package:  "./e2e/vm/ipvssmoke",
		Svcproxy: true,
		Env: map[string]string{
			"SVCPROXY_VM_PROBE_URL":     fmt.Sprintf("http://%s:%d/", HostAddr, probe.Listener.Addr().(*net.TCPAddr).Port),
			"SVCPROXY_VM_PROBE_BODY":    "hello from the host",
			"SVCPROXY_VM_PROBE_VERSION": version,
		},
		APIServer: &APIServer{
			Port:  apiPort,
			CA:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}),
			Token: token,
		},
		Timeout: 8 * time.Minute,
	})
	// A skipped in-VM test would pass silently: require each to have passed.
	for _, name := range []string{
		"TestIPVSFamilyPresent", "TestIPVSServiceInNamespace", "TestDummyLinkInNamespace",
		"TestIPSetInNamespace", "TestIptablesBackends/legacy", "TestIptablesBackends/nft",
		"TestIPVSNATTraffic", "TestHostReachable", "TestKubeconfigReachesHost", "TestSvcproxyPresent",
	} {
		if !strings.Contains(res.Console, "--- PASS: "+name+" ") {
			t.Errorf("in-VM test %s did not pass (see console above)", name)
		}
	}
	if probeHits.Load() == 0 || versionHits.Load() == 0 {
		t.Errorf("host listeners saw %d probe and %d version requests, want both > 0", probeHits.Load(), versionHits.Load())
	}
	t.Logf("timings: prepare %v, boot to payload %v, VM run %v", res.Prepare.Round(time.Millisecond),
		res.BootToPayload.Round(time.Millisecond), res.Boot.Round(time.Millisecond))
}

func TestPayloadExitCodeIsReported(t *testing.T) {
	needVM(t)
	res, err := Exec(Options{Script: "echo failing on purpose; exit 3", Timeout: 5 * time.Minute}, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if res.ExitCode != 3 {
		t.Fatalf("exit code = %d, want 3", res.ExitCode)
	}
}

func TestTimeBoundKillsQEMU(t *testing.T) {
	needVM(t)
	start := time.Now()
	_, err := Exec(Options{Script: "sleep 600", Timeout: 2 * time.Second}, t.TempDir(), t.Logf)
	if err == nil || !strings.Contains(err.Error(), "time bound") {
		t.Fatalf("Exec error = %v, want the time bound to be reported", err)
	}
	t.Logf("killed after %v (including preparation)", time.Since(start).Round(time.Millisecond))
}
