package render

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const examples = "../manifests/examples"

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it); got:\n%s", path, got)
	}
}

func nodeConfig(node, ip string) Config {
	return Config{
		Family:       v1.IPv4Protocol,
		NodeName:     node,
		NodeIP:       netip.MustParseAddr(ip),
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25")},
	}
}

func TestGoldenExamples(t *testing.T) {
	objs, problems, err := Load([]string{examples}, nil)
	if err != nil || len(problems) > 0 {
		t.Fatalf("Load(%s): %v, problems %v", examples, err, problems)
	}
	if len(objs.Services) != 3 || len(objs.Slices) != 3 {
		t.Fatalf("Load found %d services, %d slices; want 3 and 3", len(objs.Services), len(objs.Slices))
	}
	for _, n := range []struct{ name, ip string }{{"node1", "192.0.2.11"}, {"node2", "192.0.2.12"}} {
		cfg := nodeConfig(n.name, n.ip)
		snap, problems := Snapshot(objs, cfg)
		if len(problems) > 0 {
			t.Fatalf("Snapshot: problems %v", problems)
		}
		t.Run("iptables/"+n.name, func(t *testing.T) {
			out, err := IPTables(snap, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "examples-iptables-"+n.name, out)
		})
		t.Run("iptables-restore/"+n.name, func(t *testing.T) {
			out, err := IPTablesRestore(snap, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "examples-iptables-restore-"+n.name, out)
		})
		t.Run("ipvs/"+n.name, func(t *testing.T) {
			st, err := IPVS(snap, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "examples-ipvs-"+n.name, FormatIPVS(st))
		})
	}
}

// TestMalformedDump: every bad object or value is reported by kind,
// namespace and name (or its place in the file), and the rest renders.
func TestMalformedDump(t *testing.T) {
	objs, problems, err := Load([]string{"testdata/malformed.yaml"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, more := Snapshot(objs, nodeConfig("node1", "192.0.2.11"))
	problems = append(problems, more...)
	var got []string
	for _, p := range problems {
		got = append(got, p.String())
	}
	want := []string{
		`Service (testdata/malformed.yaml#1/items[4]): missing metadata.name`,
		`EndpointSlice ns/orphan (testdata/malformed.yaml#1/items[5]): missing label kubernetes.io/service-name`,
		`Servcie ns/typo (testdata/malformed.yaml#1/items[6]): unsupported kind "Servcie"`,
		`Service ns/wrongtype (testdata/malformed.yaml#1/items[7]): invalid Service:`,
		`Service ns/noports (testdata/malformed.yaml#1/items[3]): missing spec.ports`,
		`object (testdata/malformed.yaml#2): invalid YAML`,
		`Service ns/badip: ignoring spec.clusterIP[0] "198.51.100.300": not an IP address`,
		`EndpointSlice ns/good-1: ignoring endpoints[1].addresses[0] "203.0.113.999": not an IP address`,
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("no problem reported as %q; got:\n%s", w, strings.Join(got, "\n"))
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	if len(snap.Services) != 1 {
		t.Fatalf("snapshot has %d service ports, want only ns/good's", len(snap.Services))
	}
	for name, eps := range snap.Endpoints {
		if name.Name != "good" || len(eps) != 1 || eps[0].String() != "203.0.113.30:8080" {
			t.Errorf("endpoints of %s: %v, want ns/good → 203.0.113.30:8080", name, eps)
		}
	}
	out, err := IPTables(snap, nodeConfig("node1", "192.0.2.11"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"ns/good:http -> 203.0.113.30:8080"`) {
		t.Errorf("rendered rules lack ns/good's endpoint:\n%s", out)
	}
}

func TestDecodeForms(t *testing.T) {
	svc := func(name string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + ", namespace: ns}\nspec: {clusterIP: 198.51.100.1, ports: [{port: 80}]}\n"
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"single", svc("a"), []string{"a"}},
		{"multi-doc", svc("a") + "---\n# just a comment\n---\n" + svc("b"), []string{"a", "b"}},
		{"List", "apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(svc("a"), "\n", "\n  ") + "\n", []string{"a"}},
		{"ServiceList without item kinds", `{"kind":"ServiceList","items":[{"metadata":{"name":"a","namespace":"ns"},"spec":{"clusterIP":"198.51.100.1","ports":[{"port":80}]}}]}`, []string{"a"}},
		{"ignored kinds", "kind: Namespace\nmetadata: {name: ns}\n---\nkind: Pod\nmetadata: {name: p, namespace: ns}\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := &Objects{}
			if problems := objs.Decode([]byte(tc.doc), "test.yaml"); len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			var got []string
			for _, s := range objs.Services {
				got = append(got, s.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("services %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDuplicateReported(t *testing.T) {
	doc := "kind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 198.51.100.1, ports: [{port: 80}]}\n"
	objs := &Objects{}
	problems := objs.Decode([]byte(doc+"---\n"+doc), "dup.yaml")
	if len(problems) != 1 || !strings.Contains(problems[0].Reason, "duplicate") || len(objs.Services) != 1 {
		t.Errorf("problems %v, %d services; want one duplicate reported and one service kept", problems, len(objs.Services))
	}
}
