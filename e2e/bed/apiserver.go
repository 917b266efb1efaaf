package bed

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// APIServer is a running etcd + kube-apiserver on 127.0.0.1 of the root namespace.
type APIServer struct {
	URL        string // https://127.0.0.1:Port
	Port       int
	CAFile     string // the self-signed serving certificate, valid as kubeconfig CA
	AdminToken string // user "admin" in group system:masters
	ProxyToken string // user "system:kube-proxy", bound to system:node-proxier by default RBAC
	Client     kubernetes.Interface
	Config     *rest.Config // admin config behind Client
	Dir        string       // temporary directory with certs, tokens and logs

	etcd, apiserver *process
	upstream        string // host:port of an external apiserver (external.go); empty for our own
}

// APIOption changes how the shared apiserver is started; pass them to Main.
type APIOption func(*apiConfig)

type apiConfig struct {
	serviceCIDRs string
}

var apiOptions = apiConfig{serviceCIDRs: "198.51.100.0/24"}

// DualStack makes the service CIDR 198.51.100.0/24,2001:db8:5::/112.
func DualStack() APIOption {
	return func(c *apiConfig) { c.serviceCIDRs = "198.51.100.0/24,2001:db8:5::/112" }
}

var shared struct {
	sync.Mutex
	api *APIServer
	err error
}

// API returns the apiserver shared by the test binary, starting it on first use. It is
// stopped by Main when the tests end.
func API(t testing.TB) *APIServer {
	t.Helper()
	RequireRoot(t)
	shared.Lock()
	defer shared.Unlock()
	if shared.api == nil && shared.err == nil {
		shared.api, shared.err = startSharedAPI(apiOptions)
	}
	if shared.err != nil {
		t.Fatalf("bed: start apiserver: %v", shared.err)
	}
	return shared.api
}

func stopSharedAPI() {
	shared.Lock()
	defer shared.Unlock()
	if shared.api != nil {
		shared.api.Stop()
		shared.api = nil
	}
}

// BinDir holds kube-apiserver and etcd: $SVCPROXY_BED_BIN, else <repo>/e2e/.cache/bin.
func BinDir() (string, error) {
	if d := os.Getenv("SVCPROXY_BED_BIN"); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "e2e", ".cache", "bin"), nil
}

// StartAPIServer starts etcd and kube-apiserver on free loopback ports and waits until the
// apiserver is ready. Callers own the result and must Stop it; tests normally use API(t).
func StartAPIServer(opts ...APIOption) (*APIServer, error) {
	cfg := apiConfig{serviceCIDRs: "198.51.100.0/24"}
	for _, o := range opts {
		o(&cfg)
	}
	return startAPIServer(cfg)
}

func startAPIServer(cfg apiConfig) (_ *APIServer, err error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s missing in %s: run e2e/apiserver/build.sh first: %w", b, bin, err)
		}
	}
	dir, err := os.MkdirTemp("", "svp-api-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	a := &APIServer{Dir: dir, AdminToken: randomHex(16), ProxyToken: randomHex(16)}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	a.Port = ports[2]
	a.URL = fmt.Sprintf("https://127.0.0.1:%d", a.Port)
	a.CAFile = filepath.Join(dir, "certs", "apiserver.crt")

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	a.etcd, err = startLogged(filepath.Join(dir, "etcd.log"), filepath.Join(bin, "etcd"),
		"-data-dir", filepath.Join(dir, "etcd"),
		"-listen-client-url", etcdURL,
		"-listen-peer-url", fmt.Sprintf("http://127.0.0.1:%d", ports[1]))
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	args, err := a.writeAuthFiles()
	if err != nil {
		return nil, err
	}
	args = append(args,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", a.Port),
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--service-cluster-ip-range="+cfg.serviceCIDRs,
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1")
	a.apiserver, err = startLogged(filepath.Join(dir, "kube-apiserver.log"), filepath.Join(bin, "kube-apiserver"), args...)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := a.waitReady(90 * time.Second); err != nil {
		return nil, fmt.Errorf("%w\n--- etcd.log (tail)\n%s\n--- kube-apiserver.log (tail)\n%s", err,
			tailFile(filepath.Join(dir, "etcd.log"), 20), tailFile(filepath.Join(dir, "kube-apiserver.log"), 40))
	}
	a.Config = &rest.Config{
		Host:            a.URL,
		BearerToken:     a.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAFile: a.CAFile},
		QPS:             500,
		Burst:           1000,
	}
	a.Client, err = kubernetes.NewForConfig(a.Config)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return a, nil
}

// writeAuthFiles writes the token file and service-account key and returns their flags.
func (a *APIServer) writeAuthFiles() ([]string, error) {
	tokens := filepath.Join(a.Dir, "tokens.csv")
	content := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,system:kube-proxy,kube-proxy\n", a.AdminToken, a.ProxyToken)
	if err := os.WriteFile(tokens, []byte(content), 0o600); err != nil {
		return nil, fmt.Errorf("write tokens: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	saKey := filepath.Join(a.Dir, "sa.key")
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(saKey, pemKey, 0o600); err != nil {
		return nil, fmt.Errorf("write service-account key: %w", err)
	}
	return []string{
		"--token-auth-file=" + tokens,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
	}, nil
}

func (a *APIServer) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if !a.etcd.running() {
			return fmt.Errorf("etcd exited: %v", a.etcd.err)
		}
		if !a.apiserver.running() {
			return fmt.Errorf("kube-apiserver exited: %v", a.apiserver.err)
		}
		if _, err := os.Stat(a.CAFile); err == nil {
			code, body, err := a.get("/readyz")
			if err == nil && code == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("readyz: %d %v %s", code, err, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("apiserver not ready after %v (%s)", timeout, last)
}

// get does an authenticated GET of path with the admin token.
func (a *APIServer) get(path string) (int, string, error) {
	cfg := &rest.Config{Host: a.URL, BearerToken: a.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAFile: a.CAFile}}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return 0, "", err
	}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(a.URL + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = fmt.Fprint(&b, readAllLimited(resp.Body, 4096))
	return resp.StatusCode, b.String(), nil
}

// Stop stops kube-apiserver, then etcd, and removes the temporary directory.
func (a *APIServer) Stop() {
	if a.apiserver != nil {
		a.apiserver.stop(10 * time.Second)
	}
	if a.etcd != nil {
		a.etcd.stop(10 * time.Second)
	}
	if a.Dir != "" {
		os.RemoveAll(a.Dir)
	}
}

// Kubeconfig writes a kubeconfig for token and this apiserver into t.TempDir().
func (a *APIServer) Kubeconfig(t testing.TB, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteKubeconfig(p, a.URL, a.CAFile, token); err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteKubeconfig writes a kubeconfig file for server, CA file and bearer token.
func WriteKubeconfig(path, server, caFile, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bed"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["bed"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["bed"] = &clientcmdapi.Context{Cluster: "bed", AuthInfo: "bed"}
	cfg.CurrentContext = "bed"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// startLogged starts a process in the root namespace with its output in logPath and
// without ETCD_* variables (etcd reads every one of them as a flag).
func startLogged(logPath, name string, args ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	p, err := startProcess(cmd, (*exec.Cmd).Start)
	f.Close() // the child holds its own copy
	return p, err
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
