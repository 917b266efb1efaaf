package dump

import (
	"reflect"
	"testing"
)

func TestRuleAccessors(t *testing.T) {
	type val struct {
		v   string
		neg bool
	}
	tests := []struct {
		name       string
		line       string
		src, dst   val
		proto      val
		dport      val
		sport      val
		in, out    val
		comment    string
		target     string
		goTo       bool
		targetArgs []string
		modules    []string
	}{
		{
			name:    "kube-proxy service rule with implicit-after-explicit tcp match",
			line:    `-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 198.51.100.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O`,
			dst:     val{"198.51.100.41", false},
			proto:   val{"tcp", false},
			dport:   val{"80", false},
			comment: "ns1/svc1:p80 cluster IP",
			target:  "KUBE-SVC-XPGD46QRK7WJZT7O",
			modules: []string{"comment", "tcp"},
		},
		{
			name:    "negations in both styles of placement",
			line:    `-A KUBE-SVC-X ! -s 203.0.113.0/25 -p udp ! --dport 53 ! -i eth0 -o lo -j KUBE-MARK-MASQ`,
			src:     val{"203.0.113.0/25", true},
			proto:   val{"udp", false},
			dport:   val{"53", true},
			in:      val{"eth0", true},
			out:     val{"lo", false},
			target:  "KUBE-MARK-MASQ",
			modules: []string{"udp"},
		},
		{
			name:    "long option names normalised",
			line:    `-A X --source 192.0.2.1/32 --destination 192.0.2.2 --protocol sctp --sport 9 --in-interface veth1 --jump ACCEPT`,
			src:     val{"192.0.2.1/32", false},
			dst:     val{"192.0.2.2", false},
			proto:   val{"sctp", false},
			sport:   val{"9", false},
			in:      val{"veth1", false},
			target:  "ACCEPT",
			modules: []string{"sctp"},
		},
		{
			name:       "target arguments",
			line:       `-A KUBE-SEP-X -m comment --comment ns/svc -m tcp -p tcp -j DNAT --to-destination [2001:db8:1::5]:8080`,
			proto:      val{"tcp", false},
			comment:    "ns/svc",
			target:     "DNAT",
			targetArgs: []string{"--to-destination", "[2001:db8:1::5]:8080"},
			modules:    []string{"comment", "tcp"},
		},
		{
			name:    "goto and several comments",
			line:    `-A X -m comment --comment a -m comment --comment "b c" -g Y`,
			comment: "a; b c",
			target:  "Y",
			goTo:    true,
			modules: []string{"comment", "comment"},
		},
		{
			name:    "rule without target",
			line:    `-A KUBE-FW-X -m comment --comment "other traffic will be dropped"`,
			comment: "other traffic will be dropped",
			modules: []string{"comment"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRule(tc.line)
			if err != nil {
				t.Fatalf("ParseRule: %v", err)
			}
			check := func(what string, got val, want val) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %+v, want %+v", what, got, want)
				}
			}
			v := func(s string, n bool) val { return val{s, n} }
			check("Source", v(r.Source()), tc.src)
			check("Destination", v(r.Destination()), tc.dst)
			check("Protocol", v(r.Protocol()), tc.proto)
			check("DPort", v(r.DPort()), tc.dport)
			check("SPort", v(r.SPort()), tc.sport)
			check("InInterface", v(r.InInterface()), tc.in)
			check("OutInterface", v(r.OutInterface()), tc.out)
			if r.Comment() != tc.comment {
				t.Errorf("Comment = %q, want %q", r.Comment(), tc.comment)
			}
			if r.Target() != tc.target || r.Goto() != tc.goTo {
				t.Errorf("Target = %q goto=%v, want %q goto=%v", r.Target(), r.Goto(), tc.target, tc.goTo)
			}
			if len(r.TargetArgs()) != 0 || len(tc.targetArgs) != 0 {
				if !reflect.DeepEqual(r.TargetArgs(), tc.targetArgs) {
					t.Errorf("TargetArgs = %q, want %q", r.TargetArgs(), tc.targetArgs)
				}
			}
			var mods []string
			for _, m := range r.Matches() {
				mods = append(mods, m.Module)
			}
			if !reflect.DeepEqual(mods, tc.modules) {
				t.Errorf("modules = %q, want %q", mods, tc.modules)
			}
		})
	}
}

func TestRuleMatchOptions(t *testing.T) {
	r, err := ParseRule(`-A KUBE-SVC-X -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -m statistic --mode random --probability 0.3333333333 -m mark ! --mark 0x4000/0x4000 -m addrtype ! --dst-type LOCAL -j KUBE-SEP-A`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		module, option string
		want           Option
	}{
		{"recent", "--name", Option{Name: "--name", Values: []string{"KUBE-SEP-A"}}},
		{"recent", "--rcheck", Option{Name: "--rcheck"}},
		{"recent", "--seconds", Option{Name: "--seconds", Values: []string{"10800"}}},
		{"statistic", "--probability", Option{Name: "--probability", Values: []string{"0.3333333333"}}},
		{"mark", "--mark", Option{Name: "--mark", Values: []string{"0x4000/0x4000"}, Negated: true}},
		{"addrtype", "--dst-type", Option{Name: "--dst-type", Values: []string{"LOCAL"}, Negated: true}},
	}
	for _, tc := range tests {
		t.Run(tc.module+tc.option, func(t *testing.T) {
			got, ok := r.MatchOption(tc.module, tc.option)
			if !ok || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("MatchOption = %+v %v, want %+v", got, ok, tc.want)
			}
		})
	}
	if _, ok := r.MatchOption("recent", "--set"); ok {
		t.Errorf("found --set that is not in the rule")
	}
}

func TestParseRuleErrors(t *testing.T) {
	for _, line := range []string{
		`-A X -m`,
		`-A X -j`,
		`-A X -s`,
		`-A X -j A -j B`,
		`-A X !`,
		`-A X --dport 80 -j ACCEPT`, // no -p to load the port match
		`-A X stray -j ACCEPT`,
		`-A X -m comment --comment "unterminated`,
		`-I X 1 -j ACCEPT`,
	} {
		t.Run(line, func(t *testing.T) {
			if r, err := ParseRule(line); err == nil {
				t.Errorf("ParseRule accepted %q as %q", line, r.String())
			}
		})
	}
}

func TestQuotingRoundTrip(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-m", "comment", "--comment", "ns/svc:p80 cluster IP", "-j", "X"}, `-m comment --comment "ns/svc:p80 cluster IP" -j X`},
		{[]string{"-m", "comment", "--comment", "ns/svc"}, `-m comment --comment "ns/svc"`},
		{[]string{"-m", "comment", "--comment", "plain_word-1"}, `-m comment --comment plain_word-1`},
		{[]string{"-m", "comment", "--comment", `say "hi" \ it's`}, `-m comment --comment "say \"hi\" \\ it\'s"`},
		{[]string{"-m", "comment", "--comment", ""}, `-m comment --comment ""`},
		{[]string{"-d", "198.51.100.1/32", "-j", "DNAT", "--to-destination", "203.0.113.5:80"}, `-d 198.51.100.1/32 -j DNAT --to-destination 203.0.113.5:80`},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			got := JoinArgs(tc.args)
			if got != tc.want {
				t.Fatalf("JoinArgs = %s, want %s", got, tc.want)
			}
			back, err := tokenize(got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, tc.args) {
				t.Errorf("tokenize(JoinArgs) = %q, want %q", back, tc.args)
			}
		})
	}
}
