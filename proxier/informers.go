package proxier

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// proxyLabelSelector leaves out what kube-proxy leaves out: objects handled by
// another service proxy, and the EndpointSlices of headless services. Like
// kube-proxy, both informers use both requirements (the EndpointSlice
// controller copies service labels onto slices).
func proxyLabelSelector() string {
	noProxyName, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // constant input
	}
	noHeadless, err := labels.NewRequirement(LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*noProxyName, *noHeadless).String()
}

// StartInformers watches Services, EndpointSlices and this node (by field
// selector), feeds p, and tells p when each initial list was delivered. The
// informers stop with ctx.
func StartInformers(ctx context.Context, client kubernetes.Interface, nodeName string, resync time.Duration, p *Proxier) {
	selector := proxyLabelSelector()
	factory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector(metav1.ObjectNameField, nodeName).String()
		}))

	watch := func(what string, inf cache.SharedIndexInformer, h cache.ResourceEventHandler, synced func()) {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			// Only happens for a stopped informer, which we just created.
			klog.ErrorS(err, "Failed to add event handler", "resource", what)
			return
		}
		go func() {
			if cache.WaitForNamedCacheSync(what, ctx.Done(), reg.HasSynced) {
				synced()
			}
		}()
	}
	watch("services", factory.Core().V1().Services().Informer(), p.ServiceHandler(), p.OnServicesSynced)
	watch("endpointslices", factory.Discovery().V1().EndpointSlices().Informer(), p.EndpointSliceHandler(), p.OnEndpointSlicesSynced)
	watch("node", nodeFactory.Core().V1().Nodes().Informer(), p.NodeHandler(), func() {})

	factory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
}
