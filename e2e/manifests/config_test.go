package manifests

import (
	"net"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/config"
)

// The paths kubelet mounts a ServiceAccount's token and CA at.
const (
	saTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCAPath    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// loadConf runs config.conf through what `svcproxy --config` runs (Decode,
// SetDefaults, Validate), and also decodes it strictly: Decode accepts
// unknown fields with only a logged warning, which would hide a typo.
func loadConf(t testing.TB, data string) *v1alpha1.KubeProxyConfiguration {
	t.Helper()
	var strict v1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict([]byte(data), &strict); err != nil {
		t.Fatalf("config.conf has fields KubeProxyConfiguration lacks: %v", err)
	}
	cfg, err := config.Decode([]byte(data))
	if err != nil {
		t.Fatalf("config.Decode: %v", err)
	}
	config.SetDefaults(cfg)
	if err := config.Validate(cfg); err != nil {
		t.Fatalf("config.Validate: %v", err)
	}
	return cfg
}

func TestConfigMapConfigLoads(t *testing.T) {
	for _, tc := range []struct {
		dir       string
		mode      string
		scheduler string
	}{
		{dir: "base", mode: "iptables"},
		{dir: "overlays/ipvs", mode: "ipvs", scheduler: "rr"},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			objs := render(t, repoPath(t, "manifests", tc.dir))
			cm := typed[v1.ConfigMap](t, find(t, objs, "ConfigMap", "svcproxy"))
			cfg := loadConf(t, cm.Data["config.conf"])
			if string(cfg.Mode) != tc.mode {
				t.Errorf("mode = %q, want %q", cfg.Mode, tc.mode)
			}
			if cfg.IPVS.Scheduler != tc.scheduler {
				t.Errorf("ipvs.scheduler = %q, want %q", cfg.IPVS.Scheduler, tc.scheduler)
			}
			if cfg.IPVS.StrictARP {
				t.Errorf("ipvs.strictARP = true, want false")
			}
			if cfg.ClusterCIDR != "203.0.113.0/25" {
				t.Errorf("clusterCIDR = %q, want the demo's 203.0.113.0/25", cfg.ClusterCIDR)
			}
			kc := cm.Data[path.Base(cfg.ClientConnection.Kubeconfig)]
			if kc == "" {
				t.Fatalf("clientConnection.kubeconfig %q names no key of the ConfigMap", cfg.ClientConnection.Kubeconfig)
			}
			checkKubeconfig(t, kc)
		})
	}
}

// checkKubeconfig: the ConfigMap's kubeconfig authenticates with the pod's
// ServiceAccount token, like kubeadm's kube-proxy kubeconfig.
func checkKubeconfig(t *testing.T, data string) {
	t.Helper()
	kc, err := clientcmd.Load([]byte(data))
	if err != nil {
		t.Fatalf("kubeconfig.conf: %v", err)
	}
	// clientcmd.Validate would open the files, which exist only in a pod;
	// the binary tests use this kubeconfig with the paths moved.
	ctx := kc.Contexts[kc.CurrentContext]
	if ctx == nil || kc.AuthInfos[ctx.AuthInfo] == nil || kc.Clusters[ctx.Cluster] == nil {
		t.Fatalf("kubeconfig.conf: current context %q is incomplete", kc.CurrentContext)
	}
	if got := kc.AuthInfos[ctx.AuthInfo].TokenFile; got != saTokenPath {
		t.Errorf("kubeconfig tokenFile = %q, want %q", got, saTokenPath)
	}
	if got := kc.Clusters[ctx.Cluster].CertificateAuthority; got != saCAPath {
		t.Errorf("kubeconfig certificate-authority = %q, want %q", got, saCAPath)
	}
}

