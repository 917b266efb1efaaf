package datapath

import (
	"strings"
	"testing"
)

// ModeSwitch moves node1 from IPVS mode to iptables mode and back, with
// `svcproxy --cleanup` in between as the migration guide says, and checks after each
// step that nothing of the other mode is left and that traffic flows. It needs both
// data planes, so it runs in the IPVS pass (the VM).

func init() {
	register("ModeSwitch", testModeSwitch, "ipvs")
}

// modeSwitchIPTablesOnly are chain prefixes only iptables mode creates.
var modeSwitchIPTablesOnly = []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"}

// modeSwitchIPVSOnly are chains only IPVS mode creates.
var modeSwitchIPVSOnly = []string{"KUBE-IPVS-FILTER", "KUBE-LOOP-BACK", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-IPVS-OUT-FILTER"}

func testModeSwitch(t *testing.T, e *Env) {
	c := e.C
	node1 := c.Node("node1")
	pod := c.AddPod(t, c.Node("node2"), "switch-a")
	client := c.AddPod(t, node1, "switch-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "switch", "TCP", ip, nil, epEndpoint(pod))...)
	epWaitFirst(t, "first answer via "+target+" in ipvs mode", epFirstAnswerTimeout, epHTTP(client.NS, target), pod)

	p := e.Proxies[node1.Short]
	ipvsArgs := p.Args
	t.Cleanup(func() {
		// Whatever step failed, leave node1 as the other scenarios expect it.
		if strings.Join(p.Args, " ") != strings.Join(ipvsArgs, " ") || !p.Running() {
			p.Stop(t)
			_, _ = node1.NS.Exec(p.Binary, "--cleanup")
			p.Args = ipvsArgs
			epRestart(t, p)
		}
	})
	steps := []struct {
		mode        string
		args        []string
		otherChains []string
	}{
		{"iptables", append(append([]string{}, ipvsArgs...), "--proxy-mode=iptables"), modeSwitchIPVSOnly},
		{"ipvs", ipvsArgs, modeSwitchIPTablesOnly},
	}
	for _, step := range steps {
		p.Stop(t)
		out, err := node1.NS.Exec(p.Binary, "--cleanup", "--v=2")
		if err != nil {
			t.Fatalf("svcproxy --cleanup before %s mode: %v\n%s", step.mode, err, lifecycleTail(out, 10))
		}
		left := append(lifecycleIPTables(t, node1, func(string) bool { return true }), lifecycleIPVS(t, node1)...)
		for _, l := range left {
			t.Errorf("after --cleanup, before %s mode: %s", step.mode, l)
		}

		p.Args = step.args
		epRestart(t, p)
		epWaitFirst(t, "answer via "+target+" in "+step.mode+" mode", epFirstAnswerTimeout, epHTTP(client.NS, target), pod)
		counts := client.NS.CountAnswers(target, epRequests)
		epAssertOnly(t, "in "+step.mode+" mode after the switch", counts, epRequests, pod)

		other := lifecycleIPTables(t, node1, func(line string) bool { return modeSwitchMentions(line, step.otherChains) })
		if step.mode == "iptables" {
			other = append(other, lifecycleIPVS(t, node1)...)
		}
		for _, l := range other {
			t.Errorf("in %s mode, left by the other mode: %s", step.mode, l)
		}
		if t.Failed() {
			return
		}
	}
	// Back in IPVS mode, the trace of node1's rules agrees with the traffic.
	counts := client.NS.CountAnswers(target, epRequests)
	e.assertTrace(t, node1, podPacket(client, target), counts, 8080, pod)
}

func modeSwitchMentions(line string, chains []string) bool {
	for _, c := range chains {
		if strings.Contains(line, c) {
			return true
		}
	}
	return false
}
