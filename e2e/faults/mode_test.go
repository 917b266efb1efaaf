package faults

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// ModeEnv selects the proxy mode of every test in the package: iptables (the default;
// the host kernel has no IPVS) or ipvs (set by e2e/vmdatapath inside the VM).
const ModeEnv = "SVCPROXY_FAULTS_MODE"

func proxyMode() string {
	if m := os.Getenv(ModeEnv); m != "" {
		return m
	}
	return "iptables"
}

// onlyMode skips a test that has no meaning in the other mode, saying why.
func onlyMode(t *testing.T, mode, why string) {
	t.Helper()
	if proxyMode() != mode {
		t.Skipf("%s mode only: %s", mode, why)
	}
}

// kernelRules is what the proxy programmed for IPv4 in the node, as text to search:
// the nat and filter tables in iptables mode; in IPVS mode the virtual and real
// servers (ipvsadm -Sn), the addresses of kube-ipvs0 and the ipsets.
func kernelRules(t *testing.T, n *bed.Node) string {
	t.Helper()
	if proxyMode() != "ipvs" {
		out, err := n.IPTablesSave(false)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	var b strings.Builder
	for _, cmd := range [][]string{{"ipvsadm", "-Sn"}, {"ip", "-4", "-o", "addr", "show", "dev", "kube-ipvs0"}, {"ipset", "save"}} {
		out, err := n.NS.Exec(cmd[0], cmd[1:]...)
		if err != nil && cmd[0] != "ip" { // kube-ipvs0 may not exist yet
			t.Fatalf("%s: %v", strings.Join(cmd, " "), err)
		}
		b.WriteString(out)
	}
	return b.String()
}

// endpointEntries counts the programmed endpoints whose address starts with prefix:
// DNAT rules in iptables mode, real servers in IPVS mode.
func endpointEntries(t *testing.T, n *bed.Node, prefix string) int {
	t.Helper()
	if proxyMode() != "ipvs" {
		return strings.Count(kernelRules(t, n), "-j DNAT --to-destination "+prefix)
	}
	out := bed.ExecInNS(t, n.NS, "ipvsadm", "-Sn")
	return strings.Count(out, " -r "+prefix)
}

// ipvsNormalized is the node's IPVS-mode kernel state in a form two proxies' states
// compare equal in: virtual and real servers sorted, ipsets with sorted members, the
// addresses of kube-ipvs0, and iptables nat and filter (saveNormalized) of both
// families. Real servers at weight 0 are left out: they wait for graceful termination,
// whose timing differs between a killed and a fresh proxy.
func ipvsNormalized(t *testing.T, n *bed.Node) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(bed.ExecInNS(t, n.NS, "ipvsadm", "-Sn"), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasSuffix(l, " -w 0") {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	var b strings.Builder
	b.WriteString("# ipvs\n" + strings.Join(lines, "\n") + "\n")
	lines = lines[:0]
	for _, l := range strings.Split(bed.ExecInNS(t, n.NS, "ipset", "save"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, ipsetLine(l))
		}
	}
	sort.Strings(lines)
	b.WriteString("# ipsets\n" + strings.Join(lines, "\n") + "\n")
	// Global only: the link-local address follows the random MAC of each new link.
	addrs, _ := n.NS.Exec("ip", "-o", "addr", "show", "dev", "kube-ipvs0", "scope", "global")
	lines = lines[:0]
	for _, l := range strings.Split(addrs, "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			lines = append(lines, f[3])
		}
	}
	sort.Strings(lines)
	fmt.Fprintf(&b, "# kube-ipvs0\n%s\n", strings.Join(lines, "\n"))
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		b.WriteString("# " + tool + "\n" + saveNormalized(t, n, tool))
	}
	return b.String()
}

// ipsetLine keeps what a set is of an "ipset save" create line (name, type, family,
// maxelem) and drops what the kernel picks: the hash seed (initval), and the table and
// bucket sizes, which grow with the members a set ever held.
func ipsetLine(l string) string {
	f := strings.Fields(l)
	if len(f) < 3 || f[0] != "create" {
		return l
	}
	keep := f[:3]
	for i := 3; i < len(f); i++ {
		switch f[i] {
		case "hashsize", "bucketsize", "initval":
			i++ // and its value
		default:
			keep = append(keep, f[i])
		}
	}
	return strings.Join(keep, " ")
}
