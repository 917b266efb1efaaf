package tracer

import (
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// want is the expected outcome of a flow: endpoints as "addr:port" →
// probability (nil when there is no DNAT).
type want struct {
	verdict   string
	endpoints map[string]float64
	masq      bool
	affinity  bool
}

type flow struct {
	name string
	pkt  Packet
	want want
}

func loadRuleset(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkResult compares a result with want, probabilities to 1e-6 (the
// kernel's probabilities are rounded to 32 bits).
func checkResult(t *testing.T, r *Result, w want) {
	t.Helper()
	if r.Verdict != w.verdict {
		t.Errorf("verdict = %s, want %s\n%s", r.Verdict, w.verdict, describe(r))
	}
	got := map[string]float64{}
	sum := 0.0
	for _, e := range r.Endpoints {
		got[e.Addr.String()] = e.Probability
		sum += e.Probability
	}
	if len(got) != len(w.endpoints) {
		t.Errorf("endpoints = %v, want %v", got, w.endpoints)
	}
	for ep, p := range w.endpoints {
		if g, ok := got[ep]; !ok || math.Abs(g-p) > 1e-6 {
			t.Errorf("endpoint %s probability = %v (present %v), want %v", ep, g, ok, p)
		}
	}
	if len(w.endpoints) > 0 && w.verdict == DNAT && math.Abs(sum-1) > 1e-9 {
		t.Errorf("endpoint probabilities sum to %v, want 1", sum)
	}
	if r.Masquerade != w.masq {
		t.Errorf("masquerade = %v, want %v\n%s", r.Masquerade, w.masq, describe(r))
	}
	if r.Affinity != w.affinity {
		t.Errorf("affinity = %v, want %v", r.Affinity, w.affinity)
	}
}

func describe(r *Result) string {
	var b strings.Builder
	for _, br := range r.Branches {
		b.WriteString(br.Verdict + " " + br.Destination.String() + "\n")
		for _, s := range br.Path {
			b.WriteString("  " + s.String() + "\n")
		}
	}
	return b.String()
}

func runFlows(t *testing.T, save []byte, local []netip.Addr, flows []flow) {
	t.Helper()
	tr, err := New(save, local)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			r, err := tr.Trace(f.pkt)
			if err != nil {
				t.Fatalf("Trace: %v", err)
			}
			checkResult(t, r, f.want)
		})
	}
}

var (
	ip   = netip.MustParseAddr
	node = ip("192.0.2.11")
)

