// Package faults checks that svcproxy keeps traffic flowing and never loses rules when
// things around it break: the apiserver goes away, iptables-restore fails, another
// process holds the xtables lock or flushes our chains, the proxy is SIGKILLed in the
// middle of a sync, or the apiserver hands it objects that are valid to the API but wrong
// for a proxy.
//
// Every test builds its own bed cluster (one node, one client), runs the real svcproxy
// binary in the node namespace and sends real packets. Tests run one at a time: proxies
// of every cluster see every Service of the shared apiserver. The mode is iptables on the
// host; inside the qemu VM (whose kernel has IPVS) e2e/vmdatapath runs the package again
// with SVCPROXY_FAULTS_MODE=ipvs.
package faults

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/svcproxy/svcproxy/proxier"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

const (
	// syncPeriod is the sync period (syncPeriodArg) of the proxies whose periodic work a test
	// watches; the proxy reports unhealthy after 2 × syncPeriod of a pending change.
	syncPeriod = 3 * time.Second
	// answerTimeout bounds waits for a freshly programmed service to answer.
	answerTimeout = 30 * time.Second
	// loadRate is requests per second per target of a load.
	loadRate = 20
	// loadMax bounds every load, whatever the test does.
	loadMax = 5 * time.Minute
)

// env is one test's cluster: one node running svcproxy, one client on the shared link
// that routes the service CIDR via the node, and two echo pods on the node.
type env struct {
	api    *bed.APIServer
	c      *bed.Cluster
	node   *bed.Node
	client *bed.Client
	pods   []*bed.Pod
}

func newEnv(t *testing.T, api *bed.APIServer) *env {
	t.Helper()
	c := bed.NewCluster(t, bed.ClusterOptions{API: api, Nodes: 1, Clients: 1})
	e := &env{api: api, c: c, node: c.Nodes[0], client: c.Clients[0]}
	if err := e.client.RouteVia("198.51.100.0/24", e.node); err != nil {
		t.Fatalf("route service CIDR via node1: %v", err)
	}
	e.pods = []*bed.Pod{c.AddPod(t, e.node, "pod1"), c.AddPod(t, e.node, "pod2")}
	return e
}

// proxyArgs are the flags of every proxy here, in the package's mode; extra ones are
// appended.
func proxyArgs(extra ...string) []string {
	m := proxyMode()
	return append([]string{"--proxy-mode=" + m, "--" + m + "-min-sync-period=200ms"}, extra...)
}

// syncPeriodArg sets the mode's sync period to syncPeriod.
func syncPeriodArg() string { return "--" + proxyMode() + "-sync-period=" + syncPeriod.String() }

// web returns a Service "name" on clusterIP port 80 (targetPort 8080, NodePort when
// nodePort is not 0; -1 lets the apiserver pick) and its slice with pods as endpoints.
func (e *env) web(name, clusterIP string, nodePort int32, pods ...*bed.Pod) (*v1.Service, *discovery.EndpointSlice) {
	opts := []bed.ServiceOption{bed.Port("http", 80, "TCP", 8080)}
	if clusterIP != "" {
		opts = append(opts, bed.ClusterIP(clusterIP))
	}
	if nodePort > 0 {
		opts = append(opts, bed.NodePort(nodePort))
	} else if nodePort < 0 {
		opts = append(opts, bed.NodePort(0))
	}
	svc := bed.Service(e.c.Key(name), opts...)
	sliceOpts := []bed.SliceOption{bed.SlicePort("http", 8080, "TCP")}
	for _, p := range pods {
		sliceOpts = append(sliceOpts, bed.Endpoint(p.IP.String(), bed.OnNode(p.Node.Name)))
	}
	return svc, bed.EndpointSlice(e.c.Key(name+"-1"), name, sliceOpts...)
}

// waitAnswer polls target from the client until a pod answers.
func (e *env) waitAnswer(t *testing.T, target string, timeout time.Duration) {
	t.Helper()
	bed.Eventually(t, timeout, "answer from "+target, func() (bool, string) {
		a, err := e.client.NS.HTTPGet(target, time.Second)
		if err != nil {
			return false, err.Error()
		}
		return true, a.Pod
	})
}

func addr(ip string, port int32) string { return net.JoinHostPort(ip, strconv.Itoa(int(port))) }

// failure is one failed request of a load.
type failure struct {
	at     time.Time
	target string
	err    string
}

// load sends loadRate requests per second to each target from a namespace, each on a
// new connection, until Stop (or loadMax).
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	ok   map[string]int
	fail []failure
}

