package iptables

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/iptables/dump"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// FuzzBuilder builds a sequence of random snapshots (services with every feature the
// builder knows, endpoints in every condition, random options and batch sizes), each
// as a full or partial build on top of the last. Every restore input must parse with
// iptables/dump and apply to the stateful fake, and after each step the fake must hold
// exactly what a new builder writes for that snapshot into an empty kernel.
//
// Seeds: testdata/fuzz/FuzzBuilder; TestFuzzBuilderSeedsRealRestore feeds their outputs
// to the real iptables-restore. Run: go test -run=^$ -fuzz=FuzzBuilder -fuzztime=20s ./iptables/
func FuzzBuilder(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Fuzz(checkBuilderCase)
}

// checkBuilderCase is FuzzBuilder's body.
func checkBuilderCase(t *testing.T, data []byte) {
	c := decodeBuilderCase(data)
	b := NewBuilder(c.family, c.opts)
	k := NewFake(c.family)
	for i, st := range c.steps {
		in := BuildInput{Full: st.full}
		if st.full {
			in.ExistingChains = fakeChains(k)
		}
		rs := b.Build(st.snap, in)
		input := restoreInput(rs, c.opts.BatchServices)
		if _, err := dump.Parse(input); err != nil {
			t.Fatalf("step %d: restore input does not parse: %v\n%s", i, err, input)
		}
		// As the proxier does: a ruleset that changes nothing is not restored.
		if rs.Changes() {
			if err := k.Restore(input); err != nil {
				t.Fatalf("step %d: the fake refused the restore input: %v\n%s", i, err, input)
			}
		}
		b.Commit()
		want := NewFake(c.family)
		if err := want.Restore(restoreInput(NewBuilder(c.family, c.opts).Build(st.snap, BuildInput{Full: true}), c.opts.BatchServices)); err != nil {
			t.Fatalf("step %d: fresh full build refused: %v", i, err)
		}
		if got, exp := string(k.SaveAll()), string(want.SaveAll()); got != exp {
			t.Fatalf("step %d (full %v): kernel after incremental builds differs from a fresh build: %s", i, st.full, lineDiff(got, exp))
		}
	}
}

// TestFuzzBuilderSeedsRealRestore feeds a fresh full build of every snapshot of every
// FuzzBuilder seed to the real iptables-restore --test of both backends, in a network
// namespace that exists only for the command (unshare -n): the fake accepting an input
// proves nothing about the tool.
func TestFuzzBuilderSeedsRealRestore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for unshare -n")
	}
	seeds, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzBuilder", "*"))
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no FuzzBuilder seeds in testdata/fuzz/FuzzBuilder: %v", err)
	}
	lock := filepath.Join(t.TempDir(), "xtables.lock")
	for _, seed := range seeds {
		data := readCorpusBytes(t, seed)
		c := decodeBuilderCase(data)
		for _, backend := range []string{"nft", "legacy"} {
			tool := "iptables-" + backend + "-restore"
			if c.family == v1.IPv6Protocol {
				tool = "ip6tables-" + backend + "-restore"
			}
			t.Run(filepath.Base(seed)+"/"+backend, func(t *testing.T) {
				if _, err := exec.LookPath(tool); err != nil {
					t.Skipf("%s not installed", tool)
				}
				// As NewProxier picks: legacy rewrites a table per COMMIT, so it gets one
				// block (its --test also forgets chains declared in earlier blocks).
				batch := c.opts.BatchServices
				if backend == "legacy" {
					batch = -1
				}
				for i, st := range c.steps {
					input := restoreInput(NewBuilder(c.family, c.opts).Build(st.snap, BuildInput{Full: true}), batch)
					cmd := exec.Command("unshare", "-n", tool, "--test", "--noflush")
					cmd.Stdin = bytes.NewReader(input)
					cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+lock)
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("step %d: %s --test refused the input: %v\n%s\n--- input\n%s", i, tool, err, out, input)
					}
				}
			})
		}
	}
}

// readCorpusBytes decodes a `go test fuzz v1` file holding one []byte value.
func readCorpusBytes(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		t.Fatalf("%s: not a one-value fuzz corpus file", path)
	}
	lit, ok := strings.CutPrefix(lines[1], "[]byte(")
	lit, ok2 := strings.CutSuffix(lit, ")")
	s, err := strconv.Unquote(lit)
	if !ok || !ok2 || err != nil {
		t.Fatalf("%s: cannot decode %q: %v", path, lines[1], err)
	}
	return []byte(s)
}

