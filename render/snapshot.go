// Package render shows what svcproxy would program for a set of Services,
// EndpointSlices and (optionally) a Node read from YAML, without a cluster
// or a kernel: the objects go through the same tracker as the live proxy's
// informers feed, and the resulting Snapshot through the data plane's own
// builder. See README.md.
package render

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

// Config is the node and the proxy settings to render for.
type Config struct {
	Family v1.IPFamily
	// NodeName decides which endpoints are local; "" picks the one Node
	// among the objects, if there is exactly one.
	NodeName string
	// NodeIP, when valid, is the node's primary IP (like --bind-address);
	// a Node object adds its InternalIPs and ExternalIPs after it.
	NodeIP netip.Addr
	// ClusterCIDRs select --detect-local-mode=ClusterCIDR; none detects
	// nothing.
	ClusterCIDRs  []netip.Prefix
	MasqueradeAll bool
	// IPVSScheduler is --ipvs-scheduler ("" is rr).
	IPVSScheduler string
}

// Snapshot feeds objs to a tracker, as the informers feed the live proxy,
// and returns the snapshot of cfg.Family with the problems the tracker
// found in the objects' values (bad IPs, ports, ...).
func Snapshot(objs *Objects, cfg Config) (*proxier.Snapshot, []Problem) {
	rec := &recorder{}
	families := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	nodeName, node := pickNode(objs, cfg.NodeName)
	tr := proxier.NewTracker(nodeName, families, rec, clock.RealClock{})
	for _, svc := range objs.Services {
		tr.UpdateService(nil, svc)
	}
	for _, s := range objs.Slices {
		tr.UpdateEndpointSlice(nil, s)
	}
	n := proxier.NewNode(nodeName, node, cfg.Family, cfg.NodeIP)
	// A render is of a node that exists and takes traffic.
	n.Eligible = node == nil || n.Eligible
	tr.SetNode(cfg.Family, n)
	return tr.Snapshot(cfg.Family), rec.problems
}

func pickNode(objs *Objects, name string) (string, *v1.Node) {
	if name == "" && len(objs.Nodes) == 1 {
		return objs.Nodes[0].Name, objs.Nodes[0]
	}
	for _, n := range objs.Nodes {
		if n.Name == name {
			return name, n
		}
	}
	return name, nil
}

// LocalDetector is the --detect-local-mode the config implies.
func (c Config) LocalDetector() (iptables.LocalDetector, error) {
	if len(c.ClusterCIDRs) == 0 {
		return iptables.NoOpLocalDetector(), nil
	}
	d, err := iptables.NewLocalDetector(c.Family, iptables.LocalDetectorConfig{
		Mode: iptables.DetectLocalMode("ClusterCIDR"), ClusterCIDRs: c.ClusterCIDRs,
	})
	if err != nil {
		return iptables.LocalDetector{}, fmt.Errorf("cluster CIDR: %w", err)
	}
	return d, nil
}

// recorder collects the tracker's Warning events as Problems.
type recorder struct{ problems []Problem }

func (r *recorder) Event(obj runtime.Object, _, _, message string) {
	p := Problem{Reason: strings.TrimPrefix(message, "svcproxy is ")}
	switch obj.(type) {
	case *v1.Service:
		p.Kind = "Service"
	default:
		p.Kind = "EndpointSlice"
	}
	if m, err := meta.Accessor(obj); err == nil {
		p.Namespace, p.Name = m.GetNamespace(), m.GetName()
	}
	r.problems = append(r.problems, p)
}

func (r *recorder) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	r.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}

func (r *recorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	r.Eventf(obj, typ, reason, format, args...)
}

// SortProblems orders problems by kind, namespace, name, so the report
// does not depend on map order inside the tracker.
func SortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}
