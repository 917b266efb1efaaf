package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// examples are the objects of manifests/examples/, decoded with the Kubernetes scheme.
type examples struct {
	Namespaces []*v1.Namespace
	Services   []*v1.Service
	Slices     []*discovery.EndpointSlice
	Files      []string // base names, in read order
}

// loadExamples decodes every *.yaml in dir (in name order, as kubectl apply -f would).
func loadExamples(dir string) (*examples, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no *.yaml in %s", dir)
	}
	sort.Strings(paths)
	ex := &examples{}
	for _, p := range paths {
		if err := ex.readFile(p); err != nil {
			return nil, err
		}
		ex.Files = append(ex.Files, filepath.Base(p))
	}
	return ex, nil
}

func (ex *examples) readFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	decode := scheme.Codecs.UniversalDeserializer().Decode
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if onlyComments(doc) {
			continue
		}
		obj, _, err := decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("decode %s document %d: %w", path, i, err)
		}
		if err := ex.add(obj); err != nil {
			return fmt.Errorf("%s document %d: %w", path, i, err)
		}
	}
}

func (ex *examples) add(obj runtime.Object) error {
	switch o := obj.(type) {
	case *v1.Namespace:
		ex.Namespaces = append(ex.Namespaces, o)
	case *v1.Service:
		ex.Services = append(ex.Services, o)
	case *discovery.EndpointSlice:
		ex.Slices = append(ex.Slices, o)
	default:
		return fmt.Errorf("the demo does not handle %T", obj)
	}
	return nil
}

func onlyComments(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && string(line) != "---" {
			return false
		}
	}
	return true
}

// podPlan is one pod the examples' endpoints need: its address in the examples and the
// node it is on ("node1").
type podPlan struct {
	Name string
	IP   string
	Node string
}

// plannedPods lists every distinct endpoint address of the slices, ordered by node and
// address, so that the bed (which hands out each node's podCIDR in order) gives the pods
// the examples' addresses when those start at the podCIDR's .2. Names come from the
// endpoint's targetRef, else web-1, web-2, ... as in manifests/examples/README.md.
func (ex *examples) plannedPods() ([]podPlan, error) {
	byIP := map[string]podPlan{}
	for _, s := range ex.Slices {
		for _, ep := range s.Endpoints {
			if ep.NodeName == nil || *ep.NodeName == "" {
				return nil, fmt.Errorf("slice %s/%s: endpoint %v has no nodeName", s.Namespace, s.Name, ep.Addresses)
			}
			for _, a := range ep.Addresses {
				p := podPlan{IP: a, Node: *ep.NodeName}
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
					p.Name = ep.TargetRef.Name
				}
				if old, ok := byIP[a]; ok && old.Node != p.Node {
					return nil, fmt.Errorf("endpoint %s is on %s and on %s", a, old.Node, p.Node)
				}
				if old, ok := byIP[a]; !ok || old.Name == "" {
					byIP[a] = p
				}
			}
		}
	}
	var pods []podPlan
	for _, p := range byIP {
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Node != pods[j].Node {
			return pods[i].Node < pods[j].Node
		}
		return addrLess(pods[i].IP, pods[j].IP)
	})
	for i := range pods {
		if pods[i].Name == "" {
			pods[i].Name = fmt.Sprintf("web-%d", i+1)
		}
	}
	return pods, nil
}

func addrLess(a, b string) bool {
	pa, errA := netip.ParseAddr(a)
	pb, errB := netip.ParseAddr(b)
	if errA != nil || errB != nil {
		return a < b
	}
	return pa.Less(pb)
}

// mapOntoBed rewrites the slices for the bed's cluster: nodeName node1 becomes the bed's
// node name, and an address whose pod got another address from the bed becomes that one.
// It returns one line per kind of change, for the output.
func (ex *examples) mapOntoBed(nodeNames, podIPs map[string]string) ([]string, error) {
	var notes []string
	seen := map[string]bool{}
	note := func(s string) {
		if !seen[s] {
			seen[s] = true
			notes = append(notes, s)
		}
	}
	for _, s := range ex.Slices {
		for i := range s.Endpoints {
			ep := &s.Endpoints[i]
			full, ok := nodeNames[*ep.NodeName]
			if !ok {
				return nil, fmt.Errorf("slice %s/%s: nodeName %q is not a bed node (have %s)",
					s.Namespace, s.Name, *ep.NodeName, strings.Join(keys(nodeNames), ", "))
			}
			if full != *ep.NodeName {
				note(fmt.Sprintf("nodeName %s -> %s", *ep.NodeName, full))
				ep.NodeName = &full
			}
			for j, a := range ep.Addresses {
				if got := podIPs[a]; got != "" && got != a {
					note(fmt.Sprintf("endpoint %s -> %s (the bed's address for that pod)", a, got))
					ep.Addresses[j] = got
				}
			}
		}
	}
	return notes, nil
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