// TestDaemonSetFitsConfig checks that the pieces of the base refer to each
// other correctly: paths, names, ports and the image's entrypoint.
func TestDaemonSetFitsConfig(t *testing.T) {
	objs := render(t, repoPath(t, "manifests", "base"))
	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", "svcproxy"))
	cm := typed[v1.ConfigMap](t, find(t, objs, "ConfigMap", "svcproxy"))
	sa := typed[v1.ServiceAccount](t, find(t, objs, "ServiceAccount", "svcproxy"))
	crb := typed[rbacv1.ClusterRoleBinding](t, find(t, objs, "ClusterRoleBinding", "svcproxy"))
	find(t, objs, "ClusterRole", crb.RoleRef.Name)
	cfg := loadConf(t, cm.Data["config.conf"])

	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	mounts := map[string]v1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	volumes := map[string]v1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}

	t.Run("command reads the ConfigMap", func(t *testing.T) {
		if want := dockerEntrypoint(t); len(c.Command) == 0 || c.Command[0] != want {
			t.Errorf("command %q does not start with the image's entrypoint %q", c.Command, want)
		}
		var configPath string
		for _, a := range c.Command[1:] {
			if v, ok := strings.CutPrefix(a, "--config="); ok {
				configPath = v
			}
		}
		var cmMount *v1.VolumeMount
		for name, v := range volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
				m := mounts[name]
				cmMount = &m
			}
		}
		if cmMount == nil {
			t.Fatalf("ConfigMap %s is not mounted", cm.Name)
		}
		if configPath != "/var/lib/svcproxy/config.conf" || configPath != path.Join(cmMount.MountPath, "config.conf") {
			t.Errorf("--config=%q, ConfigMap mounted at %q: want /var/lib/svcproxy/config.conf from the mount", configPath, cmMount.MountPath)
		}
		if want := path.Join(cmMount.MountPath, "kubeconfig.conf"); cfg.ClientConnection.Kubeconfig != want {
			t.Errorf("clientConnection.kubeconfig = %q, want %q (the mounted key)", cfg.ClientConnection.Kubeconfig, want)
		}
	})

	t.Run("node name from the downward API", func(t *testing.T) {
		if !slices.Contains(c.Command, "--hostname-override=$(NODE_NAME)") {
			t.Errorf("command %q lacks --hostname-override=$(NODE_NAME)", c.Command)
		}
		var ok bool
		for _, e := range c.Env {
			ok = ok || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
		}
		if !ok {
			t.Errorf("env %v lacks NODE_NAME from spec.nodeName", c.Env)
		}
	})

	t.Run("liveness probe on the healthz port", func(t *testing.T) {
		_, port, err := net.SplitHostPort(cfg.HealthzBindAddress)
		if err != nil {
			t.Fatalf("healthzBindAddress %q: %v", cfg.HealthzBindAddress, err)
		}
		p := c.LivenessProbe
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("no httpGet livenessProbe")
		}
		if p.HTTPGet.Path != "/livez" || strconv.Itoa(p.HTTPGet.Port.IntValue()) != port || port != "10256" {
			t.Errorf("livenessProbe GET %s port %s, want /livez on the healthz port 10256 (%s)", p.HTTPGet.Path, p.HTTPGet.Port.String(), cfg.HealthzBindAddress)
		}
	})

	t.Run("host paths", func(t *testing.T) {
		for _, tc := range []struct {
			volume, path string
			typ          v1.HostPathType
			readOnly     bool
		}{
			{"xtables-lock", "/run/xtables.lock", v1.HostPathFileOrCreate, false},
			{"lib-modules", "/lib/modules", "", true},
		} {
			v, m := volumes[tc.volume], mounts[tc.volume]
			if v.HostPath == nil || v.HostPath.Path != tc.path || m.MountPath != tc.path || m.ReadOnly != tc.readOnly {
				t.Errorf("volume %s: %+v mounted %+v; want hostPath %s at the same path, readOnly %v", tc.volume, v.HostPath, m, tc.path, tc.readOnly)
				continue
			}
			if got := v.HostPath.Type; (got == nil && tc.typ != "") || (got != nil && *got != tc.typ) {
				t.Errorf("volume %s: hostPath type %v, want %q", tc.volume, got, tc.typ)
			}
		}
	})

	t.Run("node-critical host-network pod", func(t *testing.T) {
		if pod.ServiceAccountName != sa.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
			t.Errorf("serviceAccountName %q, binding subjects %+v, ServiceAccount %s/%s", pod.ServiceAccountName, crb.Subjects, sa.Namespace, sa.Name)
		}
		if !pod.HostNetwork || pod.PriorityClassName != "system-node-critical" {
			t.Errorf("hostNetwork %v, priorityClassName %q", pod.HostNetwork, pod.PriorityClassName)
		}
		if len(pod.Tolerations) != 1 || pod.Tolerations[0] != (v1.Toleration{Operator: v1.TolerationOpExists}) {
			t.Errorf("tolerations %+v, want [{operator: Exists}]", pod.Tolerations)
		}
		if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("securityContext %+v, want privileged", sc)
		}
		ru := ds.Spec.UpdateStrategy.RollingUpdate
		if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 1 {
			t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1", ds.Spec.UpdateStrategy)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("resource requests %v, want cpu and memory", c.Resources.Requests)
		}
		if ds.Namespace != "kube-system" || c.Image != "svcproxy:dev" {
			t.Errorf("namespace %q image %q, want kube-system and svcproxy:dev", ds.Namespace, c.Image)
		}
	})
}

var entrypointRE = regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"`)

// dockerEntrypoint is the binary the image's exec-form ENTRYPOINT runs.
func dockerEntrypoint(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(t, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := entrypointRE.FindAllStringSubmatch(string(data), -1)
	if len(m) != 1 {
		t.Fatalf("Dockerfile: want one exec-form ENTRYPOINT, found %d", len(m))
	}
	return m[0][1]
}
