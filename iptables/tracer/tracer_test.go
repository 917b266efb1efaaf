package tracer

import (
	"math"
	"net/netip"
	"strings"
	"testing"
)

// natRuleset wraps rules of user chains in a nat table whose PREROUTING
// and OUTPUT jump to TEST; chains lists the user chains to declare.
func natRuleset(chains []string, rules ...string) []byte {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	for _, c := range append([]string{"TEST"}, chains...) {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	b.WriteString("-A PREROUTING -j TEST\n-A OUTPUT -j TEST\n")
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

func TestTracePacket(t *testing.T) {
	pkt := tcp("192.0.2.101", "198.51.100.1", 80)
	tests := []struct {
		name   string
		save   []byte
		filter string // extra filter table, optional
		pkt    Packet
		want   want
	}{
		{
			name: "kube-proxy probabilities over 4 endpoints give 1/4 each",
			save: natRuleset([]string{"SEP1", "SEP2", "SEP3", "SEP4"},
				"-A TEST -m statistic --mode random --probability 0.25000000000 -j SEP1",
				"-A TEST -m statistic --mode random --probability 0.33333333349 -j SEP2",
				"-A TEST -m statistic --mode random --probability 0.50000000000 -j SEP3",
				"-A TEST -j SEP4",
				"-A SEP1 -p tcp -j DNAT --to-destination 203.0.113.1:8080",
				"-A SEP2 -p tcp -j DNAT --to-destination 203.0.113.2:8080",
				"-A SEP3 -p tcp -j DNAT --to-destination 203.0.113.3:8080",
				"-A SEP4 -p tcp -j DNAT --to-destination 203.0.113.4:8080"),
			pkt: pkt,
			want: want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.1:8080": 0.25, "203.0.113.2:8080": 0.25,
				"203.0.113.3:8080": 0.25, "203.0.113.4:8080": 0.25}},
		},
		{
			name: "a fork where one branch drops gives a mixed verdict",
			save: natRuleset(nil, "-A TEST -m statistic --mode random --probability 0.25 -j DROP",
				"-A TEST -j DNAT --to-destination 203.0.113.1"),
			pkt:  pkt,
			want: want{verdict: Mixed, endpoints: map[string]float64{"203.0.113.1:80": 0.75}},
		},
		{
			name: "RETURN resumes the caller, goto returns past it",
			save: natRuleset([]string{"A", "B", "C"},
				"-A TEST -j A", "-A TEST -g B", "-A TEST -j DNAT --to-destination 203.0.113.9:9",
				"-A A -j RETURN", "-A A -j DNAT --to-destination 203.0.113.1:1",
				"-A B -j C", "-A C -j RETURN"),
			pkt:  pkt,
			want: want{verdict: Accept},
		},
		{
			name: "marks: or, xor, set-xmark and negated mark match",
			save: natRuleset(nil,
				"-A TEST -j MARK --or-mark 0x4000",
				"-A TEST -j MARK --set-xmark 0x1/0xff",
				"-A TEST -m mark ! --mark 0x4001/0x40ff -j DROP",
				"-A TEST -j MARK --xor-mark 0x4000",
				"-A TEST -m mark --mark 0x101 -j DNAT --to-destination 203.0.113.1:1"),
			pkt:  tcp("192.0.2.101", "198.51.100.1", 80, func(p *Packet) { p.Mark = 0x100 }),
			want: want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.1:1": 1}},
		},
		{
			name: "conntrack state defaults to NEW",
			save: natRuleset(nil, "-A TEST -m conntrack --ctstate RELATED,ESTABLISHED -j DROP",
				"-A TEST -m conntrack ! --ctstate NEW -j DROP", "-A TEST -m conntrack --ctstate NEW -j DNAT --to-destination 203.0.113.1:1"),
			pkt:  pkt,
			want: want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.1:1": 1}},
		},
		{
			name: "an established packet skips NEW-only rules",
			save: natRuleset(nil, "-A TEST -m conntrack --ctstate NEW -j DNAT --to-destination 203.0.113.1:1"),
			pkt:  tcp("192.0.2.101", "198.51.100.1", 80, func(p *Packet) { p.CTState = "ESTABLISHED" }),
			want: want{verdict: Accept},
		},
		{
			name: "multiport, port ranges, source ports and nfacct",
			save: natRuleset(nil,
				"-A TEST -p tcp -m multiport --dports 22,443 -j DROP",
				"-A TEST -p tcp -m tcp --dport 81:90 -j DROP",
				"-A TEST -p tcp --sport 40000 -m multiport --dports 70:80,8080 -m nfacct --nfacct-name x -j DNAT --to-destination 203.0.113.1:1"),
			pkt:  pkt,
			want: want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.1:1": 1}},
		},
		{
			name: "interfaces with wildcard, and -i never matches local packets",
			save: natRuleset(nil, "-A TEST ! -i eth+ -j DROP", "-A TEST -i eth0 -j DNAT --to-destination 203.0.113.1:1"),
			pkt:  pkt,
			want: want{verdict: DNAT, endpoints: map[string]float64{"203.0.113.1:1": 1}},
		},
		{
			name: "policy DROP of a built-in filter chain",
			save: []byte("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -d 198.51.100.2 -j ACCEPT\nCOMMIT\n"),
			pkt:  pkt,
			want: want{verdict: Drop},
		},
		{
			name: "unsupported module is fine when another match already fails",
			save: natRuleset(nil, "-A TEST -d 198.51.100.99 -m owner --uid-owner 0 -j DROP"),
			pkt:  pkt,
			want: want{verdict: Accept},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(tc.save, []netip.Addr{node}, tc.pkt)
			if err != nil {
				t.Fatalf("Trace: %v", err)
			}
			checkResult(t, r, tc.want)
		})
	}
}

