// Package datapath holds svcproxy's data-plane scenarios (../shared/SCENARIOS.md): real
// packets from client and pod namespaces to echo servers in pod namespaces, through the
// real svcproxy binary running in node namespaces against a real kube-apiserver.
//
// Every scenario runs as TestDatapath/<mode>/<Name>. On the host the mode is iptables; in
// the qemu VM (e2e/vm) SVCPROXY_E2E_MODES selects ipvs (and iptables).
package datapath

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m, bed.DualStack())) }

// Env is one mode's shared cluster: two nodes (zones a and b), IPv6 enabled, two
// clients, and svcproxy running on both nodes. Scenarios add their own pods and
// Services (with addresses from the allocators) and remove their Services when done.
type Env struct {
	Mode    string
	API     *bed.APIServer
	C       *bed.Cluster
	Proxies map[string]*bed.Proxy // by node short name: "node1", "node2"

	mu                                sync.Mutex
	nextIP, nextIPv6, nextExt, nextNP int
}

// ProxyArgs are the flags every proxy of the shared cluster runs with.
func ProxyArgs(mode string) []string {
	return []string{
		"--proxy-mode=" + mode,
		"--cluster-cidr=203.0.113.0/25,2001:db8:1::/64",
		"--iptables-min-sync-period=200ms",
		"--ipvs-min-sync-period=200ms",
	}
}

type scenario struct {
	name string
	fn   func(t *testing.T, e *Env)
	// modes limits the scenario to these modes (nil: all). SCTP, for
	// instance, needs the VM kernel.
	modes []string
}

var (
	registryMu sync.Mutex
	scenarios  []scenario
)

// register adds a scenario; call it from an init function of the scenario's file.
func register(name string, fn func(t *testing.T, e *Env), modes ...string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	scenarios = append(scenarios, scenario{name: name, fn: fn, modes: modes})
}

// modes are the data planes this run covers: SVCPROXY_E2E_MODES (comma separated),
// else iptables (the host kernel has no IPVS).
func modes() []string {
	if v := os.Getenv("SVCPROXY_E2E_MODES"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"iptables"}
}

// FilterEnv limits the scenarios of a mode to names matching a regexp, as
// "mode=regexp[;mode=regexp]": the VM runs iptables mode only for what the host
// kernel cannot (SCTP), without booting twice.
const FilterEnv = "SVCPROXY_E2E_FILTER"

func filters(t *testing.T) map[string]*regexp.Regexp {
	out := map[string]*regexp.Regexp{}
	for _, part := range strings.Split(os.Getenv(FilterEnv), ";") {
		if part == "" {
			continue
		}
		mode, expr, ok := strings.Cut(part, "=")
		re, err := regexp.Compile(expr)
		if !ok || err != nil {
			t.Fatalf("%s: %q is not mode=regexp (%v)", FilterEnv, part, err)
		}
		out[mode] = re
	}
	return out
}

func TestDatapath(t *testing.T) {
	bed.RequireRoot(t)
	only := filters(t)
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, mode)
			for _, s := range scenarios {
				if re := only[mode]; re != nil && !re.MatchString(s.name) {
					continue
				}
				t.Run(s.name, func(t *testing.T) {
					if len(s.modes) > 0 && !contains(s.modes, mode) {
						t.Skipf("%s runs in modes %v only", s.name, s.modes)
					}
					s.fn(t, e)
				})
			}
		})
	}
}

func newEnv(t *testing.T, mode string) *Env {
	api := bed.API(t)
	c := bed.NewCluster(t, bed.ClusterOptions{API: api, Clients: 2, IPv6: true, Zones: []string{"a", "b"}})
	e := &Env{Mode: mode, API: api, C: c, Proxies: map[string]*bed.Proxy{}}
	for _, n := range c.Nodes {
		e.Proxies[n.Short] = c.StartProxy(t, n, ProxyArgs(mode)...)
	}
	for _, p := range e.Proxies {
		p.WaitHealthy(t)
	}
	// healthz answers 200 before the first sync; scenarios start after it,
	// so their changes are partial syncs like in a running cluster.
	e.Programmed(t, time.Unix(1, 0))
	return e
}

// ClusterIP returns a fresh IPv4 ClusterIP for a scenario's Service.
func (e *Env) ClusterIP() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nextIP++
	if e.nextIP > 230 {
		panic("datapath: out of IPv4 ClusterIPs")
	}
	return fmt.Sprintf("198.51.100.%d", 20+e.nextIP)
}

// ClusterIPv6 returns a fresh IPv6 ClusterIP.
func (e *Env) ClusterIPv6() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nextIPv6++
	return fmt.Sprintf("2001:db8:5::%x", 0x20+e.nextIPv6)
}

// ExternalIP returns a fresh address in the external/LB range, routed by the clients via node1.
func (e *Env) ExternalIP() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nextExt++
	if e.nextExt > 60 {
		panic("datapath: out of external IPs")
	}
	return fmt.Sprintf("203.0.113.%d", 192+e.nextExt)
}

// NodePort returns a fresh node port.
func (e *Env) NodePort() int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nextNP++
	// Far from the apiserver's own allocations, which start low in 30000-32767.
	return int32(32700 - e.nextNP)
}

// Programmed waits until every proxy finished a sync of every family that ended after
// since; take since before writing the objects the scenario depends on. (The sync
// timestamp metric is per family: a sum over families would always pass.)
func (e *Env) Programmed(t *testing.T, since time.Time) {
	t.Helper()
	sec := float64(since.UnixNano()) / 1e9
	for _, p := range e.Proxies {
		for _, fam := range []string{"IPv4", "IPv6"} {
			p.WaitMetric(t, "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
				func(v float64) bool { return v >= sec }, "ip_family", fam)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
