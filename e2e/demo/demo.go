package main

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// config is one demo run.
type config struct {
	Mode      string // svcproxy --proxy-mode: iptables or ipvs
	Manifests string // directory of the example Services and EndpointSlices
	Svcproxy  string // svcproxy binary; empty: bed.ProxyBinary builds one
	Requests  int    // requests per answered row
	Progress  func(format string, args ...any)
}

const (
	// unansweredTries are the attempts on a path that must not answer (each waits for
	// bed.RequestTimeout), fewer than Requests to keep the demo short.
	unansweredTries = 3
	// firstAnswerTimeout bounds the wait until a path answers at all (the proxies may
	// still be writing their first rules).
	firstAnswerTimeout = 30 * time.Second
	proxyStartTimeout  = 60 * time.Second
	healthCheckTimeout = 10 * time.Second
)

// demoRun is the state of one run: the bed cluster and who is who in it.
type demoRun struct {
	cfg     config
	c       *bed.Cluster
	ex      *examples
	pods    map[string]*bed.Pod // by name
	toolbox *bed.Pod            // the in-cluster client for ClusterIPs
	client  *bed.Client         // outside the cluster, on the nodes' link
	proxies []*bed.Proxy
	names   map[string]string // IP -> "web-1", "client1", "node1"
}

// run sets up the bed cluster from the examples, runs svcproxy on both nodes, sends the
// requests and returns what happened. Failures to set up end the run through t.Fatalf;
// unexpected answers are recorded in the report (report.problems).
func run(t testing.TB, api *bed.APIServer, cfg config) *report {
	t.Helper()
	d := &demoRun{cfg: cfg, pods: map[string]*bed.Pod{}, names: map[string]string{}}
	var err error
	if d.ex, err = loadExamples(cfg.Manifests); err != nil {
		t.Fatalf("examples: %v", err)
	}
	rep := &report{Mode: cfg.Mode, Requests: cfg.Requests}
	d.setUp(t, api, rep)
	d.startProxies(t)
	cfg.Progress("sending requests")
	for _, r := range d.rows() {
		t.Helper() // a commandTB stops an interrupted run here
		d.measure(&r)
		rep.Rows = append(rep.Rows, r)
	}
	d.health(rep)
	return rep
}

func (d *demoRun) setUp(t testing.TB, api *bed.APIServer, rep *report) {
	t.Helper()
	plan, err := d.ex.plannedPods()
	if err != nil {
		t.Fatalf("examples: %v", err)
	}
	d.cfg.Progress("creating network namespaces: 2 nodes, a client, %d pods", len(plan)+1)
	d.c = bed.NewCluster(t, bed.ClusterOptions{API: api, Nodes: 2, Clients: 1})
	d.client = d.c.Clients[0]
	d.names[d.client.IP.String()] = d.client.Name
	nodeNames := map[string]string{}
	for _, n := range d.c.Nodes {
		nodeNames[n.Short], nodeNames[n.Name] = n.Name, n.Name
		d.names[n.IP.String()] = n.Short
		rep.Setup = append(rep.Setup, fmt.Sprintf("node   %-8s %-15s podCIDR %s", n.Short, n.IP, n.PodCIDR))
	}
	podIPs := map[string]string{}
	ports := d.ex.podPorts()
	for _, p := range plan {
		node := d.nodeNamed(nodeNames[p.Node])
		if node == nil {
			t.Fatalf("examples: pod %s at %s is on %q, which is not a bed node", p.Name, p.IP, p.Node)
		}
		pod := d.c.AddPod(t, node, p.Name, ports...)
		d.addPod(pod, rep)
		podIPs[p.IP] = pod.IP.String()
	}
	// ClusterIPs are reachable from inside the cluster only: this pod asks them.
	d.toolbox = d.c.AddPod(t, d.c.Nodes[0], "toolbox")
	d.addPod(d.toolbox, rep)
	rep.Setup = append(rep.Setup, fmt.Sprintf("client %-8s %-15s outside the cluster, on the nodes' link", d.client.Name, d.client.IP))

	notes, err := d.ex.mapOntoBed(nodeNames, podIPs)
	if err != nil {
		t.Fatalf("examples: %v", err)
	}
	rep.Mapped = notes
	if !strings.Contains(strings.Join(notes, " "), "endpoint ") {
		rep.Mapped = append(rep.Mapped, "pod addresses as in the examples")
	}
	d.cfg.Progress("applying %s from %s", strings.Join(d.ex.Files, ", "), d.cfg.Manifests)
	var objs []runtime.Object
	for _, o := range d.ex.Namespaces {
		objs = append(objs, o)
	}
	for _, o := range d.ex.Services {
		objs = append(objs, o)
	}
	for _, o := range d.ex.Slices {
		objs = append(objs, o)
	}
	// The namespace stays: without a namespace controller it would hang in Terminating.
	t.Cleanup(func() {
		for i := len(objs) - 1; i >= 0; i-- {
			if _, isNS := objs[i].(*v1.Namespace); !isNS {
				if err := bed.Delete(api.Client, objs[i]); err != nil {
					t.Errorf("%v", err)
					return // the apiserver is gone: the rest would fail alike
				}
			}
		}
	})
	api.Apply(t, objs...)
}

