package vmdatapath

import (
	"reflect"
	"testing"
)

func TestSummarize(t *testing.T) {
	console := `=== RUN   TestDatapath/ipvs/ClusterIPTCP
        --- PASS: TestDatapath/ipvs/ClusterIPTCP (3.21s)
        --- FAIL: TestDatapath/ipvs/SessionAffinityTimeout (21.50s)
        --- SKIP: TestDatapath/iptables/ClusterIPSCTP (0.00s)
        --- PASS: TestDatapath/iptables/Hairpin (1.00s)
    --- FAIL: TestDatapath/ipvs (40.00s)
--- FAIL: TestDatapath (40.01s)
`
	s := summarize(console)
	wantResults := []result{
		{mode: "iptables", name: "ClusterIPSCTP", verdict: "SKIP", secs: "0.00"},
		{mode: "iptables", name: "Hairpin", verdict: "PASS", secs: "1.00"},
		{mode: "ipvs", name: "ClusterIPTCP", verdict: "PASS", secs: "3.21"},
		{mode: "ipvs", name: "SessionAffinityTimeout", verdict: "FAIL", secs: "21.50"},
	}
	if !reflect.DeepEqual(s.results, wantResults) {
		t.Errorf("results = %+v, want %+v", s.results, wantResults)
	}
	if want := map[string]int{"ipvs": 1, "iptables": 1}; !reflect.DeepEqual(s.passed, want) {
		t.Errorf("passed = %v, want %v", s.passed, want)
	}
	if want := []string{"ipvs/SessionAffinityTimeout"}; !reflect.DeepEqual(s.failed, want) {
		t.Errorf("failed = %v, want %v", s.failed, want)
	}
}
