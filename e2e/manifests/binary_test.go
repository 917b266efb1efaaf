package manifests

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/e2e/bed"
)

// requireWiring skips until cmd/svcproxy runs a proxy: until then run.go is a
// placeholder that returns this error, and nothing below can be observed.
func requireWiring(t *testing.T) {
	t.Helper()
	src, err := os.ReadFile(repoPath(t, "cmd", "svcproxy", "run.go"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(src), `"proxy wiring not built yet"`) {
		t.Skip("waits on the cmd/svcproxy wiring: run.go still returns \"proxy wiring not built yet\"")
	}
}

// podView is what the DaemonSet's container would see, recreated for a proxy
// in a bed node: the ConfigMap's files in a directory standing for its
// mount, the ServiceAccount token and CA where kubeconfig.conf points, and
// the container's command line.
type podView struct {
	dir     string
	command []string // with the mount path replaced by dir; $(NODE_NAME) still in place
}

func newPodView(t *testing.T, api *bed.APIServer, token string) *podView {
	t.Helper()
	objs := render(t, repoPath(t, "manifests", "base"))
	cm := typed[v1.ConfigMap](t, find(t, objs, "ConfigMap", "svcproxy"))
	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", "svcproxy"))
	var mountPath string
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		if m.Name == "config" {
			mountPath = m.MountPath
		}
	}
	pv := &podView{dir: t.TempDir()}
	for _, a := range ds.Spec.Template.Spec.Containers[0].Command[1:] {
		pv.command = append(pv.command, strings.ReplaceAll(a, mountPath, pv.dir))
	}

	// kubeconfig.conf, with the files kubelet would mount and the bed's
	// apiserver (reachable at the same URL inside node namespaces).
	kc, err := clientcmd.Load([]byte(cm.Data["kubeconfig.conf"]))
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(pv.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	kctx := kc.Contexts[kc.CurrentContext]
	kc.Clusters[kctx.Cluster].Server = api.URL
	kc.Clusters[kctx.Cluster].CertificateAuthority = api.CAFile
	kc.AuthInfos[kctx.AuthInfo].TokenFile = tokenFile
	if err := clientcmd.WriteToFile(*kc, filepath.Join(pv.dir, "kubeconfig.conf")); err != nil {
		t.Fatal(err)
	}

	cfg, err := config.Decode([]byte(cm.Data["config.conf"]))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientConnection.Kubeconfig = filepath.Join(pv.dir, path.Base(cfg.ClientConnection.Kubeconfig))
	// nf_conntrack_max can only be written from the host's own network
	// namespace; the bed's nodes are not that.
	zero := int32(0)
	cfg.Conntrack.MaxPerCore = &zero
	if err := config.Write(cfg, filepath.Join(pv.dir, "config.conf")); err != nil {
		t.Fatal(err)
	}
	return pv
}

// start runs the binary in node with the DaemonSet's command line.
func (pv *podView) start(t *testing.T, c *bed.Cluster, node *bed.Node) *bed.Proxy {
	t.Helper()
	var args []string
	for _, a := range pv.command {
		args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", node.Name))
	}
	return c.StartProxyWith(t, node, bed.ProxySpec{Args: args})
}

// demoCluster is a bed cluster whose first pods have the addresses the
// examples' EndpointSlices use, with the examples applied.
func demoCluster(t *testing.T, api *bed.APIServer) (*bed.Cluster, map[string]*bed.Pod) {
	t.Helper()
	c := bed.NewCluster(t, bed.ClusterOptions{API: api})
	pods := map[string]*bed.Pod{
		"web-1": c.AddPod(t, c.Nodes[0], "web-1"),
		"web-2": c.AddPod(t, c.Nodes[1], "web-2"),
	}
	pods["client"] = c.AddPod(t, c.Nodes[0], "client")
	var objs []*unstructured.Unstructured
	for _, f := range manifestFiles(t) {
		if strings.Contains(f, string(filepath.Separator)+"examples"+string(filepath.Separator)) {
			objs = append(objs, readObjects(t, f)...)
		}
	}
	slice := typed[discovery.EndpointSlice](t, find(t, objs, "EndpointSlice", "web-1"))
	var addrs []string
	for _, ep := range slice.Endpoints {
		addrs = append(addrs, ep.Addresses...)
	}
	if want := []string{pods["web-1"].IP.String(), pods["web-2"].IP.String()}; !slices.Equal(addrs, want) {
		t.Fatalf("examples/web.yaml endpoints %q, but the bed's pods web-1 and web-2 are %q", addrs, want)
	}
	newApplier(t, api).apply(t, objs...)
	return c, pods
}

// forbiddenLines returns, for each resource of rule, a line of log with the
// API server's refusal of a call on it to the ServiceAccount; ok is false
// while one is missing.
func forbiddenLines(log string, rule rbacv1.PolicyRule) (found []string, ok bool, detail string) {
	lines := strings.Split(stripEscapes(log), "\n")
	var missing []string
	for _, g := range rule.APIGroups {
		for _, res := range rule.Resources {
			want := fmt.Sprintf(`resource %q in API group %q`, res, g)
			i := slices.IndexFunc(lines, func(l string) bool {
				return strings.Contains(l, fmt.Sprintf(`User %q cannot `, saUser)) && strings.Contains(l, want)
			})
			if i < 0 {
				missing = append(missing, want)
				continue
			}
			found = append(found, lines[i])
		}
	}
	return found, len(missing) == 0, fmt.Sprintf("no log line says %s is forbidden to %s", missing, saUser)
}

// TestProxyLogsForbiddenResource runs the real binary as the ServiceAccount
// with one rule of the ClusterRole missing at a time, and requires its log
// to name what it was refused.
func TestProxyLogsForbiddenResource(t *testing.T) {
	requireWiring(t)
	api := bed.API(t)
	e := installRBAC(t, api)
	c, _ := demoCluster(t, api)
	node := c.Nodes[0]
	pv := newPodView(t, api, e.token)
	// svcproxy records a Warning event when it cannot open a
	// healthCheckNodePort: hold web-local's so that an event is written.
	l, err := node.NS.Listen("tcp", ":30081")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for i, rule := range e.role.Rules {
		t.Run(fmt.Sprintf("without %v", ruleTriples(rule)), func(t *testing.T) {
			e.setRules(t, slices.Delete(slices.Clone(e.role.Rules), i, i+1))
			defer e.setRules(t, e.role.Rules)
			bed.Eventually(t, bed.WaitTimeout, "the rule's calls are forbidden", func() (bool, string) {
				return e.check(ctx, &rule)
			})
			p := pv.start(t, c, node)
			defer p.Stop(t)
			var found []string
			bed.Eventually(t, time.Minute, "svcproxy's log names the forbidden resource", func() (bool, string) {
				var ok bool
				var detail string
				found, ok, detail = forbiddenLines(p.Log(), rule)
				return ok, detail
			})
			for _, l := range found {
				t.Logf("svcproxy log: %s", l)
			}
		})
	}
}

// TestProxyServesClusterIP runs the real binary as the DaemonSet would (its
// command line, the ConfigMap's files, the ServiceAccount's token under the
// full ClusterRole) and requires a working demo/web from a pod.
func TestProxyServesClusterIP(t *testing.T) {
	requireWiring(t)
	api := bed.API(t)
	e := installRBAC(t, api)
	c, pods := demoCluster(t, api)
	node := c.Nodes[0]
	p := newPodView(t, api, e.token).start(t, c, node)
	p.WaitHealthy(t)
	node.WaitIPTables(t, "-d 198.51.100.10/32", true)

	rules, err := node.IPTablesSave(false)
	if err != nil {
		t.Fatal(err)
	}
	var svcRule string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "-d 198.51.100.10/32") && strings.Contains(l, "--dport 80") {
			svcRule = l
		}
	}
	if !strings.Contains(svcRule, "demo/web:http") {
		t.Errorf("no rule for demo/web:http on 198.51.100.10:80 in node1's iptables-save:\n%s", rules)
	}

	counts := pods["client"].NS.CountAnswers("198.51.100.10:80", 40)
	t.Logf("rule: %s\n40 requests from pod client: %v", svcRule, counts)
	if counts.Failures != 0 || counts.ByPod["web-1"] == 0 || counts.ByPod["web-2"] == 0 {
		t.Errorf("40 requests from pod client to demo/web: %v; want answers from web-1 and web-2 and no failure", counts)
	}
	if strings.Contains(stripEscapes(p.Log()), "is forbidden") {
		t.Errorf("svcproxy was refused a call under the full ClusterRole:\n%s", p.Log())
	}
}
