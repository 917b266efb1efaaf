package bed_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) {
	if os.Getenv("BED_FAKE_PROXY") == "1" {
		os.Exit(runFakeProxy(os.Args[1:]))
	}
	os.Exit(bed.Main(m))
}

func TestAPIServerRoundTrip(t *testing.T) {
	api := bed.API(t)
	ctx := context.Background()

	v, err := api.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != "v1.36.3" {
		t.Errorf("server version = %q, want v1.36.3", v.GitVersion)
	}

	svc := bed.Service("bed-roundtrip/web", bed.ClusterIP("198.51.100.10"), bed.Port("http", 80, "TCP", 8080))
	slice := bed.EndpointSlice("bed-roundtrip/web-1", "web", bed.SlicePort("http", 8080, "TCP"),
		bed.Endpoint("203.0.113.2", bed.OnNode("n1")), bed.Endpoint("203.0.113.66", bed.OnNode("n2"), bed.Terminating()))
	api.Apply(t, svc, slice)
	t.Cleanup(func() { api.Delete(t, slice, svc) })

	got, err := api.Client.CoreV1().Services("bed-roundtrip").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service: %v", err)
	}
	if got.Spec.ClusterIP != "198.51.100.10" || got.Spec.Ports[0].TargetPort.IntValue() != 8080 {
		t.Errorf("service spec = %+v", got.Spec)
	}
	gotSlice, err := api.Client.DiscoveryV1().EndpointSlices("bed-roundtrip").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get slice: %v", err)
	}
	if n := len(gotSlice.Endpoints); n != 2 || *gotSlice.Endpoints[1].Conditions.Terminating != true {
		t.Errorf("slice endpoints = %+v", gotSlice.Endpoints)
	}

	// Apply again: an update that keeps the allocated fields and changes the endpoints.
	svc2 := bed.Service("bed-roundtrip/web", bed.Port("http", 80, "TCP", 9090), bed.NodePort(0))
	slice2 := bed.EndpointSlice("bed-roundtrip/web-1", "web", bed.SlicePort("http", 9090, "TCP"), bed.Endpoint("203.0.113.3"))
	api.Apply(t, svc2, slice2)
	if svc2.Spec.ClusterIP != "198.51.100.10" || svc2.Spec.Ports[0].NodePort == 0 {
		t.Errorf("updated service = %+v", svc2.Spec)
	}
	if len(slice2.Endpoints) != 1 || slice2.Endpoints[0].Addresses[0] != "203.0.113.3" {
		t.Errorf("updated slice = %+v", slice2.Endpoints)
	}

	// The proxy's identity sees services but may not change them (RBAC system:node-proxier).
	proxyClient := clientFor(t, api.Kubeconfig(t, api.ProxyToken))
	if _, err := proxyClient.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("kube-proxy user list services: %v", err)
	}
	err = proxyClient.CoreV1().Services("bed-roundtrip").Delete(ctx, "web", metav1.DeleteOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("kube-proxy user delete service: err = %v, want Forbidden", err)
	}

	api.Delete(t, slice, svc)
	if _, err := api.Client.CoreV1().Services("bed-roundtrip").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after delete: err = %v, want NotFound", err)
	}
}

