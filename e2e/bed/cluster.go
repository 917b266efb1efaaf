package bed

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterOptions shapes NewCluster.
type ClusterOptions struct {
	Nodes       int        // node namespaces: 2 when 0, at most 3
	Clients     int        // client namespaces on the shared link: 1 when 0
	IPv6        bool       // add the IPv6 addresses and routes of the address plan
	ExternalVia int        // index of the node clients route 203.0.113.192/26 (2001:db8:6::/64) via
	Zones       []string   // topology.kubernetes.io/zone label per node, when set
	API         *APIServer // when set: Node objects, a Kubernetes namespace, API forwarders
}

// Cluster is a set of namespaces wired like a small cluster:
//
//	client(s) ──┐
//	node1 ──────┼── br0 in the bridge namespace (192.0.2.1, gateway of last resort)
//	node2 ──────┘
//	pods ── veth ── their node (proxy_arp, /32 host routes)
type Cluster struct {
	Prefix    string // unique prefix of every namespace name, e.g. "svp-3fa2"
	Namespace string // Kubernetes namespace for this cluster's objects (= Prefix)
	Bridge    *Namespace
	Nodes     []*Node
	Pods      []*Pod
	Clients   []*Client
	API       *APIServer
	opts      ClusterOptions
	closers   []io.Closer
}

// Node is a node namespace; Name is both the netns name and the Node object's name.
type Node struct {
	Name      string
	Short     string // "node1"
	NS        *Namespace
	IP        net.IP // 192.0.2.11, 192.0.2.12, ...
	IPv6      net.IP // 2001:db8:2::11, ... (IPv6 clusters)
	PodCIDR   *net.IPNet
	PodCIDRv6 *net.IPNet
	Zone      string
	Object    *v1.Node // as stored in the apiserver (API clusters)
	index     int
	pods      int
	api       *forwarder // the node's way to the apiserver (API clusters)
}

// CutAPI makes the apiserver unreachable from the node, as an outage looks from there:
// open watches break and new connections are refused. It works for the bed's own
// apiserver and for an external one (inside the VM), and the apiserver itself stays up
// for the test's own client.
func (n *Node) CutAPI(t testing.TB) {
	t.Helper()
	if n.api == nil {
		t.Fatalf("%s has no apiserver link (cluster without API)", n.Name)
	}
	n.api.Cut()
}

// RestoreAPI ends CutAPI.
func (n *Node) RestoreAPI(t testing.TB) {
	t.Helper()
	if n.api == nil {
		t.Fatalf("%s has no apiserver link (cluster without API)", n.Name)
	}
	if err := n.api.Resume(); err != nil {
		t.Fatalf("restore the apiserver link of %s: %v", n.Name, err)
	}
}

// Pod is a pod namespace attached to its node, running an echo server.
type Pod struct {
	Name  string
	Node  *Node
	NS    *Namespace
	IP    net.IP
	IPv6  net.IP
	Ports []int
	echo  *echoServer
}

// Client is a namespace on the shared link, outside the cluster.
type Client struct {
	Name string
	NS   *Namespace
	IP   net.IP
	IPv6 net.IP
}

// NewCluster builds the topology; everything is removed in t.Cleanup, even on failure.
func NewCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Clients == 0 {
		opts.Clients = 1
	}
	if opts.Nodes > 3 {
		t.Fatalf("bed: at most 3 nodes fit the address plan, asked for %d", opts.Nodes)
	}
	c := &Cluster{Prefix: "svp-" + randomHex(3), API: opts.API, opts: opts}
	c.Namespace = c.Prefix
	t.Cleanup(func() { c.teardown(t) })
	if err := c.build(); err != nil {
		t.Fatalf("bed: build cluster %s: %v", c.Prefix, err)
	}
	for i := 0; i < opts.Clients; i++ {
		c.AddClient(t, fmt.Sprintf("client%d", i+1))
	}
	return c
}

// Key returns "<cluster namespace>/name" for the object builders.
func (c *Cluster) Key(name string) string { return c.Namespace + "/" + name }

// Node returns the node with the given short name ("node1").
func (c *Cluster) Node(short string) *Node {
	for _, n := range c.Nodes {
		if n.Short == short {
			return n
		}
	}
	return nil
}

