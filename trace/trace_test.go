package trace_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/render"
	"github.com/svcproxy/svcproxy/trace"
)

// The demo's node1 and node2 (manifests/examples), rendered.
var nodes = map[string]string{"node1": "192.0.2.11", "node2": "192.0.2.12"}

func renderConfig(node string) render.Config {
	return render.Config{
		Family: v1.IPv4Protocol, NodeName: node, NodeIP: netip.MustParseAddr(nodes[node]),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25")},
	}
}

func tracers(t *testing.T, node string) map[string]trace.Tracer {
	t.Helper()
	objs, problems, err := render.Load([]string{"../manifests/examples"}, nil)
	if err != nil || len(problems) > 0 {
		t.Fatalf("load examples: %v %v", err, problems)
	}
	cfg := renderConfig(node)
	snap, _ := render.Snapshot(objs, cfg)
	save, err := render.IPTables(snap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ipt, err := trace.NewIPTables(save, []netip.Addr{cfg.NodeIP})
	if err != nil {
		t.Fatal(err)
	}
	st, err := render.IPVS(snap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ipvs, err := trace.NewIPVS(st)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]trace.Tracer{"iptables": ipt, "ipvs": ipvs}
}

func pkt(origin, src, dst string) trace.Packet {
	ap := netip.MustParseAddrPort(dst)
	p := trace.Packet{Src: netip.MustParseAddr(src), SrcPort: 40000, Dst: ap.Addr(), DstPort: ap.Port(), Protocol: "tcp", Origin: origin}
	switch origin {
	case trace.OriginExternal:
		p.InInterface = "eth0"
	case trace.OriginPod:
		p.InInterface = "veth0"
	}
	return p
}

type traceCase struct {
	name    string
	node    string
	modes   []string
	pkt     trace.Packet
	verdict string
	handled bool
	// endpoints are "ip:port=probability" with "+masq" when masqueraded.
	endpoints []string
	masq      bool
	affinity  bool
	reason    string // substring of Reason
}

func endpoints(r *trace.Result) []string {
	var out []string
	for _, e := range r.Endpoints {
		s := fmt.Sprintf("%s=%g", e.Endpoint, e.Probability)
		if e.Masquerade {
			s += "+masq"
		}
		out = append(out, s)
	}
	return out
}

func TestTraceExamples(t *testing.T) {
	both := []string{"iptables", "ipvs"}
	cases := []traceCase{
		{name: "pod to ClusterIP", node: "node1", modes: both, pkt: pkt(trace.OriginPod, "203.0.113.5", "198.51.100.10:80"),
			verdict: "DNAT", handled: true, endpoints: []string{"203.0.113.2:8080=0.5", "203.0.113.66:8080=0.5"}},
		{name: "outside client to ClusterIP is masqueraded", node: "node1", modes: both, pkt: pkt(trace.OriginExternal, "192.0.2.101", "198.51.100.10:80"),
			verdict: "DNAT", handled: true, masq: true, endpoints: []string{"203.0.113.2:8080=0.5+masq", "203.0.113.66:8080=0.5+masq"}},
		{name: "node to ClusterIP is masqueraded", node: "node1", modes: both, pkt: pkt(trace.OriginNode, "192.0.2.11", "198.51.100.10:80"),
			verdict: "DNAT", handled: true, masq: true, endpoints: []string{"203.0.113.2:8080=0.5+masq", "203.0.113.66:8080=0.5+masq"}},
		{name: "sticky service has affinity", node: "node1", modes: both, pkt: pkt(trace.OriginPod, "203.0.113.5", "198.51.100.12:80"),
			verdict: "DNAT", handled: true, affinity: true, endpoints: []string{"203.0.113.2:8080=0.5", "203.0.113.66:8080=0.5"}},
		{name: "hairpin is masqueraded", node: "node1", modes: both, pkt: pkt(trace.OriginPod, "203.0.113.2", "198.51.100.11:80"),
			verdict: "DNAT", handled: true, masq: true, endpoints: []string{"203.0.113.2:8080=1+masq"}},
		{name: "NodePort with local endpoint keeps the client IP", node: "node1", modes: both, pkt: pkt(trace.OriginExternal, "192.0.2.101", "192.0.2.11:30080"),
			verdict: "DNAT", handled: true, endpoints: []string{"203.0.113.2:8080=1"}},
		{name: "NodePort without local endpoint drops", node: "node2", modes: both, pkt: pkt(trace.OriginExternal, "192.0.2.101", "192.0.2.12:30080"),
			verdict: "DROP", handled: true, endpoints: nil, reason: "dropped"},
		{name: "address no Service uses", node: "node1", modes: both, pkt: pkt(trace.OriginExternal, "192.0.2.101", "198.51.100.99:80"),
			verdict: "ACCEPT", reason: "not handled by svcproxy"},
		{name: "ipvs: other port of a VIP is rejected", node: "node1", modes: []string{"ipvs"}, pkt: pkt(trace.OriginExternal, "192.0.2.101", "198.51.100.10:81"),
			verdict: "REJECT", reason: "KUBE-IPVS-FILTER"},
	}
	trs := map[string]map[string]trace.Tracer{"node1": tracers(t, "node1"), "node2": tracers(t, "node2")}
	for _, tc := range cases {
		for _, mode := range tc.modes {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				r, err := trs[tc.node][mode].Trace(tc.pkt)
				if err != nil {
					t.Fatal(err)
				}
				if r.Mode != mode || r.Verdict != tc.verdict || r.Handled != tc.handled || r.Masquerade != tc.masq || r.Affinity != tc.affinity {
					t.Errorf("mode %s verdict %s handled %v masq %v affinity %v; want %s %s %v %v %v (reason %q)",
						r.Mode, r.Verdict, r.Handled, r.Masquerade, r.Affinity, mode, tc.verdict, tc.handled, tc.masq, tc.affinity, r.Reason)
				}
				if got := endpoints(r); !slices.Equal(got, tc.endpoints) {
					t.Errorf("endpoints %v, want %v", got, tc.endpoints)
				}
				if !strings.Contains(r.Reason, tc.reason) {
					t.Errorf("reason %q does not say %q", r.Reason, tc.reason)
				}
				if mode == "iptables" && tc.handled && !strings.HasPrefix(r.Service, "demo/") {
					t.Errorf("service %q: the rules' comments name a demo Service", r.Service)
				}
			})
		}
	}
}

