package bed_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// runFakeProxy stands in for svcproxy in TestProxyRunner: it takes the same default flags,
// "syncs" by listing Services every 200 ms, and serves healthz and metrics.
func runFakeProxy(args []string) int {
	fs := flag.NewFlagSet("fake-proxy", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "")
	hostname := fs.String("hostname-override", "", "")
	healthz := fs.String("healthz-bind-address", "", "")
	metrics := fs.String("metrics-bind-address", "", "")
	fs.String("conntrack-max-per-core", "", "")
	fs.String("cluster-cidr", "", "")
	fs.String("v", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int { fmt.Println("fake proxy:", err); return 1 }
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fail(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fail(err)
	}
	node, err := cs.CoreV1().Nodes().Get(context.Background(), *hostname, metav1.GetOptions{})
	if err != nil {
		return fail(err)
	}
	fmt.Printf("fake proxy: node %s InternalIP %s\n", node.Name, node.Status.Addresses[0].Address)
	// A restarted fake finds the chain from its first run, as a restarted proxy would.
	out, err := exec.Command("iptables", "-t", "nat", "-N", "BED-FAKE").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		return fail(fmt.Errorf("iptables: %v: %s", err, out))
	}

	var mu sync.Mutex
	var lastSync time.Time
	go func() {
		for {
			if _, err := cs.CoreV1().Services("").List(context.Background(), metav1.ListOptions{}); err == nil {
				mu.Lock()
				lastSync = time.Now()
				mu.Unlock()
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	last := func() time.Time { mu.Lock(); defer mu.Unlock(); return lastSync }
	serve := func(addr string, h http.HandlerFunc) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() { _ = http.Serve(l, h) }()
		return nil
	}
	err = serve(*healthz, func(w http.ResponseWriter, r *http.Request) {
		if last().IsZero() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintf(w, `{"lastUpdated": %q, "currentTime": %q, "nodeEligible": true}`, last().String(), time.Now().String())
	})
	if err != nil {
		return fail(err)
	}
	err = serve(*metrics, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n")
		fmt.Fprintf(w, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} %.3f\n", float64(last().UnixNano())/1e9)
	})
	if err != nil {
		return fail(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	fmt.Println("fake proxy: terminated")
	return 0
}