func (c *Cluster) build() error {
	var err error
	if c.Bridge, err = newNamespace(c.Prefix + "-br"); err != nil {
		return err
	}
	if err := c.buildBridge(); err != nil {
		return err
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		n, err := c.addNode(i)
		if err != nil {
			return fmt.Errorf("node%d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.routePodCIDRs(); err != nil {
		return err
	}
	if c.API != nil {
		return c.registerWithAPI()
	}
	return nil
}

func (c *Cluster) buildBridge() error {
	if err := baseSysctls(c.Bridge, false); err != nil {
		return err
	}
	h, err := c.Bridge.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add br0: %w", err)
	}
	addrs := []string{"192.0.2.1/24"}
	if c.opts.IPv6 {
		addrs = append(addrs, "2001:db8:2::1/64")
	}
	return setUpWithAddrs(h, br, addrs)
}

// linkToBridge creates a veth with end `name` on br0 and end eth0 in ns.
func (c *Cluster) linkToBridge(ns *Namespace, name string) error {
	h, err := c.Bridge.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns.handle))}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/eth0: %w", name, err)
	}
	br, err := h.LinkByName("br0")
	if err != nil {
		return fmt.Errorf("find br0: %w", err)
	}
	if err := h.LinkSetMaster(veth, br); err != nil {
		return fmt.Errorf("attach %s to br0: %w", name, err)
	}
	if err := h.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func (c *Cluster) addNode(i int) (*Node, error) {
	n := &Node{Short: fmt.Sprintf("node%d", i), index: i}
	n.Name = c.Prefix + "-" + n.Short
	n.IP = net.ParseIP(fmt.Sprintf("192.0.2.%d", 10+i))
	_, n.PodCIDR, _ = net.ParseCIDR(fmt.Sprintf("203.0.113.%d/26", 64*(i-1)))
	if c.opts.IPv6 {
		n.IPv6 = net.ParseIP(fmt.Sprintf("2001:db8:2::%d", 10+i))
		_, n.PodCIDRv6, _ = net.ParseCIDR(fmt.Sprintf("2001:db8:1:0:%d::/80", i))
	}
	if i-1 < len(c.opts.Zones) {
		n.Zone = c.opts.Zones[i-1]
	}
	var err error
	if n.NS, err = newNamespace(n.Name); err != nil {
		return nil, err
	}
	if err := baseSysctls(n.NS, c.opts.IPv6); err != nil {
		return nil, err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		// Redirects would use up the per-host ICMP budget and hide REJECTs.
		{"net.ipv4.conf.all.send_redirects", "0"},
		{"net.ipv4.conf.default.send_redirects", "0"},
		{"net.ipv4.icmp_ratelimit", "0"},
	} {
		if err := n.NS.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	if c.opts.IPv6 {
		for _, kv := range [][2]string{{"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv6.icmp.ratelimit", "0"}} {
			if err := n.NS.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
	}
	if err := c.linkToBridge(n.NS, fmt.Sprintf("n%d", i)); err != nil {
		return nil, err
	}
	addrs := []string{n.IP.String() + "/24"}
	if c.opts.IPv6 {
		addrs = append(addrs, n.IPv6.String()+"/64")
	}
	// Without a default route, packets to a Service with no endpoints are dropped by
	// routing before the filter table's REJECT can answer them.
	if err := c.configureLink(n.NS, addrs, "192.0.2.1", "2001:db8:2::1"); err != nil {
		return nil, err
	}
	if err := c.waitLinkUp(n.NS, fmt.Sprintf("n%d", i)); err != nil {
		return nil, err
	}
	if c.API != nil {
		port := c.API.Port
		f, err := startForwarder(n.NS, port, c.API.forwardTarget())
		if err != nil {
			return nil, err
		}
		c.closers = append(c.closers, f)
		n.api = f
	}
	return n, nil
}

// configureLink puts addresses on eth0 in ns, sets it up and adds default routes.
func (c *Cluster) configureLink(ns *Namespace, addrs []string, gw4, gw6 string) error {
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", ns.Name, err)
	}
	if err := setUpWithAddrs(h, eth0, addrs); err != nil {
		return err
	}
	if gw4 != "" {
		if err := addRoute(h, eth0, "0.0.0.0/0", gw4); err != nil {
			return err
		}
	}
	if gw6 != "" && c.opts.IPv6 {
		if err := addRoute(h, eth0, "::/0", gw6); err != nil {
			return err
		}
	}
	return nil
}

// waitLinkUp waits for eth0 in ns and its bridge port to be operationally up.
func (c *Cluster) waitLinkUp(ns *Namespace, port string) error {
	for _, side := range []struct {
		ns   *Namespace
		name string
	}{{c.Bridge, port}, {ns, "eth0"}} {
		h, err := side.ns.Netlink()
		if err != nil {
			return err
		}
		err = waitOperUp(h, side.name)
		h.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// routePodCIDRs lets pods on different nodes reach each other: each node routes the other
// nodes' podCIDRs via their node IPs.
func (c *Cluster) routePodCIDRs() error {
	for _, n := range c.Nodes {
		h, err := n.NS.Netlink()
		if err != nil {
			return err
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			h.Close()
			return fmt.Errorf("find eth0 in %s: %w", n.Name, err)
		}
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			if err := addRoute(h, eth0, o.PodCIDR.String(), o.IP.String()); err != nil {
				h.Close()
				return err
			}
			if c.opts.IPv6 {
				if err := addRoute(h, eth0, o.PodCIDRv6.String(), o.IPv6.String()); err != nil {
					h.Close()
					return err
				}
			}
		}
		h.Close()
	}
	return nil
}

func (c *Cluster) registerWithAPI() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ensureNamespace(ctx, c.API.Client, c.Namespace); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		addrs := []string{n.IP.String()}
		cidrs := []string{n.PodCIDR.String()}
		if c.opts.IPv6 {
			addrs = append(addrs, n.IPv6.String())
			cidrs = append(cidrs, n.PodCIDRv6.String())
		}
		labels := map[string]string{}
		if n.Zone != "" {
			labels[v1.LabelTopologyZone] = n.Zone
		}
		n.Object = NodeObject(n.Name, addrs, cidrs, labels)
		if err := Apply(c.API.Client, n.Object); err != nil {
			return err
		}
	}
	return nil
}

