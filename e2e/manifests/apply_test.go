package manifests

import (
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// TestManifestFilesApply server-side applies every object file under
// manifests/ on its own, in name order (as `kubectl apply -f` of a folder
// would), with strict field validation and no warning allowed.
func TestManifestFilesApply(t *testing.T) {
	api := bed.API(t)
	a := newApplier(t, api)
	root := repoPath(t, "manifests")
	files := manifestFiles(t)
	for _, want := range []string{"base/daemonset.yaml", "base/rbac.yaml", "overlays/ipvs/config-ipvs.yaml", "examples/web.yaml"} {
		if !slices.Contains(files, filepath.Join(root, want)) {
			t.Fatalf("manifest %s not found among %q", want, files)
		}
	}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		t.Run(rel, func(t *testing.T) {
			objs := readObjects(t, f)
			stored := a.apply(t, objs...)
			for i, s := range stored {
				if s.GetUID() == "" {
					t.Errorf("%s %s: stored without a uid", objs[i].GetKind(), objs[i].GetName())
				}
			}
		})
	}
}

// TestKustomizationsApply renders each kustomization with the kustomize API
// (what `kubectl apply -k` embeds) and applies the result.
func TestKustomizationsApply(t *testing.T) {
	api := bed.API(t)
	a := newApplier(t, api)
	want := []string{
		"ClusterRole//svcproxy",
		"ClusterRoleBinding//svcproxy",
		"ConfigMap/kube-system/svcproxy",
		"DaemonSet/kube-system/svcproxy",
		"ServiceAccount/kube-system/svcproxy",
	}
	for _, dir := range []string{"base", "overlays/ipvs"} {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, repoPath(t, "manifests", dir))
			var got []string
			for _, o := range objs {
				got = append(got, o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName())
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("rendered %q, want %q", got, want)
			}
			stored := a.apply(t, objs...)
			cm := find(t, stored, "ConfigMap", "svcproxy")
			data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
			if cfg := loadConf(t, data["config.conf"]); dir == "overlays/ipvs" && cfg.Mode != "ipvs" {
				t.Errorf("stored overlay config has mode %q, want ipvs", cfg.Mode)
			}
		})
	}
}
