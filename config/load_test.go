package config

import (
	"bytes"
	goflag "flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

var update = goflag.Bool("update", false, "rewrite golden files in testdata/")

// TestKubeadmConfigMap checks the config.conf that kubeadm puts in the
// kube-proxy ConfigMap: it decodes strictly, takes kube-proxy's defaults
// and validates. The defaulted result is compared with a golden file.
func TestKubeadmConfigMap(t *testing.T) {
	cfg, err := Load("testdata/kubeadm-config.conf")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := cfg.ClientConnection.Kubeconfig; got != "/var/lib/kube-proxy/kubeconfig.conf" {
		t.Errorf("kubeconfig = %q", got)
	}
	if cfg.IPTables.MasqueradeBit != nil || cfg.Conntrack.MaxPerCore != nil {
		t.Errorf("null fields decoded as set: masqueradeBit=%v maxPerCore=%v", cfg.IPTables.MasqueradeBit, cfg.Conntrack.MaxPerCore)
	}
	SetDefaults(cfg)
	if err := Validate(cfg); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var buf bytes.Buffer
	if err := Encode(&buf, cfg); err != nil {
		t.Fatalf("Encode: %v", err)
	}
	golden(t, "testdata/kubeadm-config.defaulted.yaml", buf.Bytes())
}

func TestIPVSConfig(t *testing.T) {
	cfg, err := Load("testdata/ipvs-config.conf")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	SetDefaults(cfg)
	if err := Validate(cfg); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", cfg.Mode, ModeIPVS},
		{"scheduler", cfg.IPVS.Scheduler, "wlc"},
		{"strictARP", cfg.IPVS.StrictARP, true},
		{"ipvs.syncPeriod", cfg.IPVS.SyncPeriod.Duration, 30 * time.Second},
		{"ipvs.minSyncPeriod", cfg.IPVS.MinSyncPeriod.Duration, time.Duration(0)},
		{"metricsBindAddress", cfg.MetricsBindAddress, "0.0.0.0:10249"},
		{"healthzBindAddress", cfg.HealthzBindAddress, "0.0.0.0:10256"},
		{"nodePortAddresses", strings.Join(cfg.NodePortAddresses, ","), "192.0.2.0/24,2001:db8:2::/64"},
		{"verbosity", uint32(cfg.Logging.Verbosity), uint32(2)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		wantErr string // substring; empty means success
		// lenient: strict decoding must fail with a strict error and a
		// warning must be logged.
		lenient bool
		check   func(*v1alpha1.KubeProxyConfiguration) string
	}{
		{
			name:    "unknown field falls back to lenient decoding",
			data:    readFile(t, "testdata/unknown-field.conf"),
			lenient: true,
			check: func(c *v1alpha1.KubeProxyConfiguration) string {
				if c.ClusterCIDR != "203.0.113.0/25" || c.Mode != ModeIPTables {
					return "known fields lost: clusterCIDR=" + c.ClusterCIDR + " mode=" + string(c.Mode)
				}
				return ""
			},
		},
		{
			name:    "duplicate field falls back to lenient decoding, last value wins",
			data:    readFile(t, "testdata/duplicate-field.conf"),
			lenient: true,
			check: func(c *v1alpha1.KubeProxyConfiguration) string {
				if c.ClusterCIDR != "203.0.113.0/25" || c.Mode != ModeIPVS {
					return "clusterCIDR=" + c.ClusterCIDR + " mode=" + string(c.Mode)
				}
				return ""
			},
		},
		{
			name:    "wrong apiVersion",
			data:    "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n",
			wantErr: "no kind \"KubeProxyConfiguration\" is registered for version",
		},
		{
			name:    "wrong kind",
			data:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
			wantErr: "no kind \"KubeletConfiguration\" is registered",
		},
		{
			name:    "missing apiVersion",
			data:    "kind: KubeProxyConfiguration\nmode: ipvs\n",
			wantErr: "'apiVersion' is missing",
		},
		{
			name:    "wrong type is not a strict error",
			data:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\noomScoreAdj: lots\n",
			wantErr: "oomScoreAdj",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			captureKlog(t, &logs)
			cfg, err := Decode([]byte(tc.data))
			klog.Flush()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if msg := tc.check(cfg); msg != "" {
				t.Error(msg)
			}
			_, strictErr := decodeWith(strictCodecs, []byte(tc.data))
			if got := runtime.IsStrictDecodingError(strictErr); got != tc.lenient {
				t.Errorf("strict decoding error = %v, want strict error %v", strictErr, tc.lenient)
			}
			if got := strings.Contains(logs.String(), "lenient decoding"); got != tc.lenient {
				t.Errorf("warning logged = %v, want %v; log:\n%s", got, tc.lenient, logs.String())
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.conf"))
	if err == nil || !strings.Contains(err.Error(), "read config file") {
		t.Fatalf("err = %v, want read config file error", err)
	}
}

// TestRoundTrip writes configurations and loads them back: Write's output
// must be something Load accepts strictly and that compares equal.
func TestRoundTrip(t *testing.T) {
	kubeadm, err := Load("testdata/kubeadm-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	SetDefaults(kubeadm)
	ipvs, err := Load("testdata/ipvs-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	SetDefaults(ipvs)
	custom := NewDefault()
	custom.FeatureGates = map[string]bool{"MultiCIDRServiceAllocator": true}
	custom.HostnameOverride = "node1"
	custom.DetectLocalMode = LocalModeInterfaceNamePrefix
	custom.DetectLocal.InterfaceNamePrefix = "veth"
	custom.Conntrack.TCPBeLiberal = true
	custom.Conntrack.UDPTimeout.Duration = 30 * time.Second
	custom.MetricsBindAddress = ""

	for name, cfg := range map[string]*v1alpha1.KubeProxyConfiguration{
		"kubeadm": kubeadm, "ipvs": ipvs, "defaults": NewDefault(), "custom": custom,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := Write(cfg, path); err != nil {
				t.Fatalf("Write: %v", err)
			}
			data := readFile(t, path)
			if !strings.Contains(data, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n") ||
				!strings.Contains(data, "kind: KubeProxyConfiguration\n") {
				t.Fatalf("output lacks apiVersion/kind:\n%s", data)
			}
			if _, err := decodeWith(strictCodecs, []byte(data)); err != nil {
				t.Fatalf("output does not decode strictly: %v", err)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := cfg.DeepCopy()
			want.APIVersion, want.Kind = v1alpha1.SchemeGroupVersion.String(), "KubeProxyConfiguration"
			if !apiequality.Semantic.DeepEqual(got, want) {
				t.Errorf("round trip differs:\ngot  %+v\nwant %+v", got, want)
			}
		})
	}
}

// captureKlog sends klog's output to buf for the rest of the test.
func captureKlog(t *testing.T, buf *bytes.Buffer) {
	t.Helper()
	fs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(fs)
	if err := fs.Set("logtostderr", "false"); err != nil {
		t.Fatal(err)
	}
	klog.SetOutput(buf)
	t.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		_ = fs.Set("logtostderr", "true")
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