// AddClient adds a client namespace on the shared link (192.0.2.101, .102, ...), routing
// the external range via node ExternalVia.
func (c *Cluster) AddClient(t testing.TB, name string) *Client {
	t.Helper()
	i := len(c.Clients) + 1
	cl := &Client{Name: name, IP: net.ParseIP(fmt.Sprintf("192.0.2.%d", 100+i))}
	if c.opts.IPv6 {
		cl.IPv6 = net.ParseIP(fmt.Sprintf("2001:db8:2::%d", 100+i))
	}
	err := func() error {
		var err error
		if cl.NS, err = newNamespace(c.Prefix + "-" + name); err != nil {
			return err
		}
		c.Clients = append(c.Clients, cl)
		if err := baseSysctls(cl.NS, c.opts.IPv6); err != nil {
			return err
		}
		if err := c.linkToBridge(cl.NS, fmt.Sprintf("c%d", i)); err != nil {
			return err
		}
		addrs := []string{cl.IP.String() + "/24"}
		if c.opts.IPv6 {
			addrs = append(addrs, cl.IPv6.String()+"/64")
		}
		if err := c.configureLink(cl.NS, addrs, "", ""); err != nil {
			return err
		}
		if err := c.waitLinkUp(cl.NS, fmt.Sprintf("c%d", i)); err != nil {
			return err
		}
		via := c.Nodes[c.opts.ExternalVia]
		if err := cl.RouteVia("203.0.113.192/26", via); err != nil {
			return err
		}
		if c.opts.IPv6 {
			return cl.RouteVia("2001:db8:6::/64", via)
		}
		return nil
	}()
	if err != nil {
		t.Fatalf("bed: add client %s: %v", name, err)
	}
	return cl
}

// RouteVia routes cidr from the client via node's address of the same family (replacing
// an existing route), e.g. the service CIDR or the external range via another node.
func (cl *Client) RouteVia(cidr string, node *Node) error {
	h, err := cl.NS.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", cl.NS.Name, err)
	}
	gw := node.IP.String()
	if strings.Contains(cidr, ":") {
		gw = node.IPv6.String()
	}
	return addRoute(h, eth0, cidr, gw)
}

// AddPod adds pod `name` on node with an echo server on ports (8080 when none): HTTP on
// each TCP port and a datagram echo on the same UDP ports.
func (c *Cluster) AddPod(t testing.TB, node *Node, name string, ports ...int) *Pod {
	t.Helper()
	if len(ports) == 0 {
		ports = []int{8080}
	}
	p := &Pod{Name: name, Node: node, Ports: ports}
	p.IP = nthIP(node.PodCIDR, 2+node.pods)
	if c.opts.IPv6 {
		p.IPv6 = nthIP(node.PodCIDRv6, 2+node.pods)
	}
	vethName := fmt.Sprintf("vp%d", node.pods)
	node.pods++
	err := func() error {
		var err error
		if p.NS, err = newNamespace(c.Prefix + "-" + name); err != nil {
			return err
		}
		c.Pods = append(c.Pods, p)
		if err := baseSysctls(p.NS, c.opts.IPv6); err != nil {
			return err
		}
		if err := c.wirePod(p, vethName); err != nil {
			return err
		}
		p.echo, err = startEcho(p.NS, name, ports)
		return err
	}()
	if err != nil {
		t.Fatalf("bed: add pod %s: %v", name, err)
	}
	return p
}

