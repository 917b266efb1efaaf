package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/proxier"
)

// Sources of the packets traced below.
var (
	podNode1  = netip.MustParseAddr("203.0.113.5") // a pod on node1 (inside the cluster CIDR)
	podHairpn = netip.MustParseAddr("203.0.113.10")
	outsider  = netip.MustParseAddr("192.0.2.120") // a client outside the LB source range
	loopback  = netip.MustParseAddr("127.0.0.1")
)

// traceSnapshot is one node's view of a cluster with a service per feature.
func traceSnapshot() *proxier.Snapshot {
	return testSnap(v1.IPv4Protocol,
		testSvc("ns/cip", clusterIP("198.51.100.1")), testEP("203.0.113.70:8080"), testEP("203.0.113.71:8080"),
		testSvc("ns/empty", clusterIP("198.51.100.2"), nodePort(30002), externalIPs("203.0.113.202")),
		testSvc("ns/np", clusterIP("198.51.100.3"), nodePort(30003)), testEP("203.0.113.10:8080", local), testEP("203.0.113.72:8080"),
		testSvc("ns/local", clusterIP("198.51.100.4"), nodePort(30004), lbIPs("203.0.113.204"), etpLocal(32004)), testEP("203.0.113.11:8080", local), testEP("203.0.113.73:8080"),
		testSvc("ns/nolocal", clusterIP("198.51.100.5"), nodePort(30005), etpLocal(32005)), testEP("203.0.113.74:8080"),
		testSvc("ns/itp", clusterIP("198.51.100.6"), itpLocal()), testEP("203.0.113.12:8080", local), testEP("203.0.113.75:8080"),
		testSvc("ns/itpnone", clusterIP("198.51.100.7"), itpLocal()), testEP("203.0.113.76:8080"),
		testSvc("ns/fw", clusterIP("198.51.100.8"), lbIPs("203.0.113.208"), sourceRanges("192.0.2.96/28")), testEP("203.0.113.77:8080"),
		testSvc("ns/ext", clusterIP("198.51.100.9"), externalIPs("203.0.113.209")), testEP("203.0.113.78:8080"),
		testSvc("ns/aff", clusterIP("198.51.100.10"), affinity(10800)), testEP("203.0.113.13:8080"), testEP("203.0.113.79:8080"),
		testSvc("ns/dns:dns", clusterIP("198.51.100.11"), port(53), protocol(v1.ProtocolUDP)), testEP("203.0.113.80:53"),
		testSvc("ns/term", clusterIP("198.51.100.12")), testEP("203.0.113.81:8080", terminating),
	)
}

// syncTracer syncs snap into a fake kernel and returns a tracer over it.
func syncTracer(t *testing.T, opts Options, snap *proxier.Snapshot) *tracer.Tracer {
	t.Helper()
	f := NewFake(snap.Family)
	if _, err := NewProxier(f, opts).Sync(snap); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	tr, err := tracer.New(f.SaveAll(), snap.Node.IPs)
	if err != nil {
		t.Fatalf("tracer: %v", err)
	}
	return tr
}

type traceCase struct {
	name string
	pkt  tracer.Packet
	// verdict is the tracer's; endpoints are "ip:port" (equal shares), or
	// "ip:port+masq" for a masqueraded branch.
	verdict   string
	endpoints []string
	masq      bool
	affinity  bool
	// via is a substring of some rule on the path (e.g. a comment).
	via string
}

func tcp(src netip.Addr, dst string) tracer.Packet {
	ap := netip.MustParseAddrPort(dst)
	return tracer.Packet{Src: src, SrcPort: 40000, Dst: ap.Addr(), DstPort: ap.Port(), Protocol: "tcp", InInterface: "eth0"}
}

func fromPod(p tracer.Packet) tracer.Packet  { p.InInterface = "veth1"; return p }
func fromNode(p tracer.Packet) tracer.Packet { p.LocalOrigin = true; p.InInterface = ""; return p }

func runTraceCases(t *testing.T, tr *tracer.Tracer, cases []traceCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tr.Trace(tc.pkt)
			if err != nil {
				t.Fatalf("trace: %v", err)
			}
			if r.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s; path:\n%s", r.Verdict, tc.verdict, pathString(r.Path))
			}
			var got []string
			for _, d := range r.Endpoints {
				s := d.Addr.String()
				if d.Masquerade && !tc.masq {
					s += "+masq"
				}
				got = append(got, s)
				if want := 1 / float64(len(r.Endpoints)); math.Abs(d.Probability-want) > 1e-6 {
					t.Errorf("endpoint %s probability %f, want %f", s, d.Probability, want)
				}
			}
			if !slices.Equal(got, tc.endpoints) {
				t.Errorf("endpoints %v, want %v", got, tc.endpoints)
			}
			if tc.verdict == tracer.DNAT && r.Masquerade != tc.masq && !slices.ContainsFunc(tc.endpoints, func(s string) bool { return strings.HasSuffix(s, "+masq") }) {
				t.Errorf("masquerade %v, want %v", r.Masquerade, tc.masq)
			}
			if r.Affinity != tc.affinity {
				t.Errorf("affinity %v, want %v", r.Affinity, tc.affinity)
			}
			if tc.via != "" && !strings.Contains(pathString(r.Path), tc.via) {
				t.Errorf("path does not go via %q:\n%s", tc.via, pathString(r.Path))
			}
		})
	}
}