func (d *demoRun) addPod(p *bed.Pod, rep *report) {
	d.pods[p.Name] = p
	d.names[p.IP.String()] = p.Name
	rep.Setup = append(rep.Setup, fmt.Sprintf("pod    %-8s %-15s on %s", p.Name, p.IP, p.Node.Short))
}

func (d *demoRun) nodeNamed(name string) *bed.Node {
	for _, n := range d.c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// podPorts are the endpoint ports of every slice (the echo servers listen on them).
func (ex *examples) podPorts() []int {
	seen := map[int]bool{}
	var ports []int
	for _, s := range ex.Slices {
		for _, p := range s.Ports {
			if p.Port != nil && !seen[int(*p.Port)] {
				seen[int(*p.Port)] = true
				ports = append(ports, int(*p.Port))
			}
		}
	}
	sort.Ints(ports)
	return ports
}

func (d *demoRun) startProxies(t testing.TB) {
	t.Helper()
	d.cfg.Progress("starting svcproxy --proxy-mode=%s on %d nodes", d.cfg.Mode, len(d.c.Nodes))
	for _, n := range d.c.Nodes {
		p := d.c.StartProxyWith(t, n, bed.ProxySpec{Binary: d.cfg.Svcproxy, Args: []string{"--proxy-mode=" + d.cfg.Mode}})
		d.proxies = append(d.proxies, p)
	}
	for _, p := range d.proxies {
		waitProxy(t, p, d.cfg.Mode)
	}
}

// waitProxy waits for healthz 200 and explains a proxy that exited instead.
func waitProxy(t testing.TB, p *bed.Proxy, mode string) {
	t.Helper()
	deadline := time.Now().Add(proxyStartTimeout)
	for {
		t.Helper() // a commandTB stops an interrupted run here
		if !p.Running() {
			log := p.Log()
			if strings.Contains(log, "not wired") {
				t.Fatalf("svcproxy on %s: %s mode is not wired into cmd/svcproxy yet (cmd/svcproxy/ipvs.go): %s",
					p.Node.Short, mode, lastLineWith(log, "not wired"))
			}
			t.Fatalf("svcproxy on %s exited: %s", p.Node.Short, lastLines(log, 15))
		}
		h, err := p.Healthz()
		if err == nil && h.Code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("svcproxy on %s not healthy after %v: %v %s", p.Node.Short, proxyStartTimeout, err, h.Body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func lastLineWith(text, s string) string {
	lines := strings.Split(text, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\n" + strings.Join(lines, "\n")
}

// rows derives the requests from the Services: the ClusterIP from the toolbox pod, and
// for NodePort (and LoadBalancer) Services each node's port from the outside client.
func (d *demoRun) rows() []row {
	svcs := append([]*v1.Service(nil), d.ex.Services...)
	sort.SliceStable(svcs, func(i, j int) bool { return serviceOrder(svcs[i]) < serviceOrder(svcs[j]) })
	var rows []row
	for _, s := range svcs {
		sticky := s.Spec.SessionAffinity == v1.ServiceAffinityClientIP
		local := s.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != v1.ProtocolTCP {
				continue // the echo pods answer HTTP; the examples are all TCP
			}
			base := row{Service: s.Namespace + "/" + s.Name, Sticky: sticky}
			if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != v1.ClusterIPNone {
				r := base
				r.Kind = kindText("ClusterIP", s)
				r.From, r.ns = d.toolbox.Name, d.toolbox.NS
				r.To = net.JoinHostPort(s.Spec.ClusterIP, strconv.Itoa(int(sp.Port)))
				r.Expect = d.endpointPods(s, "")
				r.WantSource = d.toolbox.IP.String()
				rows = append(rows, r)
			}
			if sp.NodePort == 0 {
				continue
			}
			for _, n := range d.c.Nodes {
				r := base
				r.Kind = kindText("NodePort", s)
				r.From, r.ns = d.client.Name, d.client.NS
				r.To = net.JoinHostPort(n.IP.String(), strconv.Itoa(int(sp.NodePort)))
				if local {
					r.Expect = d.endpointPods(s, n.Name)
					r.WantSource = d.client.IP.String() // kept: no masquerade with eTP=Local
				} else {
					r.Expect = d.endpointPods(s, "")
				}
				rows = append(rows, r)
			}
		}
	}
	return rows
}

// serviceOrder puts plain ClusterIP Services first, then node ports, then affinity.
func serviceOrder(s *v1.Service) string {
	rank := "0"
	if s.Spec.Type != v1.ServiceTypeClusterIP {
		rank = "1"
	}
	if s.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		rank = "2"
	}
	return rank + s.Namespace + "/" + s.Name
}

func kindText(kind string, s *v1.Service) string {
	var extra []string
	if kind == "NodePort" && s.Spec.Type == v1.ServiceTypeLoadBalancer {
		kind = "LB NodePort"
	}
	if kind != "ClusterIP" && s.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
		extra = append(extra, "eTP=Local")
	}
	if s.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		extra = append(extra, "ClientIP affinity")
	}
	if len(extra) == 0 {
		return kind
	}
	return kind + ", " + strings.Join(extra, ", ")
}

// endpointPods are the pods behind s's ready endpoints, only those on node when set.
func (d *demoRun) endpointPods(s *v1.Service, node string) []string {
	var pods []string
	for _, sl := range d.ex.Slices {
		if sl.Namespace != s.Namespace || sl.Labels["kubernetes.io/service-name"] != s.Name {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if node != "" && (ep.NodeName == nil || *ep.NodeName != node) {
				continue
			}
			for _, a := range ep.Addresses {
				if name, ok := d.names[a]; ok {
					pods = append(pods, name)
				}
			}
		}
	}
	sort.Strings(pods)
	return pods
}

// measure sends the row's requests: a bounded wait for the first answer, then
// cfg.Requests counted ones; a path that must stay silent gets a few tries only.
func (d *demoRun) measure(r *row) {
	if len(r.Expect) == 0 {
		r.Requests = unansweredTries
		r.Counts = r.ns.CountAnswers(r.To, unansweredTries)
	} else {
		deadline := time.Now().Add(firstAnswerTimeout)
		for {
			_, err := r.ns.HTTPGet(r.To, bed.RequestTimeout)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		r.Requests = d.cfg.Requests
		r.Counts = r.ns.CountAnswers(r.To, d.cfg.Requests)
	}
	r.Problem = r.judge()
	for ip := range r.Counts.Sources {
		if d.names[ip] != "" {
			r.sourceNames = append(r.sourceNames, ip+" ("+d.names[ip]+")")
		} else {
			r.sourceNames = append(r.sourceNames, ip)
		}
	}
	sort.Strings(r.sourceNames)
}

// health reads each node's /healthz and each healthCheckNodePort from the client.
func (d *demoRun) health(rep *report) {
	for _, p := range d.proxies {
		h := healthLine{What: p.Node.Short, URL: "http://" + p.HealthzAddr + "/healthz"}
		st, err := p.Healthz()
		h.Code, h.Body = st.Code, st.Body
		if err != nil && st.Code == 0 {
			h.Err = err.Error()
		}
		// The metrics port says which data plane really runs.
		_, mode, err := p.Node.NS.HTTPGetURL("http://"+p.MetricsAddr+"/proxyMode", bed.RequestTimeout)
		if err != nil {
			mode = "?"
		}
		h.Mode = strings.TrimSpace(mode)
		switch {
		case h.Code != 200:
			h.Problem = "want 200"
		case h.Mode != d.cfg.Mode:
			h.Problem = "/proxyMode says " + h.Mode
		}
		rep.Healthz = append(rep.Healthz, h)
	}
	for _, s := range d.ex.Services {
		if s.Spec.HealthCheckNodePort == 0 {
			continue
		}
		for _, n := range d.c.Nodes {
			addr := net.JoinHostPort(n.IP.String(), strconv.Itoa(int(s.Spec.HealthCheckNodePort)))
			h := healthLine{What: s.Namespace + "/" + s.Name + " via " + n.Short, URL: "http://" + addr + "/"}
			want := 503 // no local endpoint: the load balancer should skip this node
			if len(d.endpointPods(s, n.Name)) > 0 {
				want = 200
			}
			// The health check servers open after the rules are written: poll, bounded.
			deadline := time.Now().Add(healthCheckTimeout)
			for {
				code, body, err := d.client.NS.HTTPGetURL(h.URL, bed.RequestTimeout)
				h.Code, h.Body, h.Err = code, body, ""
				if err != nil {
					h.Err = err.Error()
				}
				if code == want || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if h.Code != want {
				h.Problem = fmt.Sprintf("want %d", want)
			}
			rep.Checks = append(rep.Checks, h)
		}
	}
}
