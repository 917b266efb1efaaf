package ipvssmoke

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svcproxy/svcproxy/e2e/vm"
)

// A node namespace holds the virtual server (VIP on a dummy link, as
// kube-proxy's kube-ipvs0); a pod namespace behind a veth serves. A
// connection from the node to VIP:80 must be NATed to the pod's :8080.
func TestIPVSNATTraffic(t *testing.T) {
	guest(t)
	node := newNS(t, "smoke-node")
	pod := newNS(t, "smoke-pod")
	ipn := func(ns string, args ...string) { sh(t, "ip", append([]string{"-n", ns}, args...)...) }
	ipn("smoke-node", "link", "set", "lo", "up")
	ipn("smoke-pod", "link", "set", "lo", "up")
	ipn("smoke-node", "link", "add", "veth-pod", "type", "veth", "peer", "name", "eth0", "netns", "smoke-pod")
	ipn("smoke-node", "addr", "add", "203.0.113.1/24", "dev", "veth-pod")
	ipn("smoke-node", "link", "set", "veth-pod", "up")
	ipn("smoke-node", "link", "add", "kube-ipvs0", "type", "dummy")
	ipn("smoke-node", "addr", "add", "198.51.100.10/32", "dev", "kube-ipvs0")
	ipn("smoke-pod", "addr", "add", "203.0.113.2/24", "dev", "eth0")
	ipn("smoke-pod", "link", "set", "eth0", "up")
	ipn("smoke-pod", "route", "add", "default", "via", "203.0.113.1")

	h, err := ipvs.New("/run/netns/smoke-node")
	if err != nil {
		t.Fatalf("ipvs handle: %v", err)
	}
	defer h.Close()
	svc := &ipvs.Service{Address: vip, Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("create virtual server: %v", err)
	}
	dst := &ipvs.Destination{Address: rip, Port: 8080, Weight: 1, ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET}
	if err := h.NewDestination(svc, dst); err != nil {
		t.Fatalf("add real server: %v", err)
	}

	var l net.Listener
	if err := inNS(pod, func() (err error) { l, err = net.Listen("tcp", "203.0.113.2:8080"); return err }); err != nil {
		t.Fatalf("listen in pod namespace: %v", err)
	}
	defer l.Close()
	go serve(l, "pod-a")

	const conns = 3
	for i := 0; i < conns; i++ {
		var c net.Conn
		err := inNS(node, func() (err error) {
			c, err = net.DialTimeout("tcp", "198.51.100.10:80", 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("connection %d to the virtual server: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		reply, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		// IPVS NAT rewrites only the destination: the pod sees the node's
		// source address for the VIP route, which is the VIP itself.
		if err != nil || !strings.HasPrefix(reply, "pod-a 198.51.100.10:") {
			t.Fatalf("connection %d: reply %q, err %v; want one from pod-a", i, reply, err)
		}
		t.Logf("connection %d answered: %s", i, strings.TrimSpace(reply))
	}
	// Service counters only move on the kernel's 2 s estimator tick; the
	// connection table is immediate.
	if out := sh(t, "ip", "netns", "exec", "smoke-node", "ipvsadm", "-Lnc"); strings.Count(out, "203.0.113.2:8080") < conns {
		t.Fatalf("IPVS connection table has fewer than %d connections to the real server:\n%s", conns, out)
	}
	sh(t, "ip", "netns", "exec", "smoke-node", "conntrack", "-L")
}

// The host test serves SVCPROXY_VM_PROBE_BODY at SVCPROXY_VM_PROBE_URL on
// its loopback; qemu's user network must carry the request.
func TestHostReachable(t *testing.T) {
	guest(t)
	url, want := os.Getenv("SVCPROXY_VM_PROBE_URL"), os.Getenv("SVCPROXY_VM_PROBE_BODY")
	if url == "" {
		t.Skip("SVCPROXY_VM_PROBE_URL is not set (set by e2e/vm TestSmoke)")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != want {
		t.Fatalf("GET %s = %d %q, want 200 %q", url, resp.StatusCode, body, want)
	}
}

// The kubeconfig written for Options.APIServer must reach the host's
// TLS server with the certificate issued for 127.0.0.1.
func TestKubeconfigReachesHost(t *testing.T) {
	guest(t)
	path, want := os.Getenv("KUBECONFIG"), os.Getenv("SVCPROXY_VM_PROBE_VERSION")
	if path == "" || want == "" {
		t.Skip("KUBECONFIG or SVCPROXY_VM_PROBE_VERSION not set (set by e2e/vm TestSmoke)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cfg.Timeout = 10 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("discovery client: %v", err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		t.Fatalf("server version via %s: %v", cfg.Host, err)
	}
	if v.GitVersion != want {
		t.Fatalf("server version = %q, want %q", v.GitVersion, want)
	}
}

// The VM carries the svcproxy binary when Options.Svcproxy is set; it must
// be static, as the VM has no Go toolchain and only the tools' libraries.
func TestSvcproxyPresent(t *testing.T) {
	guest(t)
	if _, err := os.Stat(vm.SvcproxyPath); err != nil {
		t.Skipf("no svcproxy in this VM (Options.Svcproxy not set): %v", err)
	}
	sh(t, vm.SvcproxyPath, "--help")
}