func pathString(steps []tracer.Step) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintln(&b, s.String())
	}
	return b.String()
}

func TestTraceServices(t *testing.T) {
	tr := syncTracer(t, testOptions(), traceSnapshot())
	np := func(port int) string { return fmt.Sprintf("192.0.2.11:%d", port) }
	runTraceCases(t, tr, []traceCase{
		{name: "pod to ClusterIP is load balanced, not masqueraded", pkt: fromPod(tcp(podNode1, "198.51.100.1:80")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}},
		{name: "off-cluster client to ClusterIP is masqueraded", pkt: tcp(clientIP, "198.51.100.1:80"),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}, masq: true},
		{name: "wrong port of a ClusterIP is untouched", pkt: fromPod(tcp(podNode1, "198.51.100.1:81")), verdict: tracer.Accept},
		{name: "ClusterIP without endpoints is rejected", pkt: fromPod(tcp(podNode1, "198.51.100.2:80")), verdict: tracer.Reject, via: "ns/empty has no endpoints"},
		{name: "NodePort without endpoints is rejected", pkt: tcp(clientIP, np(30002)), verdict: tracer.Reject, via: "ns/empty has no endpoints"},
		{name: "external IP without endpoints is rejected", pkt: tcp(clientIP, "203.0.113.202:80"), verdict: tracer.Reject},
		{name: "NodePort with eTP=Cluster reaches every endpoint, masqueraded", pkt: tcp(clientIP, np(30003)),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.10:8080", "203.0.113.72:8080"}, masq: true},
		{name: "NodePort with eTP=Local reaches local endpoints, source kept", pkt: tcp(clientIP, np(30004)),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.11:8080"}},
		{name: "LB IP with eTP=Local reaches local endpoints", pkt: tcp(clientIP, "203.0.113.204:80"),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.11:8080"}},
		{name: "pod to eTP=Local NodePort is short-circuited to all endpoints", pkt: fromPod(tcp(podNode1, np(30004))),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.11:8080", "203.0.113.73:8080"}, via: "pod traffic for ns/local external destinations"},
		{name: "node to eTP=Local NodePort is masqueraded to all endpoints", pkt: fromNode(tcp(node1IP, np(30004))),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.11:8080", "203.0.113.73:8080"}, masq: true},
		{name: "eTP=Local without local endpoints drops outside traffic", pkt: tcp(clientIP, np(30005)),
			verdict: tracer.Drop, via: "ns/nolocal has no local endpoints"},
		{name: "eTP=Local without local endpoints still serves pods", pkt: fromPod(tcp(podNode1, np(30005))),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.74:8080"}},
		{name: "health check node port is accepted", pkt: tcp(clientIP, np(32004)), verdict: tracer.Accept, via: "ns/local health check node port"},
		{name: "iTP=Local reaches local endpoints only", pkt: fromPod(tcp(podNode1, "198.51.100.6:80")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.12:8080"}},
		{name: "iTP=Local without local endpoints drops", pkt: fromPod(tcp(podNode1, "198.51.100.7:80")),
			verdict: tracer.Drop, via: "ns/itpnone has no local endpoints"},
		{name: "LB source range admits a listed client", pkt: tcp(clientIP, "203.0.113.208:80"),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.77:8080"}, masq: true},
		{name: "LB source range drops other clients", pkt: tcp(outsider, "203.0.113.208:80"),
			verdict: tracer.Drop, via: "traffic not accepted by KUBE-FW-"},
		{name: "external IP is served and masqueraded", pkt: tcp(clientIP, "203.0.113.209:80"),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.78:8080"}, masq: true},
		{name: "ClientIP affinity", pkt: fromPod(tcp(podNode1, "198.51.100.10:80")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.13:8080", "203.0.113.79:8080"}, affinity: true},
		{name: "UDP service", pkt: tracer.Packet{Src: podNode1, SrcPort: 5353, Dst: netip.MustParseAddr("198.51.100.11"), DstPort: 53, Protocol: "udp", InInterface: "veth1"},
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.80:53"}},
		{name: "TCP to a UDP service is untouched", pkt: fromPod(tcp(podNode1, "198.51.100.11:53")), verdict: tracer.Accept},
		{name: "serving terminating endpoint is used when no endpoint is ready", pkt: fromPod(tcp(podNode1, "198.51.100.12:80")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.81:8080"}},
		{name: "hairpin: a pod reaching itself is masqueraded", pkt: fromPod(tcp(podHairpn, "198.51.100.3:80")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.10:8080+masq", "203.0.113.72:8080"}},
		{name: "localhost NodePort", pkt: fromNode(tcp(loopback, "127.0.0.1:30003")),
			verdict: tracer.DNAT, endpoints: []string{"203.0.113.10:8080", "203.0.113.72:8080"}, masq: true},
		{name: "remote traffic to 127.0.0.1 is dropped by the localnet guard", pkt: tcp(clientIP, "127.0.0.1:9999"),
			verdict: tracer.Drop, via: "block incoming localnet connections"},
		{name: "forwarded INVALID packets are dropped", pkt: func() tracer.Packet { p := tcp(clientIP, "203.0.113.70:8080"); p.CTState = "INVALID"; return p }(),
			verdict: tracer.Drop, via: "--ctstate INVALID"},
	})
}

func TestTraceOptions(t *testing.T) {
	snap := traceSnapshot()
	t.Run("masquerade-all", func(t *testing.T) {
		opts := testOptions()
		opts.MasqueradeAll = true
		runTraceCases(t, syncTracer(t, opts, snap), []traceCase{
			{name: "pod to ClusterIP is masqueraded", pkt: fromPod(tcp(podNode1, "198.51.100.1:80")),
				verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}, masq: true},
		})
	})
	t.Run("no local detector", func(t *testing.T) {
		opts := testOptions()
		opts.LocalDetector = NoOpLocalDetector()
		runTraceCases(t, syncTracer(t, opts, snap), []traceCase{
			{name: "off-cluster client to ClusterIP keeps its source", pkt: tcp(clientIP, "198.51.100.1:80"),
				verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}},
			{name: "pod to eTP=Local NodePort without local endpoints is dropped", pkt: fromPod(tcp(podNode1, "192.0.2.11:30005")), verdict: tracer.Drop},
		})
	})
	t.Run("interface prefix detector", func(t *testing.T) {
		opts := testOptions()
		opts.LocalDetector = LocalDetectorByInterfaceNamePrefix("veth")
		runTraceCases(t, syncTracer(t, opts, snap), []traceCase{
			{name: "traffic from a veth is local", pkt: fromPod(tcp(clientIP, "198.51.100.1:80")),
				verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}},
			{name: "traffic from eth0 is not", pkt: tcp(podNode1, "198.51.100.1:80"),
				verdict: tracer.DNAT, endpoints: []string{"203.0.113.70:8080", "203.0.113.71:8080"}, masq: true},
		})
	})
	t.Run("no localhost nodeports", func(t *testing.T) {
		opts := testOptions()
		opts.LocalhostNodePorts = false
		runTraceCases(t, syncTracer(t, opts, snap), []traceCase{
			{name: "localhost NodePort is not served", pkt: fromNode(tcp(loopback, "127.0.0.1:30003")), verdict: tracer.Accept},
			{name: "node IP NodePort still is", pkt: tcp(clientIP, "192.0.2.11:30003"),
				verdict: tracer.DNAT, endpoints: []string{"203.0.113.10:8080", "203.0.113.72:8080"}, masq: true},
		})
	})
	t.Run("conntrack be-liberal", func(t *testing.T) {
		opts := testOptions()
		opts.ConntrackTCPBeLiberal = true
		p := tcp(clientIP, "203.0.113.70:8080")
		p.CTState = "INVALID"
		runTraceCases(t, syncTracer(t, opts, snap), []traceCase{
			{name: "INVALID packets pass", pkt: p, verdict: tracer.Accept},
		})
	})
}

func TestTraceIPv6(t *testing.T) {
	snap := testSnap(v1.IPv6Protocol,
		testSvc("ns/web", clusterIP("2001:db8:5::1"), nodePort(30001)), testEP("[2001:db8:1::2]:8080", local), testEP("[2001:db8:1:0:2::5]:8080"),
		testSvc("ns/empty", clusterIP("2001:db8:5::2")),
	)
	opts := testOptions()
	opts.LocalDetector = LocalDetectorByCIDR(netip.MustParsePrefix("2001:db8:1::/64"))
	tr := syncTracer(t, opts, snap)
	src := netip.MustParseAddr("2001:db8:1::9")
	client := netip.MustParseAddr("2001:db8:2::101")
	runTraceCases(t, tr, []traceCase{
		{name: "pod to ClusterIP", pkt: fromPod(tcp(src, "[2001:db8:5::1]:80")),
			verdict: tracer.DNAT, endpoints: []string{"[2001:db8:1::2]:8080", "[2001:db8:1:0:2::5]:8080"}},
		{name: "client to NodePort", pkt: tcp(client, "[2001:db8:2::11]:30001"),
			verdict: tracer.DNAT, endpoints: []string{"[2001:db8:1::2]:8080", "[2001:db8:1:0:2::5]:8080"}, masq: true},
		{name: "no localhost NodePorts on IPv6", pkt: fromNode(tcp(netip.MustParseAddr("::1"), "[::1]:30001")), verdict: tracer.Accept},
		{name: "no endpoints", pkt: fromPod(tcp(src, "[2001:db8:5::2]:80")), verdict: tracer.Reject},
	})
}