func TestClusterTraffic(t *testing.T) {
	bed.RequireRoot(t)
	var prefix string
	t.Run("traffic", func(t *testing.T) {
		c := bed.NewCluster(t, bed.ClusterOptions{Nodes: 2, Clients: 1})
		prefix = c.Prefix
		node1, node2 := c.Nodes[0], c.Nodes[1]
		pod1 := c.AddPod(t, node1, "pod1", 8080, 8081)
		pod2 := c.AddPod(t, node1, "pod2")
		pod3 := c.AddPod(t, node2, "pod3")
		client := c.Clients[0]

		if pod1.IP.String() != "203.0.113.2" || pod3.IP.String() != "203.0.113.66" {
			t.Fatalf("pod IPs = %v %v, want the address plan's", pod1.IP, pod3.IP)
		}
		// First, before anything warms neighbour caches: a lost datagram is not retried,
		// so this fails when fresh links drop their first packets.
		t.Run("FirstDatagramAnswered", func(t *testing.T) {
			a, err := pod1.NS.UDPRequest(net.JoinHostPort(pod3.IP.String(), "8080"), 2*time.Second)
			if err != nil || a.Pod != "pod3" {
				t.Errorf("first datagram: answer %+v, err %v", a, err)
			}
		})
		t.Run("PodToPodAcrossNodes", func(t *testing.T) {
			a, err := pod1.NS.HTTPGet(net.JoinHostPort(pod3.IP.String(), "8080"), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if a.Pod != "pod3" || a.SourceIP() != pod1.IP.String() || a.Port != 8080 {
				t.Errorf("answer = %+v, want pod3 seeing %s on 8080", a, pod1.IP)
			}
		})
		t.Run("PodToPodSameNodeSecondPort", func(t *testing.T) {
			a, err := pod2.NS.HTTPGet(net.JoinHostPort(pod1.IP.String(), "8081"), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if a.Pod != "pod1" || a.SourceIP() != pod2.IP.String() || a.Port != 8081 {
				t.Errorf("answer = %+v, want pod1 seeing %s on 8081", a, pod2.IP)
			}
		})
		t.Run("UDP", func(t *testing.T) {
			a, err := pod3.NS.UDPRequest(net.JoinHostPort(pod1.IP.String(), "8080"), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if a.Pod != "pod1" || a.SourceIP() != pod3.IP.String() {
				t.Errorf("answer = %+v, want pod1 seeing %s", a, pod3.IP)
			}
			counts := pod1.NS.CountUDPAnswers(net.JoinHostPort(pod3.IP.String(), "8080"), 20)
			if counts.ByPod["pod3"] != 20 || counts.Failures != 0 {
				t.Errorf("udp counts = %v", counts)
			}
		})
		t.Run("CountAnswers", func(t *testing.T) {
			counts := pod3.NS.CountAnswers(net.JoinHostPort(pod2.IP.String(), "8080"), 20)
			if counts.ByPod["pod2"] != 20 || counts.Failures != 0 || counts.Sources[pod3.IP.String()] != 20 {
				t.Errorf("counts = %v sources %v", counts, counts.Sources)
			}
		})
		t.Run("ClientToNodeListener", func(t *testing.T) {
			l, err := node1.NS.Listen("tcp", net.JoinHostPort(node1.IP.String(), "9000"))
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = json.NewEncoder(w).Encode(bed.Answer{Pod: "node1-listener", Source: r.RemoteAddr})
			})}
			go func() { _ = srv.Serve(l) }()
			defer srv.Close()
			a, err := client.NS.HTTPGet(net.JoinHostPort(node1.IP.String(), "9000"), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if a.Pod != "node1-listener" || a.SourceIP() != client.IP.String() {
				t.Errorf("answer = %+v, want node1-listener seeing %s", a, client.IP)
			}
		})
		t.Run("ConnectRefused", func(t *testing.T) {
			r := pod1.NS.TCPConnect(net.JoinHostPort(pod3.IP.String(), "9999"), 2*time.Second)
			if r.Outcome != bed.Refused {
				t.Errorf("connect to closed port = %s (%v), want refused", r.Outcome, r.Err)
			}
		})
		t.Run("NodeSysctls", func(t *testing.T) {
			for key, want := range map[string]string{
				"net.ipv4.ip_forward":               "1",
				"net.ipv4.conf.all.send_redirects":  "0",
				"net.ipv4.conf.eth0.send_redirects": "0",
				"net.ipv4.icmp_ratelimit":           "0",
				"net.ipv4.conf.vp0.proxy_arp":       "1",
			} {
				got, err := node1.NS.ReadSysctl(key)
				if err != nil || got != want {
					t.Errorf("%s = %q (%v), want %q", key, got, err, want)
				}
			}
			routes := bed.ExecInNS(t, node1.NS, "ip", "route")
			for _, want := range []string{"default via 192.0.2.1", "203.0.113.64/26 via 192.0.2.12", "203.0.113.2 dev vp0"} {
				if !strings.Contains(routes, want) {
					t.Errorf("node1 routes lack %q:\n%s", want, routes)
				}
			}
			croutes := bed.ExecInNS(t, client.NS, "ip", "route")
			if !strings.Contains(croutes, "203.0.113.192/26 via 192.0.2.11") {
				t.Errorf("client routes lack the external range via node1:\n%s", croutes)
			}
		})
	})
	if prefix == "" {
		t.Fatal("cluster was not created")
	}
	left, err := bed.LeftoverNamespaces(prefix)
	if err != nil || len(left) != 0 {
		t.Errorf("namespaces left after cleanup: %v (%v)", left, err)
	}
}

func TestClusterIPv6(t *testing.T) {
	bed.RequireRoot(t)
	c := bed.NewCluster(t, bed.ClusterOptions{IPv6: true})
	pod1 := c.AddPod(t, c.Nodes[0], "pod1")
	pod2 := c.AddPod(t, c.Nodes[1], "pod2")
	if pod2.IPv6.String() != "2001:db8:1:0:2::2" {
		t.Fatalf("pod2 IPv6 = %v", pod2.IPv6)
	}
	a, err := pod1.NS.HTTPGet(net.JoinHostPort(pod2.IPv6.String(), "8080"), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pod != "pod2" || a.SourceIP() != pod1.IPv6.String() {
		t.Errorf("answer = %+v, want pod2 seeing %s", a, pod1.IPv6)
	}
	a, err = pod2.NS.UDPRequest(net.JoinHostPort(pod1.IPv6.String(), "8080"), 2*time.Second)
	if err != nil || a.Pod != "pod1" {
		t.Errorf("udp answer = %+v, %v", a, err)
	}
}

// TestProxyRunner runs a stand-in proxy (this test binary in fake mode) in a node
// namespace: it reaches the apiserver through the forwarder as system:kube-proxy, serves
// healthz and metrics on the node IP, and writes a chain into the node's iptables.
func TestProxyRunner(t *testing.T) {
	api := bed.API(t)
	c := bed.NewCluster(t, bed.ClusterOptions{API: api, Zones: []string{"zone-a", "zone-b"}})
	node1 := c.Nodes[0]
	if node1.Object.Labels[v1.LabelTopologyZone] != "zone-a" || node1.Object.Status.Addresses[0].Address != "192.0.2.11" {
		t.Errorf("node object = %+v", node1.Object)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p := c.StartProxyWith(t, node1, bed.ProxySpec{Binary: self, Env: []string{"BED_FAKE_PROXY=1"}})
	p.WaitHealthy(t)
	p.WaitHealthzAdvance(t, start)
	p.WaitSynced(t, start)
	node1.WaitIPTables(t, ":BED-FAKE", true)
	if !strings.Contains(p.Log(), "node "+node1.Name+" InternalIP 192.0.2.11") {
		t.Errorf("fake proxy did not read its Node object:\n%s", p.Log())
	}

	pid := p.PID()
	restartAt := time.Now()
	p.Restart(t)
	if p.PID() == pid {
		t.Errorf("restart kept pid %d", pid)
	}
	p.WaitSynced(t, restartAt)
	if got := strings.Count(p.Log(), "=== bed: start #"); got != 2 {
		t.Errorf("log has %d start markers, want 2", got)
	}
	p.Stop(t)
	if p.Running() {
		t.Error("proxy still running after Stop")
	}
	if !strings.Contains(p.Log(), "fake proxy: terminated") {
		t.Errorf("fake proxy did not stop on SIGTERM:\n%s", p.Log())
	}
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
