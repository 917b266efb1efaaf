package iptables

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestRealIPTablesRestoreAcceptsOutput feeds builder output to the real
// iptables-restore --test (both backends, both families) inside a network
// namespace that exists only for the command (unshare -n): it catches
// syntax the fake would accept and the tool would not. Nothing is
// programmed, here or in the host's namespace.
func TestRealIPTablesRestoreAcceptsOutput(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for unshare -n")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare not installed")
	}
	v4 := testOptions()
	v4.NFAcctCTStateInvalid, v4.NFAcctLocalhostNodePorts = false, false
	v4other := testOptions()
	v4other.MasqueradeAll, v4other.MasqueradeRandomFully = true, false
	v4other.LocalDetector = LocalDetectorByInterfaceNamePrefix("veth")
	v6 := testOptions()
	v6.LocalDetector = LocalDetectorByBridgeInterface("cbr0")
	v6snap := testSnap(v1.IPv6Protocol,
		testSvc("ns/web:http", clusterIP("2001:db8:5::1"), nodePort(30001), lbIPs("2001:db8:6::1"), sourceRanges("2001:db8:2::/64"), etpLocal(32001), affinity(300)),
		testEP("[2001:db8:1:0:1::2]:8080", local), testEP("[2001:db8:1:0:2::5]:8080"),
		testSvc("ns/none", clusterIP("2001:db8:5::2"), externalIPs("2001:db8:6::2"), nodePort(30002)),
	)
	inputs := []struct {
		name   string
		family v1.IPFamily
		data   string
	}{
		{"ipv4 features", v1.IPv4Protocol, buildText(t, v1.IPv4Protocol, v4, traceSnapshot())},
		{"ipv4 other options", v1.IPv4Protocol, buildText(t, v1.IPv4Protocol, v4other, traceSnapshot())},
		{"ipv6", v1.IPv6Protocol, buildText(t, v1.IPv6Protocol, v6, v6snap)},
		{"ipv4 nodePortAddresses", v1.IPv4Protocol, NewBuilder(v1.IPv4Protocol, v4).Build(traceSnapshot(),
			BuildInput{Full: true, NodePortIPs: []netip.Addr{node1IP}, ExistingChains: []string{"KUBE-SEP-AAAAAAAAAAAAAAAA"}}).String()},
	}
	lock := filepath.Join(t.TempDir(), "xtables.lock")
	for _, backend := range []string{"nft", "legacy"} {
		for _, in := range inputs {
			tool := "iptables-" + backend + "-restore"
			if in.family == v1.IPv6Protocol {
				tool = "ip6tables-" + backend + "-restore"
			}
			t.Run(backend+"/"+in.name, func(t *testing.T) {
				if _, err := exec.LookPath(tool); err != nil {
					t.Skipf("%s not installed", tool)
				}
				cmd := exec.Command("unshare", "-n", tool, "--test", "--noflush")
				cmd.Stdin = bytes.NewBufferString(in.data)
				cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+lock)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s --test refused the input: %v\n%s", tool, err, out)
				}
			})
		}
	}

	// The check itself must be able to fail.
	cmd := exec.Command("unshare", "-n", "iptables-restore", "--test", "--noflush")
	cmd.Stdin = bytes.NewBufferString("*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m statistic --mode random --probability nope -j RETURN\nCOMMIT\n")
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+lock)
	if err := cmd.Run(); err == nil {
		t.Errorf("iptables-restore --test accepted a broken input")
	}
}
