package iptables

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// restoreLines returns the lines of a restore input that contain all of subs.
func restoreLines(text string, subs ...string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

func TestChainNamesMatchKubeProxy(t *testing.T) {
	// Values from kube-proxy's own tests, so operators see the same names.
	n := NewServiceChainNames(testSvc("ns1/svc1:p80").Name)
	if n.SVC != "KUBE-SVC-XPGD46QRK7WJZT7O" {
		t.Errorf("SVC = %s, want KUBE-SVC-XPGD46QRK7WJZT7O", n.SVC)
	}
	for got, prefix := range map[string]string{n.SVL: "KUBE-SVL-", n.EXT: "KUBE-EXT-", n.FW: "KUBE-FW-"} {
		if got != prefix+"XPGD46QRK7WJZT7O" {
			t.Errorf("%s chain = %s, want the SVC hash", prefix, got)
		}
	}
	if sep := n.SEP(testEP("10.180.0.1:80")); sep != "KUBE-SEP-SXIVWICOYRO3J4NJ" {
		t.Errorf("SEP = %s, want KUBE-SEP-SXIVWICOYRO3J4NJ", sep)
	}
	if n.Name != "ns1/svc1:p80" || n.Protocol != "tcp" {
		t.Errorf("name %q protocol %q", n.Name, n.Protocol)
	}
	udp := NewServiceChainNames(testSvc("ns1/svc1:p80", protocol(v1.ProtocolUDP)).Name)
	if udp.SVC == n.SVC {
		t.Errorf("UDP and TCP ports share chain %s", udp.SVC)
	}
}

func TestIsServiceChain(t *testing.T) {
	for chain, want := range map[string]bool{
		"KUBE-SVC-XPGD46QRK7WJZT7O": true, "KUBE-SVL-X": true, "KUBE-EXT-X": true, "KUBE-FW-X": true, "KUBE-SEP-X": true,
		"KUBE-SERVICES": false, "KUBE-MARK-MASQ": false, "KUBE-PROXY-CANARY": false, "KUBE-FIREWALL": false,
	} {
		if got := IsServiceChain(chain); got != want {
			t.Errorf("IsServiceChain(%s) = %v, want %v", chain, got, want)
		}
	}
}

func TestLoadBalancingProbabilities(t *testing.T) {
	snap := testSnap(v1.IPv4Protocol, testSvc("ns/svc", clusterIP("198.51.100.1")),
		testEP("203.0.113.1:80"), testEP("203.0.113.2:80"), testEP("203.0.113.3:80"), testEP("203.0.113.4:80"))
	text := buildText(t, v1.IPv4Protocol, testOptions(), snap)
	svc := NewServiceChainNames(testSvc("ns/svc").Name).SVC
	got := restoreLines(text, "-A "+svc+" ", "-> ")
	want := []string{"--probability 0.2500000000", "--probability 0.3333333333", "--probability 0.5000000000", ""}
	if len(got) != len(want) {
		t.Fatalf("%s rules:\n%s", svc, strings.Join(got, "\n"))
	}
	for i, w := range want {
		if w == "" {
			if strings.Contains(got[i], "statistic") {
				t.Errorf("last rule has a statistic match: %s", got[i])
			}
			continue
		}
		if !strings.Contains(got[i], w) {
			t.Errorf("rule %d = %q, want %s", i, got[i], w)
		}
	}
}

func TestCommentsDroppedInLargeClusters(t *testing.T) {
	entries := []any{testSvc("ns/big", clusterIP("198.51.100.1"))}
	for i := range 1001 {
		entries = append(entries, testEP(fmt.Sprintf("203.0.%d.%d:80", 100+i/250, i%250+1)))
	}
	large := buildText(t, v1.IPv4Protocol, testOptions(), testSnap(v1.IPv4Protocol, entries...))
	small := buildText(t, v1.IPv4Protocol, testOptions(), testSnap(v1.IPv4Protocol, entries[:1001]...))
	for _, tc := range []struct {
		name     string
		text     string
		comments bool
	}{{"1000 endpoints", small, true}, {"1001 endpoints", large, false}} {
		t.Run(tc.name, func(t *testing.T) {
			sep := restoreLines(tc.text, "-A KUBE-SEP-", "DNAT")[0]
			if got := strings.Contains(sep, "--comment"); got != tc.comments {
				t.Errorf("SEP rule %q: comment present = %v, want %v", sep, got, tc.comments)
			}
			// The dispatch rule keeps its comment either way, as in kube-proxy.
			if len(restoreLines(tc.text, "-A KUBE-SERVICES", `"ns/big cluster IP"`)) != 1 {
				t.Errorf("KUBE-SERVICES rule lost its comment")
			}
		})
	}
}

func TestBuilderOptions(t *testing.T) {
	snap := testSnap(v1.IPv4Protocol,
		testSvc("ns/svc", clusterIP("198.51.100.1"), nodePort(30001)), testEP("203.0.113.70:80"))
	tests := []struct {
		name   string
		mod    func(*Options)
		want   []string
		absent []string
	}{{
		name:   "defaults",
		mod:    func(*Options) {},
		want:   []string{"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", "-j MASQUERADE --random-fully", "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000", "! -s 203.0.113.0/25 -j KUBE-MARK-MASQ", "--dst-type LOCAL -j KUBE-NODEPORTS", ":KUBE-FIREWALL - [0:0]"},
		absent: []string{"nfacct", "! -d 127.0.0.0/8"},
	}, {
		name:   "masquerade bit 1, no random-fully",
		mod:    func(o *Options) { o.MasqueradeBit = 1; o.MasqueradeRandomFully = false },
		want:   []string{"-m mark ! --mark 0x00000002/0x00000002 -j RETURN", "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00000002", `"kubernetes service traffic requiring SNAT" -j MASQUERADE` + "\n"},
		absent: []string{"random-fully"},
	}, {
		name:   "masquerade all",
		mod:    func(o *Options) { o.MasqueradeAll = true },
		want:   []string{`"ns/svc cluster IP" -m tcp -p tcp -d 198.51.100.1 --dport 80 -j KUBE-MARK-MASQ`},
		absent: []string{"! -s 203.0.113.0/25"},
	}, {
		name:   "no local detector",
		mod:    func(o *Options) { o.LocalDetector = NoOpLocalDetector() },
		absent: []string{"-d 198.51.100.1 --dport 80 -j KUBE-MARK-MASQ", "-d 198.51.100.1 --dport 80 ! -s"},
	}, {
		name: "interface prefix detector",
		mod:  func(o *Options) { o.LocalDetector = LocalDetectorByInterfaceNamePrefix("veth") },
		want: []string{"--dport 80 ! -i veth+ -j KUBE-MARK-MASQ"},
	}, {
		name:   "conntrack be-liberal",
		mod:    func(o *Options) { o.ConntrackTCPBeLiberal = true },
		absent: []string{"--ctstate INVALID"},
	}, {
		name: "nfacct counters",
		mod:  func(o *Options) { o.NFAcctCTStateInvalid = true; o.NFAcctLocalhostNodePorts = true },
		want: []string{"-m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
			"-A KUBE-NODEPORTS -m comment --comment \"ns/svc\" -m tcp -p tcp -d 127.0.0.0/8 --dport 30001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-"},
	}, {
		name:   "no localhost nodeports",
		mod:    func(o *Options) { o.LocalhostNodePorts = false },
		want:   []string{"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"},
		absent: []string{"KUBE-FIREWALL"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			tc.mod(&opts)
			text := buildText(t, v1.IPv4Protocol, opts, snap)
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("missing %q in:\n%s", w, text)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(text, a) {
					t.Errorf("unexpected %q in:\n%s", a, text)
				}
			}
		})
	}
}

