package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// report is what a run saw, printed as short tables.
type report struct {
	Mode     string
	Requests int
	Setup    []string // who is who
	Mapped   []string // how the examples were adapted to the bed
	Rows     []row
	Healthz  []healthLine // each node's /healthz
	Checks   []healthLine // healthCheckNodePort answers
}

// row is one path through a Service: who asked which address, and who answered.
type row struct {
	Service    string   // "demo/web"
	Kind       string   // "ClusterIP", "LB NodePort, eTP=Local", ...
	From       string   // the asking namespace: "toolbox" (a pod) or "client1"
	To         string   // "198.51.100.10:80"
	Expect     []string // pods that may answer; none: the path must stay silent
	Sticky     bool     // ClientIP affinity: every answer from one pod
	WantSource string   // the source address the pods must see; empty: not checked
	Requests   int
	Counts     bed.Counts
	Problem    string // empty when the row is as expected

	ns          *bed.Namespace
	sourceNames []string
}

type healthLine struct {
	What, URL string
	Mode      string // the node's /proxyMode (node lines only)
	Code      int
	Body      string
	Err       string
	Problem   string
}

// judge says what is wrong with the row's answers, or "".
func (r row) judge() string {
	answered := 0
	for _, k := range r.Counts.ByPod {
		answered += k
	}
	if len(r.Expect) == 0 {
		if answered > 0 {
			return "want no answer"
		}
		return ""
	}
	var problems []string
	if r.Counts.Failures > 0 {
		problems = append(problems, fmt.Sprintf("%d failed", r.Counts.Failures))
	}
	for pod := range r.Counts.ByPod {
		if !contains(r.Expect, pod) {
			problems = append(problems, pod+" is not an endpoint here")
		}
	}
	switch {
	case r.Sticky && len(r.Counts.ByPod) > 1:
		problems = append(problems, "affinity broken: several pods")
	case !r.Sticky:
		for _, pod := range r.Expect {
			if r.Counts.ByPod[pod] == 0 {
				problems = append(problems, pod+" never answered")
			}
		}
	}
	if r.WantSource != "" {
		for src := range r.Counts.Sources {
			if src != r.WantSource {
				problems = append(problems, "pods saw "+src+", want "+r.WantSource)
			}
		}
	}
	sort.Strings(problems)
	return strings.Join(problems, "; ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// answers is "web-1 ×11, web-2 ×9", or why nothing answered.
func (r row) answers() string {
	var parts []string
	for pod, k := range r.Counts.ByPod {
		parts = append(parts, fmt.Sprintf("%s ×%d", pod, k))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return fmt.Sprintf("none of %d (%s)", r.Requests, failureKind(r.Counts))
	}
	s := strings.Join(parts, ", ")
	if r.Counts.Failures > 0 {
		s += fmt.Sprintf(", %d failed (%s)", r.Counts.Failures, failureKind(r.Counts))
	}
	return s
}

func failureKind(c bed.Counts) string {
	if len(c.Errors) == 0 {
		return "no error"
	}
	e := c.Errors[0]
	switch {
	case strings.Contains(e, "Client.Timeout"), strings.Contains(e, "deadline exceeded"), strings.Contains(e, "i/o timeout"):
		return "timed out: dropped"
	case strings.Contains(e, "connection refused"):
		return "refused"
	}
	return e
}

// problems lists everything unexpected in the report.
func (rep *report) problems() []string {
	var ps []string
	for _, r := range rep.Rows {
		if r.Problem != "" {
			ps = append(ps, fmt.Sprintf("%s from %s to %s: %s", r.Service, r.From, r.To, r.Problem))
		}
	}
	for _, h := range append(append([]healthLine(nil), rep.Healthz...), rep.Checks...) {
		if h.Problem != "" {
			ps = append(ps, fmt.Sprintf("%s %s: got %d, %s %s", h.What, h.URL, h.Code, h.Problem, h.Err))
		}
	}
	return ps
}

func (rep *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nsvcproxy demo — %s mode\n\n", rep.Mode)
	for _, s := range rep.Setup {
		fmt.Fprintf(w, "  %s\n", s)
	}
	if len(rep.Mapped) > 0 {
		fmt.Fprintf(w, "  examples adapted to the bed: %s\n", strings.Join(rep.Mapped, ", "))
	}

	fmt.Fprintf(w, "\nRequests (%d per path, each a new TCP connection; %d tries where nothing should answer)\n\n",
		rep.Requests, unansweredTries)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tTYPE\tFROM\tTO\tANSWERED BY\tSOURCE IP THE PODS SAW\tCHECK")
	for _, r := range rep.Rows {
		src := strings.Join(r.sourceNames, ", ")
		if src == "" {
			src = "-"
		}
		verdict := "ok"
		if r.Problem != "" {
			verdict = "UNEXPECTED: " + r.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Service, r.Kind, r.From, r.To, r.answers(), src, verdict)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nNode health (/healthz on each node, port 10256; currentTime and per-family status left out; mode from /proxyMode)\n\n")
	printHealth(w, rep.Healthz)
	if len(rep.Checks) > 0 {
		fmt.Fprintf(w, "\nhealthCheckNodePort answers (asked by the client, as a load balancer would)\n\n")
		printHealth(w, rep.Checks)
	}
	fmt.Fprintln(w)
}

func printHealth(w io.Writer, lines []healthLine) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, h := range lines {
		body := shortJSON(h.Body)
		if h.Err != "" && h.Code == 0 {
			body = "error: " + h.Err
		}
		verdict := "ok"
		if h.Problem != "" {
			verdict = "UNEXPECTED: " + h.Problem
		}
		what := h.What
		if h.Mode != "" {
			what += " (" + h.Mode + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", what, strings.TrimPrefix(h.URL, "http://"), h.Code, body, verdict)
	}
	tw.Flush()
}

// shortJSON puts a JSON object on one line without the parts of /healthz that only
// repeat (per-family "status", "currentTime"), leaving anything else as it is.
func shortJSON(s string) string {
	s = strings.TrimSpace(s)
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return s
	}
	delete(obj, "status")
	delete(obj, "currentTime")
	b, err := json.Marshal(obj)
	if err != nil {
		return s
	}
	return string(b)
}
