package ipvs

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from golden (rerun with -update to accept):\n%s", name, got)
	}
}

// TestIPTablesGolden pins the whole iptables input for a snapshot using
// every feature, with and without a local-traffic detector.
func TestIPTablesGolden(t *testing.T) {
	snap := snapshot(
		svc("ns/all", clusterIP("198.51.100.10"), nodePort(30080), externalIPs("203.0.113.200"),
			lbIPs("203.0.113.210"), sourceRanges("192.0.2.101/32")), ep("203.0.113.1:8080"),
		svc("ns/local", clusterIP("198.51.100.11"), nodePort(30081), lbIPs("203.0.113.211"), externalIPs("203.0.113.201"), etpLocal(31000)),
		ep("203.0.113.70:8080"),
		svc("ns/udp", clusterIP("198.51.100.12"), port(53), proto("UDP"), nodePort(30053)), ep("203.0.113.2:53"),
		svc("ns/sctp", clusterIP("198.51.100.13"), proto("SCTP"), nodePort(30090), etpLocal(0)), ep("203.0.113.3:80", local()),
	)
	for _, tc := range []struct {
		name string
		opts func(*Options)
	}{
		{"iptables-nodetector.golden", func(*Options) {}},
		{"iptables-clustercidr.golden", func(o *Options) {
			o.LocalDetector = iptables.LocalDetectorByCIDR(netip.MustParsePrefix("203.0.113.0/25"))
			o.MasqueradeRandomFully = true
		}},
		{"iptables-masqall.golden", func(o *Options) { o.MasqueradeAll = true; o.MasqueradeBit = 10 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			tc.opts(&opts)
			ds := Build(snap, nodeAddrs, opts)
			// The fake parses the input like iptables-restore would.
			k := iptables.NewFake("IPv4")
			if err := k.Restore(ds.IPTables); err != nil {
				t.Fatalf("restore: %v", err)
			}
			golden(t, tc.name, ds.IPTables)
		})
	}
}
