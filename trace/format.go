package trace

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteJSON writes r as one indented JSON document (schema in README.md).
func WriteJSON(w io.Writer, r *Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// WriteText writes r for a person: the verdict and reason, endpoints with
// their shares, then the path.
func WriteText(w io.Writer, r *Result) error {
	var b strings.Builder
	p := r.Packet
	fmt.Fprintf(&b, "Packet:     %s %s:%d -> %s:%d from %s", p.Protocol, p.Src, p.SrcPort, p.Dst, p.DstPort, p.Origin)
	if p.InInterface != "" {
		fmt.Fprintf(&b, " (in %s)", p.InInterface)
	}
	fmt.Fprintf(&b, " [%s mode]\n", r.Mode)
	fmt.Fprintf(&b, "Verdict:    %s\n", r.Verdict)
	fmt.Fprintf(&b, "Why:        %s\n", r.Reason)
	if r.Service != "" {
		fmt.Fprintf(&b, "Service:    %s\n", r.Service)
	}
	if r.VirtualServer != "" {
		fmt.Fprintf(&b, "Virtual:    %s\n", r.VirtualServer)
	}
	if len(r.Endpoints) > 0 {
		b.WriteString("Endpoints:\n")
		for _, e := range r.Endpoints {
			masq := ""
			if e.Masquerade {
				masq = "  (masqueraded)"
			}
			fmt.Fprintf(&b, "  %-24s %6.2f%%%s\n", e.Endpoint, e.Probability*100, masq)
		}
	}
	fmt.Fprintf(&b, "Masquerade: %s\n", yesNo(r.Masquerade))
	fmt.Fprintf(&b, "Affinity:   %s\n", yesNo(r.Affinity))
	if r.Verdict == VerdictMixed {
		b.WriteString("Branches:\n")
		for _, br := range r.Branches {
			fmt.Fprintf(&b, "  %-6s %6.2f%% %s\n", br.Verdict, br.Probability*100, br.Endpoint)
		}
	}
	b.WriteString("Path:\n")
	for _, s := range r.Path {
		if s.Rule == 0 {
			fmt.Fprintf(&b, "  %s/%s: %s\n", s.Table, s.Chain, s.Text)
			continue
		}
		fmt.Fprintf(&b, "  %s/%s#%d: %s\n", s.Table, s.Chain, s.Rule, s.Text)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}
