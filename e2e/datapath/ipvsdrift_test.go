package datapath

import (
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// Another actor edits the IPVS table behind the proxy's back (an operator's ipvsadm, a
// second proxy): the periodic sync reads the kernel and puts back what it wants.

func init() {
	register("IPVSVirtualServerDeletedComesBack", testIPVSVirtualServerDeleted, "ipvs")
}

// ipvsSyncPeriod is --ipvs-sync-period's default (ProxyArgs leaves it).
const ipvsSyncPeriod = 30 * time.Second

func testIPVSVirtualServerDeleted(t *testing.T, e *Env) {
	c := e.C
	node1 := c.Node("node1")
	pod := c.AddPod(t, c.Node("node2"), "ipvsdrift-a")
	client := c.AddPod(t, node1, "ipvsdrift-client")
	ip := e.ClusterIP()
	target := epAddr(ip, 80)
	epApply(t, e, epService(e, "ipvsdrift", "TCP", ip, nil, epEndpoint(pod))...)
	epWaitFirst(t, "first answer via "+target, epFirstAnswerTimeout, epHTTP(client.NS, target), pod)

	out := bed.ExecInNS(t, node1.NS, "ipvsadm", "-Ln", "-t", target)
	if !strings.Contains(out, "-> "+epAddr(pod.IP.String(), 8080)) {
		t.Fatalf("virtual server %s lacks its real server before the deletion:\n%s", target, out)
	}
	bed.ExecInNS(t, node1.NS, "ipvsadm", "-D", "-t", target)
	deleted := time.Now()
	// The deletion took: new connections find no virtual server until the proxy notices.
	if _, err := node1.NS.Exec("ipvsadm", "-Ln", "-t", target); err == nil {
		t.Fatalf("ipvsadm -D -t %s left the virtual server in place", target)
	}

	bed.Eventually(t, ipvsSyncPeriod+epChangeBound(e)+5*time.Second, "virtual server "+target+" restored", func() (bool, string) {
		out, err := node1.NS.Exec("ipvsadm", "-Ln", "-t", target)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(out, "-> "+epAddr(pod.IP.String(), 8080)), out
	})
	t.Logf("virtual server %s back %v after ipvsadm -D (sync period %v)", target,
		time.Since(deleted).Round(time.Millisecond), ipvsSyncPeriod)
	epWaitFirst(t, "answer via "+target+" after the restore", epFirstAnswerTimeout, epHTTP(client.NS, target), pod)
	counts := client.NS.CountAnswers(target, epRequests)
	epAssertOnly(t, "after the virtual server came back", counts, epRequests, pod)
	e.assertTrace(t, node1, podPacket(client, target), counts, 8080, pod)
}
