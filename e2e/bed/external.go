package bed

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svcproxy/svcproxy/e2e/vm"
)

// External-apiserver mode: the bed uses an apiserver someone else started instead of
// starting etcd and kube-apiserver itself. That is how the bed runs inside the qemu VM
// (e2e/vm), which has no apiserver binaries: the host test starts the apiserver, passes
// its kubeconfig into the VM, and API(t) in the guest builds its APIServer from it.
const (
	// KubeconfigEnv names an admin kubeconfig; when set, API(t) uses that apiserver.
	KubeconfigEnv = "SVCPROXY_BED_KUBECONFIG"
	// ProxyTokenEnv is the bearer token of user system:kube-proxy on that apiserver,
	// used for the proxies' kubeconfig. Without it the proxies use the admin's token.
	ProxyTokenEnv = "SVCPROXY_BED_PROXY_TOKEN"
	// TimeScaleEnv multiplies WaitTimeout (a number, e.g. "3"): under qemu's emulated CPU
	// a proxy's first sync alone can take half a minute.
	TimeScaleEnv = "SVCPROXY_BED_TIME_SCALE"
)

func init() {
	if v := os.Getenv(TimeScaleEnv); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			fmt.Fprintf(os.Stderr, "bed: ignoring %s=%q: want a positive number\n", TimeScaleEnv, v)
			return
		}
		WaitTimeout = time.Duration(float64(WaitTimeout) * f)
	}
}

// externalKubeconfig returns the kubeconfig of an external apiserver: $SVCPROXY_BED_KUBECONFIG,
// else inside the VM the one vm.Options.APIServer wrote ($KUBECONFIG). Empty means
// the bed starts its own apiserver.
func externalKubeconfig() (string, error) {
	if p := os.Getenv(KubeconfigEnv); p != "" {
		return p, nil
	}
	if !vm.InGuest() {
		return "", nil
	}
	if p := os.Getenv("KUBECONFIG"); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("inside the VM the bed cannot start an apiserver: pass one with vm.Options.APIServer " +
		"(or set " + KubeconfigEnv + ")")
}

// startSharedAPI starts the bed's own apiserver or, in external mode, connects to one.
func startSharedAPI(cfg apiConfig) (*APIServer, error) {
	path, err := externalKubeconfig()
	if err != nil {
		return nil, err
	}
	if path == "" {
		return startAPIServer(cfg)
	}
	return connectExternal(path, os.Getenv(ProxyTokenEnv))
}

// connectExternal builds an APIServer for the apiserver of an admin kubeconfig. Node
// namespaces reach it through their forwarders at https://127.0.0.1:PORT, so the
// serving certificate must be valid for 127.0.0.1, as the bed's own is (inside the VM
// the kubeconfig says so with tls-server-name).
func connectExternal(path, proxyToken string) (_ *APIServer, err error) {
	raw, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("external apiserver: load %s: %w", path, err)
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*raw, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("external apiserver: %s: %w", path, err)
	}
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("external apiserver: server %q in %s: %w", cfg.Host, path, err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return nil, fmt.Errorf("external apiserver: server %q in %s has no port", cfg.Host, path)
	}
	if name := certName(cfg.TLSClientConfig.ServerName, u.Hostname()); name != "127.0.0.1" {
		return nil, fmt.Errorf("external apiserver: proxies in node namespaces reach it as 127.0.0.1, "+
			"but its certificate is checked for %q (%s)", name, path)
	}
	if cfg.BearerToken == "" {
		return nil, fmt.Errorf("external apiserver: %s has no bearer token (the proxies' kubeconfig needs one)", path)
	}
	if proxyToken == "" {
		proxyToken = cfg.BearerToken
		fmt.Fprintf(os.Stderr, "bed: %s not set: proxies use the admin token\n", ProxyTokenEnv)
	}
	dir, err := os.MkdirTemp("", "svp-ext-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	a := &APIServer{
		Port:       port,
		AdminToken: cfg.BearerToken,
		ProxyToken: proxyToken,
		Dir:        dir,
		upstream:   u.Host,
	}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()
	// What node namespaces dial: their forwarder, which relays to upstream.
	a.URL = fmt.Sprintf("https://127.0.0.1:%d", a.Port)
	a.CAFile = cfg.TLSClientConfig.CAFile
	if a.CAFile == "" {
		a.CAFile = filepath.Join(dir, "ca.crt")
		if err := os.WriteFile(a.CAFile, cfg.TLSClientConfig.CAData, 0o644); err != nil {
			return nil, fmt.Errorf("write CA: %w", err)
		}
	}
	cfg.QPS, cfg.Burst = 500, 1000
	a.Config = cfg
	if a.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if err := waitExternalReady(a.Client, 30*time.Second); err != nil {
		return nil, fmt.Errorf("external apiserver %s: %w", u.Host, err)
	}
	return a, nil
}

func certName(serverName, host string) string {
	if serverName != "" {
		return serverName
	}
	return host
}

// waitExternalReady polls /readyz: the guest's network may come up just after the test starts.
func waitExternalReady(c kubernetes.Interface, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v %s", timeout, err, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// forwardTarget is where node-namespace forwarders relay to: the root namespace's
// 127.0.0.1:PORT for the bed's own apiserver, the external server otherwise.
func (a *APIServer) forwardTarget() string {
	if a.upstream != "" {
		return a.upstream
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(a.Port))
}