func TestNodePortAddresses(t *testing.T) {
	snap := testSnap(v1.IPv4Protocol, testSvc("ns/svc", clusterIP("198.51.100.1"), nodePort(30001)), testEP("203.0.113.70:80"))
	npa, err := proxier.NewNodePortAddresses(v1.IPv4Protocol, []string{"192.0.2.0/24", "127.0.0.0/8"}, node1IP)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions()
	opts.NodePortAddresses = npa
	b := NewBuilder(v1.IPv4Protocol, opts)
	ips := []netip.Addr{netip.MustParseAddr("127.0.0.1"), node1IP}
	text := b.Build(snap, BuildInput{Full: true, NodePortIPs: ips}).String()
	got := restoreLines(text, "-j KUBE-NODEPORTS")
	want := []string{
		`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -d 127.0.0.1 -j KUBE-NODEPORTS`,
		`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -d 192.0.2.11 -j KUBE-NODEPORTS`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("nodeport jumps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Without loopback in nodePortAddresses there are no localhost NodePorts,
	// so no anti-martian rule either.
	npa, _ = proxier.NewNodePortAddresses(v1.IPv4Protocol, []string{"primary"}, node1IP)
	opts.NodePortAddresses = npa
	text = NewBuilder(v1.IPv4Protocol, opts).Build(snap, BuildInput{Full: true, NodePortIPs: ips}).String()
	if got := restoreLines(text, "-j KUBE-NODEPORTS"); len(got) != 1 || !strings.Contains(got[0], "-d 192.0.2.11") {
		t.Errorf("nodeport jumps with primary only: %q", got)
	}
	if strings.Contains(text, "KUBE-FIREWALL") {
		t.Errorf("localhost guard present without localhost NodePorts")
	}
}

func TestIPv6Ruleset(t *testing.T) {
	snap := testSnap(v1.IPv6Protocol,
		testSvc("ns/svc", clusterIP("2001:db8:5::1"), nodePort(30001), externalIPs("2001:db8:6::1"), affinity(60)),
		testEP("[2001:db8:1::2]:8080"), testEP("[2001:db8:1:0:2::5]:8080"))
	opts := testOptions()
	opts.LocalDetector = LocalDetectorByCIDR(netip.MustParsePrefix("2001:db8:1::/64"))
	text := buildText(t, v1.IPv6Protocol, opts, snap)
	for _, w := range []string{
		"-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS",
		"-j DNAT --to-destination [2001:db8:1::2]:8080",
		`--comment "ns/svc -> [2001:db8:1:0:2::5]:8080"`,
		"-s 2001:db8:1::2 -j KUBE-MARK-MASQ",
		"-d 2001:db8:5::1 --dport 80 ! -s 2001:db8:1::/64 -j KUBE-MARK-MASQ",
		"-d 2001:db8:6::1 --dport 80 -j KUBE-EXT-",
	} {
		if !strings.Contains(text, w) {
			t.Errorf("missing %q in:\n%s", w, text)
		}
	}
	if strings.Contains(text, "KUBE-FIREWALL") || strings.Contains(text, "127.0.0.0/8") {
		t.Errorf("IPv6 ruleset has IPv4 localhost handling:\n%s", text)
	}
}

func TestLocalDetectors(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("203.0.113.0/25"), netip.MustParsePrefix("2001:db8:1::/64")
	tests := []struct {
		name          string
		family        v1.IPFamily
		cfg           LocalDetectorConfig
		local, nonLoc string
		implemented   bool
		wantErr       bool
	}{
		{name: "cluster CIDR v4", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalClusterCIDR, ClusterCIDRs: []netip.Prefix{v6, v4}}, local: "-s 203.0.113.0/25", nonLoc: "! -s 203.0.113.0/25", implemented: true},
		{name: "cluster CIDR v6", family: v1.IPv6Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalClusterCIDR, ClusterCIDRs: []netip.Prefix{v4, v6}}, local: "-s 2001:db8:1::/64", nonLoc: "! -s 2001:db8:1::/64", implemented: true},
		{name: "cluster CIDR unset is no-op", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalClusterCIDR}},
		{name: "default mode is cluster CIDR", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{ClusterCIDRs: []netip.Prefix{v4}}, local: "-s 203.0.113.0/25", nonLoc: "! -s 203.0.113.0/25", implemented: true},
		{name: "node CIDR", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalNodeCIDR, NodePodCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/26")}}, local: "-s 203.0.113.0/26", nonLoc: "! -s 203.0.113.0/26", implemented: true},
		{name: "bridge", family: v1.IPv6Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalBridgeInterface, BridgeInterface: "cbr0"}, local: "-i cbr0", nonLoc: "! -i cbr0", implemented: true},
		{name: "prefix", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalInterfaceNamePrefix, InterfacePrefix: "veth"}, local: "-i veth+", nonLoc: "! -i veth+", implemented: true},
		{name: "bridge without name", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: DetectLocalBridgeInterface}, wantErr: true},
		{name: "unknown mode", family: v1.IPv4Protocol, cfg: LocalDetectorConfig{Mode: "Bogus"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewLocalDetector(tc.family, tc.cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if d.IsImplemented() != tc.implemented {
				t.Fatalf("IsImplemented = %v", d.IsImplemented())
			}
			if got := strings.Join(d.IfLocal(), " "); got != tc.local {
				t.Errorf("IfLocal = %q, want %q", got, tc.local)
			}
			if got := strings.Join(d.IfNotLocal(), " "); got != tc.nonLoc {
				t.Errorf("IfNotLocal = %q, want %q", got, tc.nonLoc)
			}
		})
	}
}