// tcp returns an incoming TCP packet; options adjust it.
func tcp(src, dst string, dport uint16, opts ...func(*Packet)) Packet {
	p := Packet{Src: ip(src), SrcPort: 40000, Dst: ip(dst), DstPort: dport, Protocol: "tcp", InInterface: "eth0"}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func fromPod(p *Packet)  { p.InInterface = "cbr0" }
func fromNode(p *Packet) { p.LocalOrigin, p.InInterface = true, "" }

const third = 1.0 / 3

var svc1Endpoints = map[string]float64{"203.0.113.11:8080": third, "203.0.113.12:8080": third, "203.0.113.70:8080": third}

func TestKubeProxyIPv4Flows(t *testing.T) {
	runFlows(t, loadRuleset(t, "node1-ipv4.save"), []netip.Addr{node}, []flow{
		{"clusterIP from a pod reaches 3 endpoints evenly", tcp("203.0.113.5", "198.51.100.10", 80, fromPod),
			want{verdict: DNAT, endpoints: svc1Endpoints}},
		{"clusterIP from outside the cluster CIDR is masqueraded", tcp("192.0.2.101", "198.51.100.10", 80),
			want{verdict: DNAT, endpoints: svc1Endpoints, masq: true}},
		{"clusterIP from the node itself is masqueraded", tcp("192.0.2.11", "198.51.100.10", 80, fromNode),
			want{verdict: DNAT, endpoints: svc1Endpoints, masq: true}},
		{"clusterIP on another port is untouched", tcp("203.0.113.5", "198.51.100.10", 81, fromPod),
			want{verdict: Accept}},
		{"clusterIP without endpoints is rejected in filter", tcp("203.0.113.5", "198.51.100.20", 80, fromPod),
			want{verdict: Reject}},
		{"clusterIP without endpoints from the node is rejected", tcp("192.0.2.11", "198.51.100.20", 80, fromNode),
			want{verdict: Reject}},
		{"nodePort via dst-type LOCAL", tcp("192.0.2.101", "192.0.2.11", 30080),
			want{verdict: DNAT, endpoints: svc1Endpoints, masq: true}},
		{"nodePort on localhost from the node", tcp("127.0.0.1", "127.0.0.1", 30080, fromNode),
			want{verdict: DNAT, endpoints: svc1Endpoints, masq: true}},
		{"nodePort on a non-local address is not a nodePort", tcp("192.0.2.101", "192.0.2.12", 30080),
			want{verdict: Accept}},
		{"nodePort without endpoints is rejected", tcp("192.0.2.101", "192.0.2.11", 30081),
			want{verdict: Reject}},
		{"eTP=Local nodePort keeps the source and goes to the local endpoint", tcp("192.0.2.101", "192.0.2.11", 30082),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.13:8080": 1}}},
		{"eTP=Local load balancer IP goes to the local endpoint", tcp("192.0.2.101", "203.0.113.201", 80),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.13:8080": 1}}},
		{"eTP=Local nodePort from a pod short-circuits to all endpoints", tcp("203.0.113.5", "192.0.2.11", 30082, fromPod),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.13:8080": 0.5, "203.0.113.71:8080": 0.5}}},
		{"eTP=Local nodePort from the node is masqueraded to all endpoints", tcp("192.0.2.11", "192.0.2.11", 30082, fromNode),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.13:8080": 0.5, "203.0.113.71:8080": 0.5}, masq: true}},
		{"eTP=Local without local endpoints drops external traffic", tcp("192.0.2.101", "192.0.2.11", 30083),
			want{verdict: Drop}},
		{"eTP=Local without local endpoints still serves pods", tcp("203.0.113.5", "192.0.2.11", 30083, fromPod),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.72:8080": 1}}},
		{"health check node port is accepted", tcp("192.0.2.101", "192.0.2.11", 32000),
			want{verdict: Accept}},
		{"source range allows a listed client", tcp("192.0.2.101", "203.0.113.200", 80),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.14:8080": 1}, masq: true}},
		{"source range drops other clients", tcp("192.0.2.120", "203.0.113.200", 80),
			want{verdict: Drop}},
		{"hairpin to itself is masqueraded", tcp("203.0.113.14", "198.51.100.50", 80, fromPod),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.14:8080": 1}, masq: true}},
		{"another pod of the same service is not masqueraded", tcp("203.0.113.15", "198.51.100.50", 80, fromPod),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.14:8080": 1}}},
		{"session affinity is reported, new clients balance", tcp("203.0.113.5", "198.51.100.60", 80, fromPod),
			want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.15:8080": 0.5, "203.0.113.73:8080": 0.5}, affinity: true}},
		{"udp to a tcp service is untouched", func() Packet {
			p := tcp("203.0.113.5", "198.51.100.10", 80, fromPod)
			p.Protocol = "udp"
			return p
		}(), want{verdict: Accept}},
	})
}

func TestKubeProxyIPv4Paths(t *testing.T) {
	tr, err := New(loadRuleset(t, "node1-ipv4.save"), []netip.Addr{node})
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Trace(tcp("192.0.2.120", "203.0.113.200", 80))
	if err != nil {
		t.Fatal(err)
	}
	var comments []string
	for _, s := range r.Path {
		if s.Comment != "" {
			comments = append(comments, s.Table+"/"+s.Chain+": "+s.Comment)
		}
	}
	wantComments := []string{
		"nat/PREROUTING: kubernetes service portals",
		"nat/KUBE-SERVICES: ns5/svc5:http loadbalancer IP",
		"nat/KUBE-FW-SVC5: other traffic to ns5/svc5:http will be dropped by KUBE-PROXY-FIREWALL",
		"filter/FORWARD: kubernetes load balancer firewall",
		"filter/KUBE-PROXY-FIREWALL: ns5/svc5:http traffic not accepted by KUBE-FW-SVC5",
	}
	if strings.Join(comments, "\n") != strings.Join(wantComments, "\n") {
		t.Errorf("path comments:\n%s\nwant:\n%s", strings.Join(comments, "\n"), strings.Join(wantComments, "\n"))
	}
	last := r.Path[len(r.Path)-1]
	if last.Table != "filter" || last.Chain != "KUBE-PROXY-FIREWALL" || last.RuleIndex != 1 || !strings.HasSuffix(last.Rule, "-j DROP") {
		t.Errorf("last step = %+v", last)
	}

	r, err = tr.Trace(tcp("203.0.113.5", "198.51.100.60", 80, fromPod))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(r.Notes)
	if len(r.Notes) != 2 || !strings.Contains(r.Notes[0], "KUBE-SEP-SVC6A") || !strings.Contains(r.Notes[1], "KUBE-SEP-SVC6B") {
		t.Errorf("affinity notes = %q", r.Notes)
	}
}

func TestKubeProxyMasqueradeAll(t *testing.T) {
	save := []byte(`*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE
-A KUBE-SEP-A -s 203.0.113.11/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 203.0.113.11:8080
-A KUBE-SERVICES -m comment --comment "ns1/svc1:http cluster IP" -p tcp -d 198.51.100.10/32 --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m comment --comment "ns1/svc1:http cluster IP" -p tcp -d 198.51.100.10/32 --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -j KUBE-SEP-A
COMMIT
`)
	one := map[string]float64{"203.0.113.11:8080": 1}
	runFlows(t, save, []netip.Addr{node}, []flow{
		{"pod traffic is masqueraded too", tcp("203.0.113.5", "198.51.100.10", 80, fromPod), want{verdict: DNAT, endpoints: one, masq: true}},
		{"external traffic is masqueraded", tcp("192.0.2.101", "198.51.100.10", 80), want{verdict: DNAT, endpoints: one, masq: true}},
		{"a pre-set mark bit is cleared once", tcp("203.0.113.5", "198.51.100.11", 80, func(p *Packet) { p.Mark = 0x4000 }), want{verdict: Accept, masq: true}},
	})
}

func TestKubeProxyIPv6Flows(t *testing.T) {
	two := map[string]float64{"[2001:db8:1:0:1::11]:8080": 0.5, "[2001:db8:1:0:2::12]:8080": 0.5}
	runFlows(t, loadRuleset(t, "node1-ipv6.save"), []netip.Addr{ip("2001:db8:2::11")}, []flow{
		{"clusterIP from a pod", tcp("2001:db8:1:0:1::5", "2001:db8:5::10", 80, fromPod), want{verdict: DNAT, endpoints: two}},
		{"clusterIP from outside", tcp("2001:db8:2::101", "2001:db8:5::10", 80), want{verdict: DNAT, endpoints: two, masq: true}},
		{"nodePort", tcp("2001:db8:2::101", "2001:db8:2::11", 30080), want{verdict: DNAT, endpoints: two, masq: true}},
		{"nodePort on ::1 from the node", tcp("::1", "::1", 30080, fromNode), want{verdict: DNAT, endpoints: two, masq: true}},
		{"no endpoints", tcp("2001:db8:1:0:1::5", "2001:db8:5::20", 80, fromPod), want{verdict: Reject}},
		{"hairpin", tcp("2001:db8:1:0:1::11", "2001:db8:5::10", 80, fromPod), want{verdict: DNAT, endpoints: two, masq: true}},
	})
}