func startLoad(t *testing.T, ns *bed.Namespace, targets ...string) *load {
	l := &load{stop: make(chan struct{}), ok: map[string]int{}}
	for _, target := range targets {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(time.Second / loadRate)
			defer tick.Stop()
			deadline := time.After(loadMax)
			for {
				select {
				case <-l.stop:
					return
				case <-deadline:
					return
				case <-tick.C:
				}
				_, err := ns.HTTPGet(target, 2*time.Second)
				l.mu.Lock()
				if err != nil {
					l.fail = append(l.fail, failure{time.Now(), target, err.Error()})
				} else {
					l.ok[target]++
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// Stop ends the load and fails the test on any failed request or a target that never
// answered.
func (l *load) Stop(t *testing.T) {
	t.Helper()
	l.halt()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("load: answers %v, failures %d", l.ok, len(l.fail))
	for i, f := range l.fail {
		if i == 10 {
			t.Errorf("... %d more failures", len(l.fail)-10)
			break
		}
		t.Errorf("request to %s failed at %s: %s", f.target, f.at.Format("15:04:05.000"), f.err)
	}
	for target, n := range l.ok {
		if n == 0 {
			t.Errorf("no answer at all from %s", target)
		}
	}
}

// metric returns the sum of a metric's samples with the given labels (0 when absent).
func metric(t *testing.T, p *bed.Proxy, name string, labels ...string) float64 {
	t.Helper()
	text, err := p.Metrics()
	if err != nil {
		t.Fatalf("metrics of %s: %v", p.Node.Short, err)
	}
	v, _ := bed.MetricValue(text, name, labels...)
	return v
}

// healthzCode returns the /healthz status code, or 0 when it does not answer.
func healthzCode(p *bed.Proxy) (int, string) {
	h, err := p.Healthz()
	if err != nil && h.Code == 0 {
		return 0, err.Error()
	}
	return h.Code, h.Body
}

// waitUnhealthy waits (bounded) for /healthz 503 while a change made at changed cannot
// be programmed, and fails when it came before 2 × syncPeriod, which is when the
// proxy may first call itself stale.
func waitUnhealthy(t *testing.T, p *bed.Proxy, changed time.Time, why string) {
	t.Helper()
	// Allow retries a few periods past the 2 × syncPeriod.
	var after time.Duration
	bed.Eventually(t, 2*syncPeriod+5*syncPeriod, "healthz 503 while "+why, func() (bool, string) {
		code, body := healthzCode(p)
		after = time.Since(changed)
		return code == 503, fmt.Sprintf("%d %s", code, body)
	})
	t.Logf("healthz 503 %v after the change", after.Round(100*time.Millisecond))
	if after < 2*syncPeriod {
		t.Errorf("healthz 503 only %v after the change, before 2 × sync period (%v)", after, 2*syncPeriod)
	}
}

// waitHealthyAgain waits (bounded) for /healthz 200 once the fault is gone.
func waitHealthyAgain(t *testing.T, p *bed.Proxy, why string) {
	t.Helper()
	bed.Eventually(t, answerTimeout, "healthz 200 "+why, func() (bool, string) {
		code, body := healthzCode(p)
		return code == 200, fmt.Sprintf("%d %s", code, body)
	})
}

// requireSameProcess fails when the proxy exited or was replaced since pid was taken.
func requireSameProcess(t *testing.T, p *bed.Proxy, pid int) {
	t.Helper()
	if !p.Running() {
		t.Fatalf("proxy on %s exited\n%s", p.Node.Short, tail(p.Log(), 40))
	}
	if got := p.PID(); got != pid {
		t.Fatalf("proxy on %s restarted: pid %d, was %d", p.Node.Short, got, pid)
	}
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// invalidValueEvents lists the Warning events svcproxy recorded on an object.
func invalidValueEvents(t *testing.T, api *bed.APIServer, namespace, kind, name string) []v1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sel := fields.Set{"involvedObject.kind": kind, "involvedObject.name": name, "reason": proxier.ReasonInvalidValue}
	list, err := api.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		t.Fatalf("list events of %s %s/%s: %v", kind, namespace, name, err)
	}
	return list.Items
}

// saveNormalized returns iptables-save of the nat and filter tables in the node with
// counters zeroed and comments and chains sorted, so two rulesets with the same rules
// compare equal whatever order the chains were created in. Rules keep their order
// within each chain: it matters.
func saveNormalized(t *testing.T, n *bed.Node, tool string) string {
	t.Helper()
	var out strings.Builder
	for _, table := range []string{"nat", "filter"} {
		text, err := n.NS.Exec(tool, "-t", table)
		if err != nil {
			t.Fatalf("%s -t %s: %v", tool, table, err)
		}
		var decls []string
		rules := map[string][]string{}
		for _, line := range strings.Split(text, "\n") {
			switch {
			case strings.HasPrefix(line, ":"):
				name, _, _ := strings.Cut(line[1:], " ")
				policy := strings.Fields(line)[1]
				decls = append(decls, ":"+name+" "+policy)
			case strings.HasPrefix(line, "-A "):
				chain := strings.Fields(line)[1]
				rules[chain] = append(rules[chain], line)
			}
		}
		sort.Strings(decls)
		fmt.Fprintf(&out, "*%s\n", table)
		for _, d := range decls {
			out.WriteString(d + "\n")
		}
		chains := make([]string, 0, len(rules))
		for c := range rules {
			chains = append(chains, c)
		}
		sort.Strings(chains)
		for _, c := range chains {
			out.WriteString(strings.Join(rules[c], "\n") + "\n")
		}
		out.WriteString("COMMIT\n")
	}
	return out.String()
}

// firstDiff describes where two texts differ first, line by line.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  got:  %q\n  want: %q", i+1, x, y)
		}
	}
	return "no difference"
}
