package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// checkGolden compares got with testdata/name.golden.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	assertSameState(t, got, string(want))
}

func TestGoldenRulesets(t *testing.T) {
	restricted, err := proxier.NewNodePortAddresses(v1.IPv4Protocol, []string{"192.0.2.0/24"}, node1IP)
	if err != nil {
		t.Fatal(err)
	}
	v6 := testSnap(v1.IPv6Protocol,
		testSvc("ns/web:http", clusterIP("2001:db8:5::1"), nodePort(30001), lbIPs("2001:db8:6::1"), sourceRanges("2001:db8:2::/64"), etpLocal(32001)),
		testEP("[2001:db8:1:0:1::2]:8080", local), testEP("[2001:db8:1:0:2::5]:8080"),
		testSvc("ns/dns:dns", clusterIP("2001:db8:5::a"), port(53), protocol(v1.ProtocolUDP), affinity(600)), testEP("[2001:db8:1:0:2::6]:53"),
		testSvc("ns/none", clusterIP("2001:db8:5::2"), externalIPs("2001:db8:6::2")),
	)
	tests := []struct {
		name   string
		family v1.IPFamily
		mod    func(*Options)
		snap   *proxier.Snapshot
		in     BuildInput
	}{
		{name: "ipv4-features", family: v1.IPv4Protocol, mod: func(*Options) {}, snap: traceSnapshot(), in: BuildInput{Full: true}},
		{name: "ipv4-options", family: v1.IPv4Protocol, snap: traceSnapshot(),
			mod: func(o *Options) {
				o.MasqueradeAll, o.MasqueradeRandomFully, o.ConntrackTCPBeLiberal = true, false, true
				o.NFAcctCTStateInvalid, o.NFAcctLocalhostNodePorts = true, true
				o.LocalDetector = LocalDetectorByBridgeInterface("cbr0")
				o.NodePortAddresses = restricted
			},
			in: BuildInput{Full: true, NodePortIPs: []netip.Addr{node1IP}, ExistingChains: []string{"KUBE-SVC-OLDOLDOLDOLDOLD1", "KUBE-SEP-OLDOLDOLDOLDOLD2", "KUBE-MARK-DROP"}}},
		{name: "ipv6", family: v1.IPv6Protocol, snap: v6, in: BuildInput{Full: true},
			mod: func(o *Options) { o.LocalDetector = LocalDetectorByCIDR(netip.MustParsePrefix("2001:db8:1::/64")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			tc.mod(&opts)
			checkGolden(t, tc.name, NewBuilder(tc.family, opts).Build(tc.snap, tc.in).String())
		})
	}

	t.Run("ipv4-partial", func(t *testing.T) {
		b := NewBuilder(v1.IPv4Protocol, testOptions())
		snap := traceSnapshot()
		b.Build(snap, BuildInput{Full: true})
		b.Commit()
		// ns/cip moves one endpoint to another address; ns/itp is deleted.
		next := testSnap(v1.IPv4Protocol)
		for name, svc := range snap.Services {
			if name.Name != "itp" {
				next.Services[name] = svc
				next.Endpoints[name] = snap.Endpoints[name]
			}
		}
		cip := testSvc("ns/cip").Name
		next.Endpoints[cip] = []*proxier.Endpoint{testEP("203.0.113.70:8080"), testEP("203.0.113.90:8080")}
		next.Changed.Insert(cip, testSvc("ns/itp").Name)
		checkGolden(t, "ipv4-partial", b.Build(next, BuildInput{}).String())
	})
}
