package trace

import (
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables/dump"
)

func TestExpandRule(t *testing.T) {
	sets := map[string][]string{
		"KUBE-CLUSTER-IP":     {"198.51.100.1,tcp:80", "198.51.100.2,udp:53"},
		"KUBE-NODE-PORT-TCP":  {"30080"},
		"KUBE-LOOP-BACK":      {"203.0.113.2,tcp:8080,203.0.113.2"},
		"KUBE-LB-SOURCE-CIDR": {"203.0.113.200,tcp:80,192.0.2.0/24"},
		"KUBE-IPVS-IPS":       {"198.51.100.1"},
		"EMPTY":               {},
	}
	tests := []struct {
		name, rule string
		want       []string // expanded rules' args; nil: the rule goes
		err        string
	}{
		{"ip,port dst,dst", "-A C -m comment --comment x -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
			[]string{"-m comment --comment x -d 198.51.100.1/32 -p tcp -m tcp --dport 80 -j ACCEPT",
				"-m comment --comment x -d 198.51.100.2/32 -p udp -m udp --dport 53 -j ACCEPT"}, ""},
		{"ip,port src,dst", "-A C -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ",
			[]string{"-s 198.51.100.1/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
				"-s 198.51.100.2/32 -p udp -m udp --dport 53 -j KUBE-MARK-MASQ"}, ""},
		{"bitmap port takes the rule's protocol", "-A C -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j RETURN",
			[]string{"-p tcp -m tcp --dport 30080 -j RETURN"}, ""},
		{"protocol conflict drops the member", "-A C -p udp -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
			[]string{"-p udp -d 198.51.100.2/32 -m udp --dport 53 -j ACCEPT"}, ""},
		{"ip,port,ip", "-A C -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
			[]string{"-d 203.0.113.2/32 -s 203.0.113.2/32 -p tcp -m tcp --dport 8080 -j MASQUERADE"}, ""},
		{"ip,port,net", "-A C -m set --match-set KUBE-LB-SOURCE-CIDR dst,dst,src -j RETURN",
			[]string{"-d 203.0.113.200/32 -s 192.0.2.0/24 -p tcp -m tcp --dport 80 -j RETURN"}, ""},
		{"hash:ip with conntrack before", "-A C -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
			[]string{"-m conntrack --ctstate NEW -d 198.51.100.1/32 -j REJECT"}, ""},
		{"empty set removes the rule", "-A C -m set --match-set EMPTY dst,dst -j ACCEPT", nil, ""},
		{"ipvs match", "-A C -s 203.0.113.200 -m ipvs --vaddr 203.0.113.200 --vproto tcp --vport 80 -j DROP",
			[]string{"-s 203.0.113.200 -d 203.0.113.200 -p tcp -m tcp --dport 80 -j DROP"}, ""},
		{"physdev not-in is dropped", "-A C -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
			[]string{"-m addrtype ! --src-type LOCAL -j ACCEPT"}, ""},
		{"negated set is an error", "-A C -m set ! --match-set EMPTY dst -j ACCEPT", nil, "not supported"},
		{"unknown set is an error", "-A C -m set --match-set NOPE dst -j ACCEPT", nil, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := dump.ParseRule(tc.rule)
			if err != nil {
				t.Fatal(err)
			}
			rules, err := expandRule(r, sets)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, nr := range rules {
				got = append(got, nr.ArgString())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