func TestRulesetInputsBatching(t *testing.T) {
	var entries []any
	for i := range 25 {
		entries = append(entries, testSvc(fmt.Sprintf("ns/svc%02d", i), clusterIP(fmt.Sprintf("198.51.100.%d", i+1))), testEP(fmt.Sprintf("203.0.113.%d:80", i+1)))
	}
	b := NewBuilder(v1.IPv4Protocol, testOptions())
	rs := b.Build(testSnap(v1.IPv4Protocol, entries...), BuildInput{Full: true})
	var inputs []string
	for data := range rs.Inputs(10) {
		inputs = append(inputs, string(data))
	}
	if len(inputs) != 4 || rs.InputCount(10) != 4 {
		t.Fatalf("got %d inputs (InputCount %d), want 4", len(inputs), rs.InputCount(10))
	}
	for i, in := range inputs[:3] {
		if strings.Contains(in, "*filter") || strings.Contains(in, ":KUBE-SERVICES") {
			t.Errorf("service batch %d holds top-level chains:\n%s", i, in)
		}
		if got, want := len(restoreLines(in, ":KUBE-SVC-")), min(10, 25-10*i); got != want {
			t.Errorf("batch %d declares %d SVC chains, want %d", i, got, want)
		}
		if got := strings.Contains(in, ":KUBE-MARK-MASQ"); got != (i == 0) {
			t.Errorf("batch %d declares KUBE-MARK-MASQ: %v", i, got)
		}
	}
	last := inputs[3]
	if !strings.HasPrefix(last, "*filter\n") || !strings.Contains(last, ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n") || strings.Contains(last, ":KUBE-SVC-") {
		t.Errorf("last input is not the dispatch chains only:\n%s", last)
	}
	// Splitting must not change the rules: the batches together hold
	// exactly the lines of the single input.
	one := rs.String()
	if got, want := countLines(strings.Join(inputs, ""), "-A "), countLines(one, "-A "); got != want {
		t.Errorf("batched inputs hold %d rules, single input %d", got, want)
	}
}

func countLines(text, prefix string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}
