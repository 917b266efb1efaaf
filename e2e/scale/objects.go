package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Address plan of the harness (scale range 198.18.0.0/15): ClusterIPs from
// 198.18.0.16 up, initial endpoints in 198.19.0.0/16 (reused across services beyond
// 65k endpoints, which chain names tell apart), added and churned endpoints in
// 198.18.128.0/17.
var (
	serviceBase = netip.MustParseAddr("198.18.0.16")
	endpointNet = netip.MustParseAddr("198.19.0.0")
	churnNet    = netip.MustParseAddr("198.18.128.0")
)

const (
	// ServiceCIDR is the apiserver's service range the harness needs.
	ServiceCIDR = "198.18.0.0/16"
	svcPort     = 80
	targetPort  = 8080
)

func addrAt(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// objects holds the Services and their EndpointSlices (the latest stored versions).
type objects struct {
	client    kubernetes.Interface
	namespace string
	n, m      int
	probeIP   string // the echo pod, sole endpoint of the last service
	mu        []sync.Mutex
	slices    []*discovery.EndpointSlice
	nextChurn atomic.Int64
}

func svcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func (o *objects) portName(i int) string { return o.namespace + "/" + svcName(i) + ":http" }

func (o *objects) clusterIP(i int) string { return addrAt(serviceBase, i).String() }

// probe is the service backed by the echo pod.
func (o *objects) probe() int { return o.n - 1 }

func (o *objects) service(i int) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: o.namespace, Name: svcName(i)},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: o.clusterIP(i),
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: svcPort,
				TargetPort: intstr.FromInt32(targetPort)}},
		},
	}
}

func (o *objects) slice(i int) *discovery.EndpointSlice {
	name, proto, port := "http", v1.ProtocolTCP, int32(targetPort)
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: o.namespace, Name: svcName(i) + "-1",
			Labels: map[string]string{discovery.LabelServiceName: svcName(i), discovery.LabelManagedBy: "svcproxy-scale"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	if i == o.probe() {
		es.Endpoints = []discovery.Endpoint{endpoint(o.probeIP)}
		return es
	}
	for j := range o.m {
		es.Endpoints = append(es.Endpoints, endpoint(addrAt(endpointNet, (i*o.m+j)%65000+1).String()))
	}
	return es
}

func endpoint(ip string) discovery.Endpoint {
	t, f := true, false
	node := "elsewhere"
	return discovery.Endpoint{Addresses: []string{ip}, NodeName: &node,
		Conditions: discovery.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f}}
}

func stampTrigger(es *discovery.EndpointSlice, at time.Time) {
	if es.Annotations == nil {
		es.Annotations = map[string]string{}
	}
	es.Annotations[v1.EndpointsLastChangeTriggerTime] = at.UTC().Format(time.RFC3339Nano)
}

// create writes the namespace, every Service and every EndpointSlice with bounded
// concurrency.
func (o *objects) create(ctx context.Context, workers int) error {
	_, err := o.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", o.namespace, err)
	}
	o.mu = make([]sync.Mutex, o.n)
	o.slices = make([]*discovery.EndpointSlice, o.n)
	return parallel(o.n, workers, func(i int) error {
		if _, err := o.client.CoreV1().Services(o.namespace).Create(ctx, o.service(i), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create service %d: %w", i, err)
		}
		es := o.slice(i)
		stampTrigger(es, time.Now())
		cur, err := o.client.DiscoveryV1().EndpointSlices(o.namespace).Create(ctx, es, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create endpointslice %d: %w", i, err)
		}
		o.slices[i] = cur
		return nil
	})
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range max(1, min(workers, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// freshEndpoint is an address never used before in this harness run (wraps after 32k).
func (o *objects) freshEndpoint() string {
	return addrAt(churnNet, int(o.nextChurn.Add(1)%32000)).String()
}

// mutate applies fn to service i's slice and writes it with a fresh trigger time,
// retrying on conflicts; it returns the time the update was sent.
func (o *objects) mutate(ctx context.Context, i int, fn func(*discovery.EndpointSlice)) (time.Time, error) {
	o.mu[i].Lock()
	defer o.mu[i].Unlock()
	api := o.client.DiscoveryV1().EndpointSlices(o.namespace)
	cur := o.slices[i]
	for attempt := 0; ; attempt++ {
		es := cur.DeepCopy()
		fn(es)
		sent := time.Now()
		stampTrigger(es, sent)
		stored, err := api.Update(ctx, es, metav1.UpdateOptions{})
		if err == nil {
			o.slices[i] = stored
			return sent, nil
		}
		if !apierrors.IsConflict(err) || attempt >= 3 {
			return sent, fmt.Errorf("update endpointslice of %s: %w", svcName(i), err)
		}
		if cur, err = api.Get(ctx, es.Name, metav1.GetOptions{}); err != nil {
			return sent, fmt.Errorf("get endpointslice of %s: %w", svcName(i), err)
		}
	}
}

// mark is where an endpoint of a service shows in the kernel: its KUBE-SEP chain in
// iptables mode, its real server under the ClusterIP's virtual server in IPVS mode.
type mark struct{ svcPort, vip, ep string }

func (o *objects) mark(i int, ip string) mark {
	return mark{svcPort: o.portName(i), vip: fmt.Sprintf("%s:%d", o.clusterIP(i), svcPort), ep: fmt.Sprintf("%s:%d", ip, targetPort)}
}

func (m mark) chain() string { return sepChain(m.svcPort, m.ep) }

// addEndpoint adds a fresh endpoint to service i; it returns where it will show.
func (o *objects) addEndpoint(ctx context.Context, i int) (mark, time.Time, error) {
	ip := o.freshEndpoint()
	sent, err := o.mutate(ctx, i, func(es *discovery.EndpointSlice) { es.Endpoints = append(es.Endpoints, endpoint(ip)) })
	return o.mark(i, ip), sent, err
}

// replaceEndpoint replaces endpoint j (mod the slice's size) of service i with a
// fresh address; it returns where the new endpoint will show.
func (o *objects) replaceEndpoint(ctx context.Context, i, j int) (mark, time.Time, error) {
	ip := o.freshEndpoint()
	sent, err := o.mutate(ctx, i, func(es *discovery.EndpointSlice) {
		es.Endpoints[j%len(es.Endpoints)] = endpoint(ip)
	})
	return o.mark(i, ip), sent, err
}
