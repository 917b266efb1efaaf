package manifests

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// saUser is how the API server names the DaemonSet's ServiceAccount.
const saUser = "system:serviceaccount:kube-system:svcproxy"

// rbacEnv is the manifests' RBAC installed on the bed's apiserver, with a
// client authenticated by a token of the ServiceAccount.
type rbacEnv struct {
	api   *bed.APIServer
	role  *rbacv1.ClusterRole // as in the manifest
	token string
	sa    kubernetes.Interface
	node  string // a Node the ServiceAccount reads, as svcproxy reads its own
	event *v1.Event
}

// installRBAC applies serviceaccount.yaml and rbac.yaml, requests a token for
// the ServiceAccount (TokenRequest API) and creates the objects the calls
// below touch. The ClusterRole is restored from the manifest on cleanup.
func installRBAC(t *testing.T, api *bed.APIServer) *rbacEnv {
	t.Helper()
	a := newApplier(t, api)
	var objs []*unstructured.Unstructured
	for _, f := range []string{"serviceaccount.yaml", "rbac.yaml"} {
		objs = append(objs, readObjects(t, repoPath(t, "manifests", "base", f))...)
	}
	a.apply(t, objs...)
	e := &rbacEnv{api: api, role: typed[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole", "svcproxy"))}
	t.Cleanup(func() { e.setRules(t, e.role.Rules) })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exp := int64(3600)
	tr, err := api.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "svcproxy",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for kube-system/svcproxy: %v", err)
	}
	e.token = tr.Status.Token
	e.sa, err = kubernetes.NewForConfig(&rest.Config{Host: api.URL, BearerToken: e.token, TLSClientConfig: rest.TLSClientConfig{CAFile: api.CAFile},
		QPS: 100, Burst: 200})
	if err != nil {
		t.Fatal(err)
	}

	e.node = "svcproxy-rbac-node"
	api.Apply(t, bed.NodeObject(e.node, []string{"192.0.2.11"}, []string{"203.0.113.0/26"}, nil))
	t.Cleanup(func() { api.Delete(t, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.node}}) })
	_, err = api.Client.CoreV1().Events("default").Create(ctx, &v1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "svcproxy-rbac.1"},
		InvolvedObject: v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: "default", Name: "kubernetes"},
		Type:           v1.EventTypeWarning, Reason: "SvcproxyRBACTest", Message: "patched by the ServiceAccount", Count: 1,
		Source: v1.EventSource{Component: "svcproxy"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create event: %v", err)
	}
	e.event = &v1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svcproxy-rbac.1"}}
	return e
}

// setRules replaces the ClusterRole's rules (as admin).
func (e *rbacEnv) setRules(t testing.TB, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cur, err := e.api.Client.RbacV1().ClusterRoles().Get(ctx, e.role.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ClusterRole: %v", err)
	}
	cur.Rules = rules
	if _, err := e.api.Client.RbacV1().ClusterRoles().Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ClusterRole: %v", err)
	}
}

// apiCall is one request svcproxy makes, made here with the same client
// calls its informers and event recorder make.
type apiCall struct {
	group, resource, verb string
	do                    func(ctx context.Context, e *rbacEnv) error
}

func (c apiCall) String() string { return fmt.Sprintf("%s %s.%s", c.verb, c.resource, c.group) }

func watchOnce(w interface{ Stop() }, err error) error {
	if err == nil {
		w.Stop()
	}
	return err
}

// svcproxyCalls is every call svcproxy makes to the API server.
var svcproxyCalls = []apiCall{
	{"", "services", "list", func(ctx context.Context, e *rbacEnv) error {
		_, err := e.sa.CoreV1().Services("").List(ctx, metav1.ListOptions{Limit: 1})
		return err
	}},
	{"", "services", "watch", func(ctx context.Context, e *rbacEnv) error {
		return watchOnce(e.sa.CoreV1().Services("").Watch(ctx, metav1.ListOptions{}))
	}},
	{"discovery.k8s.io", "endpointslices", "list", func(ctx context.Context, e *rbacEnv) error {
		_, err := e.sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{Limit: 1})
		return err
	}},
	{"discovery.k8s.io", "endpointslices", "watch", func(ctx context.Context, e *rbacEnv) error {
		return watchOnce(e.sa.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{}))
	}},
	{"", "nodes", "get", func(ctx context.Context, e *rbacEnv) error {
		_, err := e.sa.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		return err
	}},
	{"", "nodes", "list", func(ctx context.Context, e *rbacEnv) error {
		_, err := e.sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", e.node).String()})
		return err
	}},
	{"", "nodes", "watch", func(ctx context.Context, e *rbacEnv) error {
		return watchOnce(e.sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", e.node).String()}))
	}},
	{"", "events", "create", func(ctx context.Context, e *rbacEnv) error {
		_, err := e.sa.CoreV1().Events("default").Create(ctx, &v1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: "svcproxy-rbac."},
			InvolvedObject: v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: "default", Name: "kubernetes"},
			Type:           v1.EventTypeWarning, Reason: "SvcproxyRBACTest", Message: "created by the ServiceAccount", Count: 1,
			Source: v1.EventSource{Component: "svcproxy"},
		}, metav1.CreateOptions{})
		return err
	}},
	{"", "events", "patch", func(ctx context.Context, e *rbacEnv) error {
		// What the recorder sends for a repeated event.
		patch := fmt.Appendf(nil, `{"count":%d,"lastTimestamp":%q}`, time.Now().Unix()%1000+2, time.Now().UTC().Format(time.RFC3339))
		_, err := e.sa.CoreV1().Events(e.event.Namespace).Patch(ctx, e.event.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		return err
	}},
}