func TestIPVSVirtualServerWithoutRealServers(t *testing.T) {
	cfg := renderConfig("node1")
	objs := &render.Objects{}
	objs.Decode([]byte("kind: Service\nmetadata: {name: empty, namespace: ns}\nspec: {clusterIP: 198.51.100.30, ports: [{port: 80}]}\n"), "x.yaml")
	snap, _ := render.Snapshot(objs, cfg)
	st, err := render.IPVS(snap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := trace.NewIPVS(st)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Trace(pkt(trace.OriginPod, "203.0.113.5", "198.51.100.30:80"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != "REJECT" || !r.Handled || len(r.Endpoints) != 0 || !strings.Contains(r.Reason, "no real server") {
		t.Errorf("verdict %s handled %v endpoints %v reason %q; want a handled REJECT for want of real servers", r.Verdict, r.Handled, r.Endpoints, r.Reason)
	}
}

// TestJSONSchema pins the documented top-level and nested keys.
func TestJSONSchema(t *testing.T) {
	r, err := tracers(t, "node1")["iptables"].Trace(pkt(trace.OriginPod, "203.0.113.5", "198.51.100.10:80"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := trace.WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	checks := []struct {
		what string
		got  []string
		want []string
	}{
		{"result", keys(doc), []string{"affinity", "branches", "endpoints", "handled", "masquerade", "mode", "notes", "packet", "path", "reason", "schemaVersion", "service", "verdict"}},
		{"packet", keys(doc["packet"].(map[string]any)), []string{"dst", "dstPort", "inInterface", "origin", "protocol", "src", "srcPort"}},
		{"endpoint", keys(doc["endpoints"].([]any)[0].(map[string]any)), []string{"endpoint", "masquerade", "probability"}},
		{"step", keys(doc["path"].([]any)[1].(map[string]any)), []string{"chain", "comment", "rule", "table", "text"}},
		{"branch", keys(doc["branches"].([]any)[0].(map[string]any)), []string{"endpoint", "masquerade", "probability", "verdict"}},
	}
	for _, c := range checks {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s keys %v, want %v", c.what, c.got, c.want)
		}
	}
	if doc["schemaVersion"] != float64(1) {
		t.Errorf("schemaVersion %v, want 1", doc["schemaVersion"])
	}
}

func TestWriteText(t *testing.T) {
	r, err := tracers(t, "node2")["iptables"].Trace(pkt(trace.OriginExternal, "192.0.2.101", "192.0.2.12:30080"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := trace.WriteText(&buf, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Verdict:    DROP", "Service:    demo/web-local:http", `"demo/web-local:http has no local endpoints"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, buf.String())
		}
	}
}
