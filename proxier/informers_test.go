package proxier

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

// newWatchedClient returns a fake clientset that reports each watch it
// opens, so tests write objects only once the informers can see them.
func newWatchedClient(objs ...runtime.Object) (*fake.Clientset, chan string) {
	client := fake.NewClientset(objs...)
	started := make(chan string, 10)
	client.PrependWatchReactor("*", func(action clienttesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		started <- action.GetResource().Resource
		return true, w, nil
	})
	return client, started
}

func TestInformerWiring(t *testing.T) {
	proxied := makeService("ns/other-proxy", clusterIPs("198.51.100.30"), svcPort("http", tcp, 80, 0), svcLabel(LabelServiceProxyName, "other"))
	headless := makeService("ns/headless", clusterIPs("None"), svcPort("http", tcp, 80, 0))
	node2 := testNode("192.0.2.12")
	node2.Name = "node2"
	client, started := newWatchedClient(testNode("192.0.2.11", "2001:db8:2::11"), node2, webSvc, webSlice, proxied, headless)

	tp := newTestProxier(t, dual...)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	StartInformers(ctx, client, "node1", 0, tp.Proxier)
	tp.run(t)
	for range 3 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatalf("informers did not start watching")
		}
	}
	v4, v6 := tp.dp[ipv4], tp.dp[ipv6]
	waitFor(t, "initial sync", func() bool { s := v4.last(); return s != nil && len(s.Endpoints[webHTTP]) == 2 })
	first := v4.last()
	if len(first.Services) != 1 || first.Services[webHTTP] == nil {
		t.Errorf("initial IPv4 services %v, want only ns/web", first.Services)
	}
	if !slices.Equal(first.Node.IPs, addrs("192.0.2.11")) {
		t.Errorf("node IPs %v: another node's object leaked in", first.Node.IPs)
	}
	waitFor(t, "IPv6 initial sync", func() bool { s := v6.last(); return s != nil && s.Services[webHTTP] != nil })

	svcs := client.CoreV1().Services("ns")
	slices1 := client.DiscoveryV1().EndpointSlices("ns")
	dns := dnsSvc.DeepCopy()
	if _, err := svcs.Create(ctx, dns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsSlice := makeSlice("ns/dns-1", "dns", discovery.AddressTypeIPv4, slicePort("dns", udp, 53), sliceEndpoint("203.0.113.20"), sliceEndpoint("203.0.113.21"))
	if _, err := slices1.Create(ctx, dnsSlice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dns with endpoints", func() bool { return len(v4.last().Endpoints[dnsUDP]) == 2 })
	if v6.last().Services[dnsUDP] != nil {
		t.Errorf("IPv4-only service reached the IPv6 data plane")
	}

	dnsSlice.Endpoints = dnsSlice.Endpoints[:1]
	if _, err := slices1.Update(ctx, dnsSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "endpoint removed", func() bool { return len(v4.last().Endpoints[dnsUDP]) == 1 })
	if !anySnapshot(v4, func(s *Snapshot) bool {
		return slices.Equal(s.StaleEndpoints[dnsUDP], []netip.AddrPort{netip.MustParseAddrPort("203.0.113.21:53")})
	}) {
		t.Errorf("no snapshot reported 203.0.113.21:53 as a stale UDP endpoint")
	}

	// A headless-labelled slice and a slice for a service proxied elsewhere are ignored.
	hl := makeSlice("ns/headless-1", "headless", discovery.AddressTypeIPv4, slicePort("http", tcp, 80), sliceEndpoint("203.0.113.40"))
	hl.Labels[LabelHeadless] = ""
	if _, err := slices1.Create(ctx, hl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := svcs.Delete(ctx, "dns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dns removed", func() bool { return v4.last().Services[dnsUDP] == nil })
	if !anySnapshot(v4, func(s *Snapshot) bool { return s.Removed[dnsUDP] != nil && s.Changed.Has(dnsUDP) }) {
		t.Errorf("no snapshot reported ns/dns as removed")
	}
	if err := slices1.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web endpoints gone", func() bool { return len(v4.last().Endpoints[webHTTP]) == 0 })
	if last := v4.last(); len(last.Services) != 1 {
		t.Errorf("services after deletions %v, want only ns/web", last.Services)
	}

	node := testNode("192.0.2.11", "2001:db8:2::11")
	node.Spec.Taints = []v1.Taint{{Key: TaintToBeDeletedByClusterAutoscaler, Effect: v1.TaintEffectNoSchedule}}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node ineligible", func() bool { return !v4.last().Node.Eligible && !v6.last().Node.Eligible })
}

func anySnapshot(d *recordingDataPlane, pred func(*Snapshot) bool) bool {
	return slices.ContainsFunc(d.all(), pred)
}
