package manifests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// fieldManager owns every field these tests apply.
const fieldManager = "svcproxy-manifests-e2e"

// repoPath joins parts under the repository root.
func repoPath(t testing.TB, parts ...string) string {
	t.Helper()
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return filepath.Join(append([]string{root}, parts...)...)
}

// decodeObjects splits a multi-document YAML stream into objects, skipping
// empty documents.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// readObjects reads the objects of one manifest file.
func readObjects(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeObjects(data)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	if len(objs) == 0 {
		t.Fatalf("%s holds no object", path)
	}
	return objs
}

// render builds a kustomization directory the way `kubectl apply -k` does.
func render(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := resMap.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: yaml: %v", dir, err)
	}
	objs, err := decodeObjects(out)
	if err != nil {
		t.Fatalf("decode kustomize output of %s: %v", dir, err)
	}
	return objs
}

// find returns the object of the given kind and name; it fails the test when
// there is none.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q among %d objects", kind, name, len(objs))
	return nil
}

// typed converts an object into its Go type (strictly: unknown fields fail).
func typed[T any](t testing.TB, o *unstructured.Unstructured) *T {
	t.Helper()
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &out, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return &out
}

// manifestFiles lists every object file under manifests/ (not the
// kustomization files themselves), in name order.
func manifestFiles(t testing.TB) []string {
	t.Helper()
	root := repoPath(t, "manifests")
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ext := filepath.Ext(p)
		if d.IsDir() || (ext != ".yaml" && ext != ".yml") || d.Name() == "kustomization.yaml" {
			return nil
		}
		files = append(files, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// warnings collects the API server's warnings (deprecated fields, fields it
// dropped) so a test can require there are none.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// applier server-side applies unstructured objects with a dynamic client.
type applier struct {
	dyn      dynamic.Interface
	mapper   meta.RESTMapper
	warnings *warnings
}

func newApplier(t testing.TB, api *bed.APIServer) *applier {
	t.Helper()
	cfg := rest.CopyConfig(api.Config)
	w := &warnings{}
	cfg.WarningHandler = w
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), warnings: w}
}

// kindOrder applies what others depend on first, like kubectl and kustomize.
var kindOrder = []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service", "EndpointSlice", "DaemonSet"}

func kindRank(kind string) int {
	if i := slices.Index(kindOrder, kind); i >= 0 {
		return i
	}
	return len(kindOrder)
}

// apply server-side applies objs (force, strict field validation) and
// returns what the server stored. The API server must raise no warning.
func (a *applier) apply(t testing.TB, objs ...*unstructured.Unstructured) []*unstructured.Unstructured {
	t.Helper()
	sorted := slices.Clone(objs)
	slices.SortStableFunc(sorted, func(x, y *unstructured.Unstructured) int { return kindRank(x.GetKind()) - kindRank(y.GetKind()) })
	var stored []*unstructured.Unstructured
	for _, o := range sorted {
		got, err := a.applyOne(o)
		if err != nil {
			t.Fatalf("server-side apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
		if w := a.warnings.take(); len(w) > 0 {
			t.Errorf("server-side apply %s %s/%s: warnings %q", o.GetKind(), o.GetNamespace(), o.GetName(), w)
		}
		stored = append(stored, got)
	}
	return stored
}

func (a *applier) applyOne(o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("map %v: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := o.GetNamespace()
		if ns == "" {
			return nil, fmt.Errorf("namespaced %s without a namespace", gvk.Kind)
		}
		ri = a.dyn.Resource(m.Resource).Namespace(ns)
	}
	data, err := o.MarshalJSON()
	if err != nil {
		return nil, err
	}
	force := true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager:    fieldManager,
		Force:           &force,
		FieldValidation: metav1.FieldValidationStrict,
	})
}

// stripEscapes undoes klog's quoting of nested strings (\" → "), so log
// lines can be matched against the API server's error text.
func stripEscapes(s string) string { return strings.ReplaceAll(s, `\"`, `"`) }
