package faults

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	v1 "k8s.io/api/core/v1"
)

// Largest EndpointSlice the apiserver accepts (validation's maxima, checked against
// this bed's kube-apiserver): 20000 ports, 1000 endpoints.
const (
	maxSlicePorts     = 20000
	maxSliceEndpoints = 1000
	// bigSliceEndpoints goes with maxSlicePorts: the proxy expands every port of a slice
	// for every endpoint, and both maxima at once would need gigabytes on a test machine.
	bigSliceEndpoints = 50
)

// TestBadInput feeds the proxy objects the apiserver accepts but that are wrong for a
// proxy. Each bad value is skipped with a Warning event naming the object and the field;
// the rest of the object still works, a healthy service answers throughout, and the
// proxy never restarts. Values the apiserver refuses (endpoints on 127.0.0.1, 169.254.x,
// 224.0.0.x or 0.0.0.0, an IPv6 endpoint in an IPv4 slice, leading zeros, more than 1000
// endpoints or 20000 ports in a slice, shared nodePorts) cannot reach a proxy and are
// not tested here.
func TestBadInput(t *testing.T) {
	bed.RequireRoot(t)
	api := bed.API(t)
	e := newEnv(t, api)
	pod1, pod2 := e.pods[0], e.pods[1]
	healthy, healthySlice := e.web("healthy", "198.51.100.60", 0, e.pods...)
	api.Apply(t, healthy, healthySlice)
	p := e.c.StartProxyWith(t, e.node, bed.ProxySpec{Args: proxyArgs(), Env: []string{"SVCPROXY_IPTABLES_BACKEND=nft"}})
	p.WaitHealthy(t)
	pid := p.PID()
	e.waitAnswer(t, addr("198.51.100.60", 80), answerTimeout)
	l := startLoad(t, e.client.NS, addr("198.51.100.60", 80))
	ns := e.c.Namespace

	t.Run("SliceMulticastEndpoint", func(t *testing.T) {
		svc, slice := e.web("mcast", "198.51.100.61", 0, pod1)
		bed.Endpoint("239.1.1.1")(slice)
		api.Apply(t, svc, slice)
		expectOnly(t, e, addr("198.51.100.61", 80), pod1)
		expectNoRule(t, e, "239.1.1.1")
		expectWarning(t, api, ns, "EndpointSlice", "mcast-1", "endpoints[1].addresses[0]")
	})

	t.Run("SliceBroadcastEndpoint", func(t *testing.T) {
		svc, slice := e.web("bcast", "198.51.100.62", 0, pod2)
		bed.Endpoint("255.255.255.255")(slice)
		api.Apply(t, svc, slice)
		expectOnly(t, e, addr("198.51.100.62", 80), pod2)
		expectNoRule(t, e, "255.255.255.255")
		expectWarning(t, api, ns, "EndpointSlice", "bcast-1", "endpoints[1].addresses[0]")
	})

	t.Run("LoadBalancerBadIngressIPs", func(t *testing.T) {
		// Written through the status subresource; an ingress IP of 127.0.0.1 would take
		// over the node's own loopback traffic to the port.
		svc, slice := e.web("lb", "198.51.100.63", 0, pod1)
		bed.LoadBalancer("127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.5", "203.0.113.210")(svc)
		api.Apply(t, svc, slice)
		expectOnly(t, e, addr("203.0.113.210", 80), pod1)
		for i, ip := range []string{"127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.5"} {
			expectNoRule(t, e, ip+"/32")
			expectWarning(t, api, ns, "Service", "lb", fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i))
		}
	})

	t.Run("ExternalIPOtherFamily", func(t *testing.T) {
		// A single-stack IPv4 service has no IPv6 rules; its IPv6 external IP goes nowhere.
		svc, slice := e.web("eip6", "198.51.100.64", 0, pod1)
		bed.ExternalIPs("2001:db8:6::5")(svc)
		api.Apply(t, svc, slice)
		expectOnly(t, e, addr("198.51.100.64", 80), pod1)
		expectWarning(t, api, ns, "Service", "eip6", "spec.externalIPs[0]")
	})

	t.Run("GarbageTriggerTime", func(t *testing.T) {
		svc, slice := e.web("garbage", "198.51.100.67", 0, pod2)
		slice.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "garbage"}
		api.Apply(t, svc, slice)
		expectOnly(t, e, addr("198.51.100.67", 80), pod2)
		expectWarning(t, api, ns, "EndpointSlice", "garbage-1", v1.EndpointsLastChangeTriggerTime)
	})

	t.Run("MaximalSlices", func(t *testing.T) {
		rssBefore := rssKiB(p.PID())
		svc, manyEndpoints := e.web("big", "198.51.100.68", 0)
		for i := range maxSliceEndpoints {
			bed.Endpoint(fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250))(manyEndpoints)
		}
		manyPorts := bed.EndpointSlice(e.c.Key("big-2"), "big")
		for i := range maxSlicePorts {
			name := fmt.Sprintf("p%d", i)
			if i == 0 {
				name = "http" // the service's port
			}
			bed.SlicePort(name, int32(1024+i%60000), "TCP")(manyPorts)
		}
		for i := range bigSliceEndpoints {
			bed.Endpoint(fmt.Sprintf("198.19.0.%d", 1+i))(manyPorts)
		}
		api.Apply(t, svc, manyEndpoints, manyPorts)
		want := maxSliceEndpoints + bigSliceEndpoints
		bed.Eventually(t, 2*time.Minute, "big's endpoints programmed", func() (bool, string) {
			n := endpointEntries(t, e.node, "198.1")
			return n == want, fmt.Sprintf("%d of %d endpoints", n, want)
		})
		requireSameProcess(t, p, pid)
		t.Logf("proxy RSS %d KiB before the maximal slices, %d KiB after (%d ports × %d endpoints in one slice)",
			rssBefore, rssKiB(p.PID()), maxSlicePorts, bigSliceEndpoints)
		api.Delete(t, manyPorts, manyEndpoints, svc)
	})

	l.Stop(t)
	requireSameProcess(t, p, pid)
	if code, body := healthzCode(p); code != 200 {
		t.Errorf("healthz %d at the end: %s", code, body)
	}
}