// restoreInput joins a build's inputs the way Proxier.Sync does (one restore call).
func restoreInput(rs *Ruleset, batch int) []byte {
	var out []byte
	for blk := range rs.Inputs(batch) {
		out = append(out, blk...)
	}
	return out
}

func fakeChains(k *Fake) []string {
	var out []string
	for _, t := range []Table{TableNAT, TableFilter} {
		data, _ := k.Save(t)
		out = append(out, savedChains(data)...)
	}
	return out
}

func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var x, y string
		if i < len(g) {
			x = g[i]
		}
		if i < len(w) {
			y = w[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n got: %s\nwant: %s", i+1, x, y)
		}
	}
	return "none"
}

// builderCase is what decodeBuilderCase makes of fuzz bytes.
type builderCase struct {
	family v1.IPFamily
	opts   Options
	steps  []builderStep
}

type builderStep struct {
	snap *proxier.Snapshot
	full bool
}

// decodeBuilderCase turns bytes into a family, options and up to 8 snapshots, each a
// few random changes away from the previous one, with Changed listing exactly the
// changed ports plus, sometimes, unchanged ones (a superset is allowed).
func decodeBuilderCase(data []byte) builderCase {
	in := proxiertest.NewFuzzInput(data)
	c := builderCase{family: proxiertest.Choose(in, v1.IPv4Protocol, v1.IPv6Protocol)}
	c.opts = DefaultOptions()
	c.opts.MasqueradeBit = proxiertest.Choose(in, 14, 0, 31)
	c.opts.MasqueradeAll = in.Pick(2) == 0
	c.opts.MasqueradeRandomFully = in.Pick(2) == 0
	c.opts.LocalhostNodePorts = in.Pick(2) == 0
	c.opts.BatchServices = proxiertest.Choose(in, -1, 1, 2, 100)
	cidr := netip.MustParsePrefix("203.0.113.0/25")
	if c.family == v1.IPv6Protocol {
		cidr = netip.MustParsePrefix("2001:db8:1::/64")
	}
	c.opts.LocalDetector = proxiertest.Choose(in, NoOpLocalDetector(), LocalDetectorByBridgeInterface("cbr0"),
		LocalDetectorByInterfaceNamePrefix("veth"), LocalDetectorByCIDR(cidr))
	node := testNode(c.family)
	node.Labels[v1.LabelTopologyZone] = proxiertest.Choose(in, "a", "b")
	services := map[proxier.ServicePortName]*proxier.ServicePort{}
	endpoints := map[proxier.ServicePortName][]*proxier.Endpoint{}
	for step := 0; step < 8 && (step == 0 || !in.Done()); step++ {
		changed := sets.New[proxier.ServicePortName]()
		for range 1 + in.Pick(4) {
			name := fzName(in)
			switch in.Pick(4) {
			case 0:
				delete(services, name)
				delete(endpoints, name)
			case 1:
				endpoints[name] = fzEndpoints(in, c.family)
			default:
				services[name] = fzService(in, name, c.family)
				endpoints[name] = fzEndpoints(in, c.family)
			}
			changed.Insert(name)
		}
		if in.Pick(4) == 0 {
			changed.Insert(fzName(in)) // unchanged or unknown: harmless
		}
		snap := &proxier.Snapshot{Family: c.family, Node: node, Changed: changed,
			Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]*proxier.Endpoint{}}
		for name, sp := range services {
			snap.Services[name] = sp
			if eps := endpoints[name]; len(eps) > 0 {
				snap.Endpoints[name] = eps
			}
		}
		c.steps = append(c.steps, builderStep{snap: snap, full: step == 0 || in.Pick(5) == 0})
	}
	return c
}

func fzName(in *proxiertest.FuzzInput) proxier.ServicePortName {
	return proxier.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("s%d", in.Pick(6))},
		Port:           proxiertest.Choose(in, "", "http"),
		Protocol:       proxiertest.Choose(in, v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP),
	}
}