// notNeeded are requests svcproxy never makes; the ServiceAccount must be
// denied each of them.
var notNeeded = []authzv1.ResourceAttributes{
	{Resource: "secrets", Verb: "get", Namespace: "kube-system"},
	{Resource: "secrets", Verb: "list"},
	{Resource: "configmaps", Verb: "list"},
	{Resource: "pods", Verb: "list"},
	{Resource: "endpoints", Verb: "list"},
	{Resource: "services", Verb: "get", Namespace: "default"},
	{Resource: "services", Verb: "create", Namespace: "default"},
	{Resource: "services", Verb: "update", Namespace: "default"},
	{Resource: "services", Verb: "patch", Namespace: "default", Subresource: "status"},
	{Resource: "services", Verb: "delete", Namespace: "default"},
	{Group: "discovery.k8s.io", Resource: "endpointslices", Verb: "create", Namespace: "default"},
	{Group: "discovery.k8s.io", Resource: "endpointslices", Verb: "get", Namespace: "default"},
	{Resource: "nodes", Verb: "update"},
	{Resource: "nodes", Verb: "patch", Subresource: "status"},
	{Resource: "nodes", Verb: "delete"},
	{Resource: "events", Verb: "update", Namespace: "default"},
	{Resource: "events", Verb: "list", Namespace: "default"},
	{Resource: "events", Verb: "delete", Namespace: "default"},
	{Group: "events.k8s.io", Resource: "events", Verb: "create", Namespace: "default"},
	{Group: "networking.k8s.io", Resource: "servicecidrs", Verb: "list"},
	{Resource: "serviceaccounts", Verb: "create", Subresource: "token", Namespace: "kube-system"},
	{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "update"},
}

// allowed asks the API server whether the ServiceAccount may do attrs.
func (e *rbacEnv) allowed(ctx context.Context, attrs authzv1.ResourceAttributes) (bool, error) {
	r, err := e.sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
		&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

// ruleTriples lists what a rule grants as "verb resource.group".
func ruleTriples(r rbacv1.PolicyRule) []string {
	var out []string
	for _, g := range r.APIGroups {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				out = append(out, apiCall{group: g, resource: res, verb: v}.String())
			}
		}
	}
	return out
}

// covers reports whether rule grants call.
func covers(r rbacv1.PolicyRule, c apiCall) bool {
	return slices.Contains(ruleTriples(r), c.String())
}

func TestClusterRoleIsExactlyWhatSvcproxyCalls(t *testing.T) {
	role := typed[rbacv1.ClusterRole](t, find(t, readObjects(t, repoPath(t, "manifests", "base", "rbac.yaml")), "ClusterRole", "svcproxy"))
	var granted, needed []string
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: resourceNames/nonResourceURLs are not expected", r)
		}
		granted = append(granted, ruleTriples(r)...)
	}
	for _, c := range svcproxyCalls {
		needed = append(needed, c.String())
	}
	slices.Sort(granted)
	slices.Sort(needed)
	if !slices.Equal(granted, needed) {
		t.Errorf("ClusterRole grants %q\nsvcproxy calls      %q", granted, needed)
	}
}

// TestServiceAccountRBAC proves on a real API server, with a token of the
// ServiceAccount, that svcproxy's calls are allowed, others are not, and that
// every rule of the ClusterRole is needed.
func TestServiceAccountRBAC(t *testing.T) {
	e := installRBAC(t, bed.API(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("svcproxy calls allowed", func(t *testing.T) {
		for _, c := range svcproxyCalls {
			ok, err := e.allowed(ctx, authzv1.ResourceAttributes{Group: c.group, Resource: c.resource, Verb: c.verb})
			if err != nil || !ok {
				t.Errorf("SelfSubjectAccessReview %s: allowed=%v err=%v", c, ok, err)
			}
		}
		bed.Eventually(t, bed.WaitTimeout, "every svcproxy call succeeds", func() (bool, string) {
			return e.check(ctx, nil)
		})
	})

	t.Run("other calls forbidden", func(t *testing.T) {
		for _, attrs := range notNeeded {
			ok, err := e.allowed(ctx, attrs)
			if err != nil || ok {
				t.Errorf("SelfSubjectAccessReview %+v: allowed=%v err=%v, want denied", attrs, ok, err)
			}
		}
		_, err := e.sa.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("list secrets as %s: %v, want Forbidden", saUser, err)
		}
	})

	for i, rule := range e.role.Rules {
		t.Run(fmt.Sprintf("without rule %d %v", i, ruleTriples(rule)), func(t *testing.T) {
			e.setRules(t, slices.Delete(slices.Clone(e.role.Rules), i, i+1))
			defer e.setRules(t, e.role.Rules)
			bed.Eventually(t, bed.WaitTimeout, "exactly the rule's calls are forbidden", func() (bool, string) {
				return e.check(ctx, &rule)
			})
		})
	}
	e.setRules(t, e.role.Rules)
	bed.Eventually(t, bed.WaitTimeout, "every call allowed again", func() (bool, string) { return e.check(ctx, nil) })
}

// check makes every svcproxy call and reports whether those covered by
// removed are Forbidden and all others succeed.
func (e *rbacEnv) check(ctx context.Context, removed *rbacv1.PolicyRule) (bool, string) {
	var wrong []string
	for _, c := range svcproxyCalls {
		err := c.do(ctx, e)
		wantForbidden := removed != nil && covers(*removed, c)
		switch {
		case wantForbidden && !apierrors.IsForbidden(err):
			wrong = append(wrong, fmt.Sprintf("%s: %v, want Forbidden", c, err))
		case !wantForbidden && err != nil:
			wrong = append(wrong, fmt.Sprintf("%s: %v", c, err))
		}
	}
	return len(wrong) == 0, fmt.Sprint(wrong)
}
