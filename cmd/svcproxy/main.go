// Command svcproxy is a Kubernetes service proxy, a drop-in replacement for
// kube-proxy in iptables and IPVS modes. It takes kube-proxy's flags and its
// KubeProxyConfiguration file.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
)

func main() {
	ctx, stop := signalContext()
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr, runProxy)
	stop()
	os.Exit(code)
}

// signalContext returns a context cancelled by SIGTERM or SIGINT, so the
// proxy can stop its servers and informers cleanly when the pod is deleted.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// execute runs the svcproxy command with args and returns the exit code.
// Errors are printed to stderr as they are: an invalid configuration is one
// line per invalid value.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, run runFunc) int {
	defer klog.Flush()
	cmd := newRootCommand(run)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, err)
		return exitCode(err)
	}
	return 0
}