func TestTracePacketBranches(t *testing.T) {
	save := natRuleset([]string{"SEP1", "SEP2", "MASQ"},
		"-A TEST -m statistic --mode random --probability 0.5 -j SEP1", "-A TEST -j SEP2",
		"-A SEP1 -s 203.0.113.1 -j MASQ", "-A SEP1 -j DNAT --to-destination 203.0.113.1:80",
		"-A SEP2 -j DNAT --to-destination 203.0.113.2:80",
		"-A MASQ -j MARK --or-mark 0x4000",
		"-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE")
	r, err := Trace(save, []netip.Addr{node}, tcp("203.0.113.1", "198.51.100.1", 80, fromPod))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Branches) != 2 || len(r.Endpoints) != 2 {
		t.Fatalf("branches %d endpoints %d, want 2 and 2\n%s", len(r.Branches), len(r.Endpoints), describe(r))
	}
	// Only the hairpin branch is masqueraded.
	if e := r.Endpoints[0]; e.Addr.String() != "203.0.113.1:80" || !e.Masquerade || math.Abs(e.Probability-0.5) > 1e-12 {
		t.Errorf("first endpoint = %+v, want hairpin 203.0.113.1:80 masqueraded at 0.5", e)
	}
	if e := r.Endpoints[1]; e.Addr.String() != "203.0.113.2:80" || e.Masquerade {
		t.Errorf("second endpoint = %+v, want 203.0.113.2:80 not masqueraded", e)
	}
	if !r.Masquerade {
		t.Errorf("result not masqueraded although a branch is")
	}
	wantPath := []string{
		"nat/PREROUTING#1 -A PREROUTING -j TEST",
		"nat/TEST#1 -A TEST -m statistic --mode random --probability 0.5 -j SEP1",
		"nat/SEP1#1 -A SEP1 -s 203.0.113.1 -j MASQ",
		"nat/MASQ#1 -A MASQ -j MARK --or-mark 0x4000",
		"nat/SEP1#2 -A SEP1 -j DNAT --to-destination 203.0.113.1:80",
		"nat/POSTROUTING#1 -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
	}
	var got []string
	for _, s := range r.Path {
		got = append(got, s.String())
	}
	if strings.Join(got, "\n") != strings.Join(wantPath, "\n") {
		t.Errorf("path:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantPath, "\n"))
	}
}

func TestTracePacketErrors(t *testing.T) {
	tests := []struct {
		name    string
		save    []byte
		pkt     Packet
		wantErr string
	}{
		{"unknown match module is named", natRuleset(nil, "-A TEST -m owner --uid-owner 0 -j DROP"), tcp("192.0.2.101", "198.51.100.1", 80), `module "owner"`},
		{"ipset is refused", natRuleset(nil, "-A TEST -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"), tcp("192.0.2.101", "198.51.100.1", 80), `"set"`},
		{"unknown option of a known module", natRuleset(nil, "-A TEST -p tcp --tcp-flags SYN SYN -j DROP"), tcp("192.0.2.101", "198.51.100.1", 80), "--tcp-flags"},
		{"statistic nth mode", natRuleset(nil, "-A TEST -m statistic --mode nth --every 2 -j DROP"), tcp("192.0.2.101", "198.51.100.1", 80), "nth"},
		{"addrtype other than LOCAL", natRuleset(nil, "-A TEST -m addrtype --dst-type BROADCAST -j DROP"), tcp("192.0.2.101", "198.51.100.1", 80), "BROADCAST"},
		{"unsupported target", natRuleset(nil, "-A TEST -j SNAT --to-source 192.0.2.11"), tcp("192.0.2.101", "198.51.100.1", 80), "target SNAT"},
		{"-o needs the out interface", natRuleset(nil, "-A TEST -o eth0 -j DROP"), tcp("192.0.2.101", "198.51.100.1", 80), "OutInterface"},
		{"chain loop", natRuleset([]string{"A"}, "-A TEST -j A", "-A A -j TEST"), tcp("192.0.2.101", "198.51.100.1", 80), "nested deeper"},
		{"family mismatch", natRuleset(nil), Packet{Src: ip("192.0.2.1"), Dst: ip("2001:db8::1"), Protocol: "tcp"}, "different IP families"},
		{"bad protocol", natRuleset(nil), Packet{Src: ip("192.0.2.1"), Dst: ip("192.0.2.2"), Protocol: "icmp"}, "protocol"},
		{"DNAT range", natRuleset(nil, "-A TEST -j DNAT --to-destination 203.0.113.1-203.0.113.2"), tcp("192.0.2.101", "198.51.100.1", 80), "range"},
		{"parse error", []byte("*nat\n-A NOPE -j ACCEPT\nCOMMIT\n"), tcp("192.0.2.101", "198.51.100.1", 80), "line 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(tc.save, []netip.Addr{node}, tc.pkt)
			if err == nil {
				t.Fatalf("no error, result %+v", r)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}