// expectWarning waits (bounded) for a Warning event of svcproxy on the object that
// names field; a missing event fails the test but lets it go on.
func expectWarning(t *testing.T, api *bed.APIServer, ns, kind, name, field string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var msgs []string
		for _, ev := range invalidValueEvents(t, api, ns, kind, name) {
			if ev.Type == v1.EventTypeWarning && strings.Contains(ev.Message, field) {
				return
			}
			msgs = append(msgs, ev.Message)
		}
		if time.Now().After(deadline) {
			t.Errorf("no Warning event on %s %s naming %s after 20s; its events: %q", kind, name, field, msgs)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// expectOnly waits until target answers, then checks that 20 requests are all answered
// by pod.
func expectOnly(t *testing.T, e *env, target string, pod *bed.Pod) {
	t.Helper()
	e.waitAnswer(t, target, answerTimeout)
	c := e.client.NS.CountAnswers(target, 20)
	if c.Failures > 0 || c.ByPod[pod.Name] != 20 {
		t.Errorf("%s: want 20 answers from %s, got %v", target, pod.Name, c)
	}
}

// expectNoRule fails when s appears in what the proxy programmed for IPv4 (kernelRules):
// in a rule of the nat or filter table, or in IPVS mode anywhere in the virtual servers,
// kube-ipvs0's addresses or the ipsets (s without its "/32").
func expectNoRule(t *testing.T, e *env, s string) {
	t.Helper()
	prefix := "-A "
	if proxyMode() == "ipvs" {
		s, prefix = strings.TrimSuffix(s, "/32"), ""
	}
	for _, line := range strings.Split(kernelRules(t, e.node), "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, s) {
			t.Errorf("programmed for a skipped value %s: %s", s, line)
		}
	}
}

// rssKiB is the resident set size of a process (0 when unknown).
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kib)
			return kib
		}
	}
	return 0
}