func fzAddrs(in *proxiertest.FuzzInput, family v1.IPFamily, v4, v6 []string) []netip.Addr {
	pool := v4
	if family == v1.IPv6Protocol {
		pool = v6
	}
	var out []netip.Addr
	for range in.Pick(3) {
		a := netip.MustParseAddr(proxiertest.Choose(in, pool...))
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func fzService(in *proxiertest.FuzzInput, name proxier.ServicePortName, family v1.IPFamily) *proxier.ServicePort {
	sp := &proxier.ServicePort{Name: name, Protocol: name.Protocol, Port: proxiertest.Choose[int32](in, 80, 53, 1, 65535)}
	ips := fzAddrs(in, family, []string{"198.51.100.1", "198.51.100.2"}, []string{"2001:db8:5::1", "2001:db8:5::2"})
	sp.ClusterIP = netip.MustParseAddr(map[v1.IPFamily]string{v1.IPv4Protocol: "198.51.100.9", v1.IPv6Protocol: "2001:db8:5::9"}[family])
	if len(ips) > 0 {
		sp.ClusterIP = ips[0]
	}
	sp.NodePort = proxiertest.Choose[int32](in, 0, 0, 30001, 32767)
	sp.ExternalIPs = fzAddrs(in, family, []string{"203.0.113.200", "203.0.113.201"}, []string{"2001:db8:6::1", "2001:db8:6::2"})
	sp.LoadBalancerVIPs = fzAddrs(in, family, []string{"203.0.113.210", "203.0.113.201"}, []string{"2001:db8:6::10", "2001:db8:6::2"})
	if len(sp.LoadBalancerVIPs) > 0 {
		for _, a := range fzAddrs(in, family, []string{"192.0.2.0", "192.0.2.101"}, []string{"2001:db8:2::", "2001:db8:2::101"}) {
			p := netip.PrefixFrom(a, proxiertest.Choose(in, 24, 32))
			if a.Is6() {
				p = netip.PrefixFrom(a, proxiertest.Choose(in, 64, 128))
			}
			sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, p.Masked())
		}
		sp.LoadBalancerSourceRanges = slices.Compact(sp.LoadBalancerSourceRanges)
	}
	sp.ExternalPolicyLocal = sp.ExternallyAccessible() && in.Pick(2) == 0
	if sp.ExternalPolicyLocal && in.Pick(2) == 0 {
		sp.HealthCheckNodePort = 32000
	}
	sp.InternalPolicyLocal = in.Pick(3) == 0
	sp.StickyMaxAgeSeconds = proxiertest.Choose[int32](in, 0, 0, 10, 10800)
	sp.TrafficDistribution = proxiertest.Choose(in, "", "", "PreferClose", "PreferSameNode")
	return sp
}

func fzEndpoints(in *proxiertest.FuzzInput, family v1.IPFamily) []*proxier.Endpoint {
	pool := []string{"203.0.113.2", "203.0.113.3", "203.0.113.66", "203.0.113.67"}
	if family == v1.IPv6Protocol {
		pool = []string{"2001:db8:1:0:1::2", "2001:db8:1:0:1::3", "2001:db8:1:0:2::2", "2001:db8:1:0:2::3"}
	}
	byAddr := map[netip.AddrPort]*proxier.Endpoint{}
	for range in.Pick(6) {
		ep := &proxier.Endpoint{IP: netip.MustParseAddr(proxiertest.Choose(in, pool...)), Port: proxiertest.Choose[int32](in, 8080, 53, 1)}
		switch in.Pick(5) {
		case 0:
			ep.Serving, ep.Terminating = true, true
		case 1:
			ep.Terminating = true
		case 2:
		default:
			ep.Ready, ep.Serving = true, true
		}
		ep.NodeName = proxiertest.Choose(in, "node1", "node2", "")
		ep.IsLocal = ep.NodeName == "node1"
		ep.Zone = proxiertest.Choose(in, "a", "b", "")
		if in.Pick(3) == 0 {
			ep.ZoneHints = sets.New(proxiertest.Choose(in, "a", "b"))
		}
		if in.Pick(4) == 0 {
			ep.NodeHints = sets.New(proxiertest.Choose(in, "node1", "node2"))
		}
		byAddr[ep.AddrPort()] = ep
	}
	out := make([]*proxier.Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b *proxier.Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}
