package bed

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
)

// Apply creates or updates each object (Service, EndpointSlice, Node, Namespace), writing
// the status of Services and Nodes through the status subresource. Each object is
// overwritten in place with the stored result, so allocated clusterIPs and nodePorts are
// visible to the caller. Namespaces of namespaced objects are created when missing.
func (a *APIServer) Apply(t testing.TB, objs ...runtime.Object) {
	t.Helper()
	for _, o := range objs {
		if err := Apply(a.Client, o); err != nil {
			t.Fatalf("bed: apply: %v", err)
		}
	}
}

// Delete deletes each object by kind and name; missing objects are not an error.
func (a *APIServer) Delete(t testing.TB, objs ...runtime.Object) {
	t.Helper()
	for _, o := range objs {
		if err := Delete(a.Client, o); err != nil {
			t.Fatalf("bed: delete: %v", err)
		}
	}
}

// Apply is the error-returning form of APIServer.Apply.
func Apply(c kubernetes.Interface, obj runtime.Object) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch o := obj.(type) {
	case *v1.Service:
		if err := ensureNamespace(ctx, c, o.Namespace); err != nil {
			return err
		}
		return applyService(ctx, c, o)
	case *discovery.EndpointSlice:
		if err := ensureNamespace(ctx, c, o.Namespace); err != nil {
			return err
		}
		return applySlice(ctx, c, o)
	case *v1.Node:
		return applyNode(ctx, c, o)
	case *v1.Namespace:
		return ensureNamespace(ctx, c, o.Name)
	default:
		return fmt.Errorf("unsupported object %T", obj)
	}
}

// Delete is the error-returning form of APIServer.Delete.
func Delete(c kubernetes.Interface, obj runtime.Object) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	var what string
	switch o := obj.(type) {
	case *v1.Service:
		what = "service " + o.Namespace + "/" + o.Name
		err = c.CoreV1().Services(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
	case *discovery.EndpointSlice:
		what = "endpointslice " + o.Namespace + "/" + o.Name
		err = c.DiscoveryV1().EndpointSlices(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
	case *v1.Node:
		what = "node " + o.Name
		err = c.CoreV1().Nodes().Delete(ctx, o.Name, metav1.DeleteOptions{})
	case *v1.Namespace:
		what = "namespace " + o.Name
		err = c.CoreV1().Namespaces().Delete(ctx, o.Name, metav1.DeleteOptions{})
	default:
		return fmt.Errorf("unsupported object %T", obj)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", what, err)
	}
	return nil
}

func ensureNamespace(ctx context.Context, c kubernetes.Interface, name string) error {
	if name == "" || name == "default" {
		return nil
	}
	_, err := c.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

func applyService(ctx context.Context, c kubernetes.Interface, want *v1.Service) error {
	svcs := c.CoreV1().Services(want.Namespace)
	status := want.Status
	cur, err := svcs.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cur, err = svcs.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %s/%s: %w", want.Namespace, want.Name, err)
		}
	case err != nil:
		return fmt.Errorf("get service %s/%s: %w", want.Namespace, want.Name, err)
	default:
		keepAllocated(want, cur)
		want.ResourceVersion = cur.ResourceVersion
		cur, err = svcs.Update(ctx, want, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update service %s/%s: %w", want.Namespace, want.Name, err)
		}
	}
	cur.Status = status
	cur, err = svcs.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update service status %s/%s: %w", want.Namespace, want.Name, err)
	}
	*want = *cur
	return nil
}

// keepAllocated copies what the apiserver allocated (and does not let an update drop)
// into a desired Service that leaves it unset.
func keepAllocated(want, cur *v1.Service) {
	if want.Spec.ClusterIP == "" {
		want.Spec.ClusterIP = cur.Spec.ClusterIP
		want.Spec.ClusterIPs = cur.Spec.ClusterIPs
		if want.Spec.IPFamilies == nil {
			want.Spec.IPFamilies = cur.Spec.IPFamilies
		}
	}
	if want.Spec.IPFamilyPolicy == nil {
		want.Spec.IPFamilyPolicy = cur.Spec.IPFamilyPolicy
	}
	for i := range want.Spec.Ports {
		if want.Spec.Ports[i].NodePort != 0 {
			continue
		}
		for _, cp := range cur.Spec.Ports {
			if cp.Name == want.Spec.Ports[i].Name && cp.Protocol == want.Spec.Ports[i].Protocol {
				want.Spec.Ports[i].NodePort = cp.NodePort
			}
		}
	}
	if want.Spec.HealthCheckNodePort == 0 && want.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
		want.Spec.HealthCheckNodePort = cur.Spec.HealthCheckNodePort
	}
}

func applySlice(ctx context.Context, c kubernetes.Interface, want *discovery.EndpointSlice) error {
	slices := c.DiscoveryV1().EndpointSlices(want.Namespace)
	cur, err := slices.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cur, err = slices.Create(ctx, want, metav1.CreateOptions{})
	case err != nil:
	default:
		want.ResourceVersion = cur.ResourceVersion
		cur, err = slices.Update(ctx, want, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("apply endpointslice %s/%s: %w", want.Namespace, want.Name, err)
	}
	*want = *cur
	return nil
}

func applyNode(ctx context.Context, c kubernetes.Interface, want *v1.Node) error {
	nodes := c.CoreV1().Nodes()
	status := want.Status
	cur, err := nodes.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cur, err = nodes.Create(ctx, want, metav1.CreateOptions{})
	case err != nil:
	default:
		want.ResourceVersion = cur.ResourceVersion
		cur, err = nodes.Update(ctx, want, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("apply node %s: %w", want.Name, err)
	}
	cur.Status = status
	cur, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update node status %s: %w", want.Name, err)
	}
	*want = *cur
	return nil
}
