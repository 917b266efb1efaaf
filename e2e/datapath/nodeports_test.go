package datapath

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// NodePort scenarios: a client outside the cluster reaching a pod through a node's
// address, with externalTrafficPolicy Cluster (masqueraded, any node) and Local (client
// address kept, only nodes with a local endpoint answer, per-service health check).

func init() {
	register("NodePortCluster", testNodePortCluster)
	register("NodePortLocal", testNodePortLocal)
}

// nodePortRequests is the size of the counted loops through a node port.
const nodePortRequests = 50

func testNodePortCluster(t *testing.T, e *Env) {
	c := e.C
	node1, node2 := c.Node("node1"), c.Node("node2")
	pod := c.AddPod(t, node2, "npcluster-a")
	client := c.Clients[0]
	np := e.NodePort()
	svcApply(t, e,
		bed.Service(c.Key("npcluster"), bed.ClusterIP(e.ClusterIP()),
			bed.Port("p", 80, "TCP", 8080), bed.NodePort(np)),
		bed.EndpointSlice(c.Key("npcluster-1"), "npcluster", bed.SlicePort("p", 8080, "TCP"), svcEndpoint(pod)))

	// node1 has no endpoint: it forwards to node2's pod and must masquerade, or the
	// pod's reply would go straight back to the client and be dropped. The pod sees
	// node1's address (the one node1 sends from towards node2).
	target := svcAddr(node1.IP.String(), np)
	svcWaitHTTP(t, client.NS, target, pod)
	counts := client.NS.CountAnswers(target, nodePortRequests)
	t.Logf("via node1: %v sources %v", counts, counts.Sources)
	if counts.Failures != 0 || counts.ByPod[pod.Name] != nodePortRequests {
		t.Errorf("client → node1:%d: %v, want all %d answered by %s", np, counts, nodePortRequests, pod.Name)
	}
	svcAssertAllFrom(t, counts, node1.IP.String())
	e.assertTrace(t, node1, externalPacket(client, target), counts, 8080, pod)

	// The endpoint's own node serves the port too (eTP=Cluster also masquerades there).
	target2 := svcAddr(node2.IP.String(), np)
	svcWaitHTTP(t, client.NS, target2, pod)
	counts2 := client.NS.CountAnswers(target2, nodePortRequests)
	if counts2.Failures != 0 || counts2.ByPod[pod.Name] != nodePortRequests {
		t.Errorf("client → node2:%d: %v, want all %d answered by %s", np, counts2, nodePortRequests, pod.Name)
	}
	if counts2.Sources[client.IP.String()] != 0 {
		t.Errorf("client → node2:%d with eTP=Cluster: pod saw the client's own address (sources %v), want a node address",
			np, counts2.Sources)
	}
	e.assertTrace(t, node2, externalPacket(client, target2), counts2, 8080, pod)
}

func testNodePortLocal(t *testing.T, e *Env) {
	c := e.C
	node1, node2 := c.Node("node1"), c.Node("node2")
	pod := c.AddPod(t, node2, "nplocal-a")
	client := c.Clients[0]
	np, hc := e.NodePort(), e.NodePort()
	// The apiserver accepts a healthCheckNodePort only on a LoadBalancer Service with
	// eTP=Local; its node ports behave as a NodePort Service's do.
	svcApply(t, e,
		bed.Service(c.Key("nplocal"), bed.ClusterIP(e.ClusterIP()),
			bed.Port("p", 80, "TCP", 8080), bed.LoadBalancer(), bed.NodePort(np), bed.ExternalLocal(hc)),
		bed.EndpointSlice(c.Key("nplocal-1"), "nplocal", bed.SlicePort("p", 8080, "TCP"), svcEndpoint(pod)))

	target2 := svcAddr(node2.IP.String(), np)
	svcWaitHTTP(t, client.NS, target2, pod)
	counts := client.NS.CountAnswers(target2, nodePortRequests)
	t.Logf("via node2: %v sources %v", counts, counts.Sources)
	if counts.Failures != 0 || counts.ByPod[pod.Name] != nodePortRequests {
		t.Errorf("client → node2:%d: %v, want all %d answered by %s", np, counts, nodePortRequests, pod.Name)
	}
	// eTP=Local keeps the client's address.
	svcAssertAllFrom(t, counts, client.IP.String())
	e.assertTrace(t, node2, externalPacket(client, target2), counts, 8080, pod)

	// node1 has no local endpoint: it must neither serve nor forward to node2.
	target1 := svcAddr(node1.IP.String(), np)
	svcAssertNoAnswer(t, "client → node1:nodePort with no local endpoint", func(wait time.Duration) (bed.Answer, error) {
		return client.NS.HTTPGet(target1, wait)
	})
	e.assertTraceRefused(t, node1, externalPacket(client, target1), client.NS, target1)

	nodePortHealthCheck(t, client.NS, node2.IP.String(), hc, http.StatusOK, 1)
	nodePortHealthCheck(t, client.NS, node1.IP.String(), hc, http.StatusServiceUnavailable, 0)
}

// nodePortHealthCheck polls http://ip:port/ from ns until it answers code with
// localEndpoints endpoints (bounded).
func nodePortHealthCheck(t *testing.T, ns *bed.Namespace, ip string, port int32, code, localEndpoints int) {
	t.Helper()
	url := "http://" + svcAddr(ip, port) + "/"
	bed.Eventually(t, svcFirstAnswerTimeout, "health check "+url, func() (bool, string) {
		got, body, err := ns.HTTPGetURL(url, bed.RequestTimeout)
		if err != nil {
			return false, err.Error()
		}
		var hc struct {
			LocalEndpoints *int `json:"localEndpoints"`
		}
		if err := json.Unmarshal([]byte(body), &hc); err != nil || hc.LocalEndpoints == nil {
			return false, fmt.Sprintf("status %d, body %q: no localEndpoints (%v)", got, body, err)
		}
		return got == code && *hc.LocalEndpoints == localEndpoints,
			fmt.Sprintf("status %d localEndpoints %d, want %d and %d (body %q)", got, *hc.LocalEndpoints, code, localEndpoints, body)
	})
}
