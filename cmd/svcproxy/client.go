package main

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// newClient builds the API client from --kubeconfig/--master (in-cluster
// config when both are empty) with the configured QPS, burst and content type.
func newClient(cfg *v1alpha1.KubeProxyConfiguration, master string) (kubernetes.Interface, error) {
	cc := cfg.ClientConnection
	rc, err := clientcmd.BuildConfigFromFlags(master, cc.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %q: %w", cc.Kubeconfig, err)
	}
	rc.QPS = cc.QPS
	rc.Burst = int(cc.Burst)
	rc.ContentType = cc.ContentType
	rc.AcceptContentTypes = cc.AcceptContentTypes
	rc.UserAgent = "svcproxy/" + version
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("create API client: %w", err)
	}
	return client, nil
}

// newRecorder returns an event recorder writing core/v1 Events as "svcproxy".
func newRecorder(client kubernetes.Interface, nodeName string) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartStructuredLogging(2)
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	r := b.NewRecorder(scheme.Scheme, v1.EventSource{Component: "svcproxy", Host: nodeName})
	return r, b.Shutdown
}

// waitForNode fetches this node's object, retrying for up to timeout as
// kube-proxy does; nil means it was not found in time (or access was denied,
// which is logged so RBAC mistakes are visible).
func waitForNode(ctx context.Context, client kubernetes.Interface, name string, timeout time.Duration) *v1.Node {
	var node *v1.Node
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			klog.InfoS("Waiting for node object", "node", name, "err", err)
			return false, nil
		}
		if len(n.Status.Addresses) == 0 {
			return false, nil
		}
		node = n
		return true, nil
	})
	if err != nil {
		klog.InfoS("Node not found in time; using --bind-address for node IPs", "node", name, "timeout", timeout)
	}
	return node
}

func nodeRef(name string) *v1.ObjectReference {
	return &v1.ObjectReference{Kind: "Node", Name: name, UID: "", Namespace: ""}
}
