package render

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Objects are the API objects a data plane is built from.
type Objects struct {
	Services  []*v1.Service
	Slices    []*discovery.EndpointSlice
	Nodes     []*v1.Node
	seenNames map[string]string // "Kind ns/name" → source, to report duplicates
}

// Problem is an object (or a value in one) that was not rendered.
type Problem struct {
	Kind      string
	Namespace string
	Name      string
	// Source is where the object came from: "file.yaml" or "file.yaml#3"
	// (the third YAML document), plus "/items[i]" inside a List.
	Source string
	Reason string
}

func (p Problem) String() string {
	id := p.Kind
	if id == "" {
		id = "object"
	}
	switch {
	case p.Namespace != "" && p.Name != "":
		id += " " + p.Namespace + "/" + p.Name
	case p.Name != "":
		id += " " + p.Name
	}
	if p.Source != "" {
		id += " (" + p.Source + ")"
	}
	return id + ": " + p.Reason
}

// ignoredKinds are well-formed objects a `kubectl get -o yaml` dump often
// holds that mean nothing to a service proxy; they are skipped silently.
var ignoredKinds = []string{
	"Namespace", "Endpoints", "Pod", "Deployment", "ReplicaSet", "DaemonSet", "StatefulSet",
	"Job", "CronJob", "ConfigMap", "Secret", "ServiceAccount", "Ingress", "NetworkPolicy", "Event",
	"PersistentVolumeClaim", "PersistentVolume", "HorizontalPodAutoscaler", "PodDisruptionBudget",
}

// Load reads every path: a file ("-" is stdin) or a directory, whose
// .yaml, .yml and .json files are read in name order (not recursively).
// The error is for I/O only; objects that cannot be used are Problems.
func Load(paths []string, stdin io.Reader) (*Objects, []Problem, error) {
	objs := &Objects{}
	var problems []Problem
	for _, p := range paths {
		files, err := expand(p)
		if err != nil {
			return nil, nil, err
		}
		for _, f := range files {
			var data []byte
			if f == "-" {
				data, err = io.ReadAll(stdin)
			} else {
				data, err = os.ReadFile(f)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("read %s: %w", f, err)
			}
			if f == "-" {
				f = "stdin"
			}
			problems = append(problems, objs.Decode(data, f)...)
		}
	}
	return objs, problems, nil
}

func expand(path string) ([]string, error) {
	if path == "-" {
		return []string{path}, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", path, err)
	}
	var out []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
			out = append(out, filepath.Join(path, e.Name()))
		}
	}
	return out, nil
}

// Decode adds the objects of one file (one or more YAML or JSON documents)
// and returns the problems of those it could not use.
func (o *Objects) Decode(data []byte, source string) []Problem {
	var problems []Problem
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		src := fmt.Sprintf("%s#%d", source, n)
		if err != nil {
			problems = append(problems, Problem{Source: src, Reason: fmt.Sprintf("unreadable YAML: %v", err)})
			break
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			problems = append(problems, Problem{Source: src, Reason: fmt.Sprintf("invalid YAML: %v", err)})
			continue
		}
		problems = append(problems, o.decodeObject(js, "", src)...)
	}
	return problems
}

func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

// header is what every object has; Items only Lists.
type header struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`
}

// decodeObject decodes one JSON object; defaultKind is the item kind of a
// typed list (ServiceList items may omit kind).
func (o *Objects) decodeObject(js []byte, defaultKind, src string) []Problem {
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		return []Problem{{Source: src, Reason: fmt.Sprintf("not a Kubernetes object: %v", err)}}
	}
	kind := h.Kind
	if kind == "" {
		kind = defaultKind
	}
	bad := func(reason string) []Problem {
		return []Problem{{Kind: kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name, Source: src, Reason: reason}}
	}
	if strings.HasSuffix(kind, "List") {
		var problems []Problem
		for i, item := range h.Items {
			problems = append(problems, o.decodeObject(item, strings.TrimSuffix(kind, "List"), fmt.Sprintf("%s/items[%d]", src, i))...)
		}
		return problems
	}
	switch {
	case kind == "":
		return bad("missing kind")
	case slices.Contains(ignoredKinds, kind):
		return nil
	case kind != "Service" && kind != "EndpointSlice" && kind != "Node":
		return bad(fmt.Sprintf("unsupported kind %q (want Service, EndpointSlice, Node or a List of them)", kind))
	case h.Metadata.Name == "":
		return bad("missing metadata.name")
	case kind != "Node" && h.Metadata.Namespace == "":
		return bad("missing metadata.namespace")
	}
	key := kind + " " + h.Metadata.Namespace + "/" + h.Metadata.Name
	if prev, dup := o.seenNames[key]; dup {
		return bad("duplicate of the object from " + prev + "; the first one is used")
	}
	if reason := o.add(kind, js); reason != "" {
		return bad(reason)
	}
	if o.seenNames == nil {
		o.seenNames = map[string]string{}
	}
	o.seenNames[key] = src
	return nil
}

// add decodes js as kind and keeps it when it has what the proxy needs;
// otherwise it returns why not.
func (o *Objects) add(kind string, js []byte) string {
	switch kind {
	case "Service":
		svc := &v1.Service{}
		if err := json.Unmarshal(js, svc); err != nil {
			return fmt.Sprintf("invalid Service: %v", err)
		}
		if reason := checkService(svc); reason != "" {
			return reason
		}
		o.Services = append(o.Services, svc)
	case "EndpointSlice":
		s := &discovery.EndpointSlice{}
		if err := json.Unmarshal(js, s); err != nil {
			return fmt.Sprintf("invalid EndpointSlice: %v", err)
		}
		if reason := checkSlice(s); reason != "" {
			return reason
		}
		o.Slices = append(o.Slices, s)
	case "Node":
		n := &v1.Node{}
		if err := json.Unmarshal(js, n); err != nil {
			return fmt.Sprintf("invalid Node: %v", err)
		}
		o.Nodes = append(o.Nodes, n)
	}
	return ""
}

// checkService rejects Services the proxy would silently ignore for want
// of a field, so a hand-written manifest's mistake is not invisible.
func checkService(svc *v1.Service) string {
	if svc.Spec.Type == v1.ServiceTypeExternalName || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return ""
	}
	if svc.Spec.ClusterIP == "" && len(svc.Spec.ClusterIPs) == 0 {
		return "missing spec.clusterIP (the API server assigns one; a manifest for render must set it)"
	}
	if len(svc.Spec.Ports) == 0 {
		return "missing spec.ports"
	}
	return ""
}

func checkSlice(s *discovery.EndpointSlice) string {
	if s.Labels[discovery.LabelServiceName] == "" {
		return "missing label " + discovery.LabelServiceName + " (which Service the slice belongs to)"
	}
	switch s.AddressType {
	case discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN:
	case "":
		return "missing addressType"
	default:
		return fmt.Sprintf("unknown addressType %q", s.AddressType)
	}
	return ""
}