// wirePod links the pod to its node. The pod has /32 (/128) addresses and a default route
// out of eth0; the node answers its ARP by proxy_arp (IPv6: a fe80::1 gateway) and routes
// the pod's addresses to the veth.
func (c *Cluster) wirePod(p *Pod, vethName string) error {
	nh, err := p.Node.NS.Netlink()
	if err != nil {
		return err
	}
	defer nh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethName}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.NS.handle))}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", vethName, err)
	}
	if err := p.Node.NS.Sysctl("net.ipv4.conf."+vethName+".proxy_arp", "1"); err != nil {
		return err
	}
	// Proxy ARP answers to broadcasts are otherwise delayed by up to 0.8 s.
	if err := p.Node.NS.Sysctl("net.ipv4.neigh."+vethName+".proxy_delay", "0"); err != nil {
		return err
	}
	var nodeAddrs []string
	if c.opts.IPv6 {
		nodeAddrs = []string{"fe80::1/64"}
	}
	if err := setUpWithAddrs(nh, veth, nodeAddrs); err != nil {
		return err
	}
	if err := addRoute(nh, veth, p.IP.String()+"/32", ""); err != nil {
		return err
	}
	if c.opts.IPv6 {
		if err := addRoute(nh, veth, p.IPv6.String()+"/128", ""); err != nil {
			return err
		}
	}

	ph, err := p.NS.Netlink()
	if err != nil {
		return err
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", p.NS.Name, err)
	}
	addrs := []string{p.IP.String() + "/32"}
	if c.opts.IPv6 {
		addrs = append(addrs, p.IPv6.String()+"/128")
	}
	if err := setUpWithAddrs(ph, eth0, addrs); err != nil {
		return err
	}
	if err := addRoute(ph, eth0, "0.0.0.0/0", ""); err != nil {
		return err
	}
	if c.opts.IPv6 {
		if err := addRoute(ph, eth0, "::/0", "fe80::1"); err != nil {
			return err
		}
	}
	if err := waitOperUp(nh, vethName); err != nil {
		return err
	}
	return waitOperUp(ph, "eth0")
}

// teardown stops the echo servers and forwarders (their sockets pin the namespaces),
// deletes the cluster's API objects, then the namespaces.
func (c *Cluster) teardown(t testing.TB) {
	for _, p := range c.Pods {
		if p.echo != nil {
			p.echo.Close()
		}
	}
	for _, cl := range c.closers {
		cl.Close()
	}
	if c.API != nil {
		if err := c.deleteAPIObjects(); err != nil {
			t.Errorf("bed: %v", err)
		}
	}
	var all []*Namespace
	for _, p := range c.Pods {
		all = append(all, p.NS)
	}
	for _, cl := range c.Clients {
		all = append(all, cl.NS)
	}
	for _, n := range c.Nodes {
		all = append(all, n.NS)
	}
	all = append(all, c.Bridge)
	for _, ns := range all {
		if ns == nil {
			continue
		}
		if err := ns.delete(); err != nil {
			t.Errorf("bed: %v", err)
		}
	}
}

func (c *Cluster) deleteAPIObjects() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := c.API.Client
	if err := cs.DiscoveryV1().EndpointSlices(c.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete endpointslices in %s: %w", c.Namespace, err)
	}
	svcs, err := cs.CoreV1().Services(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list services in %s: %w", c.Namespace, err)
	}
	for i := range svcs.Items {
		if err := Delete(cs, &svcs.Items[i]); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if n.Object != nil {
			if err := Delete(cs, n.Object); err != nil {
				return err
			}
		}
	}
	// Without a namespace controller the namespace stays Terminating; it is empty.
	return Delete(cs, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.Namespace}})
}

// baseSysctls makes the namespace independent of the root's inherited defaults.
func baseSysctls(ns *Namespace, ipv6 bool) error {
	for _, key := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
		if err := ns.Sysctl(key, "0"); err != nil {
			return err
		}
	}
	if ipv6 {
		// Duplicate address detection would hold addresses "tentative" for a second or two.
		for _, key := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
			if err := ns.Sysctl(key, "0"); err != nil {
				return err
			}
		}
	}
	return nil
}

// LeftoverNamespaces lists named namespaces whose names start with prefix.
func LeftoverNamespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			left = append(left, e.Name())
		}
	}
	return left, nil
}
