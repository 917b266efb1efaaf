package vm

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Paths and addresses inside the VM, for in-VM tests.
const (
	// GuestEnv is set to "1" by the VM's /init for everything it runs.
	GuestEnv = "SVCPROXY_VM"
	// HostAddr is the host's 127.0.0.1 as seen from inside the VM.
	HostAddr = "198.18.0.2"
	// GuestAddr is the VM's own address on its link to the host.
	GuestAddr = "198.18.0.15"
	// SvcproxyPath is where the svcproxy binary is inside the VM.
	SvcproxyPath = "/usr/local/bin/svcproxy"
	// KubeconfigPath is the kubeconfig for Options.APIServer inside the VM
	// (also exported as KUBECONFIG).
	KubeconfigPath = "/vm/kubeconfig"
	// TestBinaryPath is the in-VM test binary; it runs with /vm as working directory.
	TestBinaryPath = "/vm/test.bin"
)

// InGuest reports whether the caller runs inside the test VM.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// APIServer describes a kube-apiserver listening on the host's loopback.
type APIServer struct {
	Port  int    // port on 127.0.0.1
	CA    []byte // PEM the serving certificate verifies against
	Token string // bearer token; empty for none
	// ClientCert and ClientKey (PEM) authenticate by certificate instead.
	ClientCert, ClientKey []byte
}

// kubeconfig points at the host through qemu's user network; the serving
// certificate is for 127.0.0.1, hence tls-server-name.
func (s *APIServer) kubeconfig() []byte {
	b64 := base64.StdEncoding.EncodeToString
	var user strings.Builder
	if s.Token != "" {
		fmt.Fprintf(&user, "    token: %q\n", s.Token)
	}
	if len(s.ClientCert) > 0 {
		fmt.Fprintf(&user, "    client-certificate-data: %s\n    client-key-data: %s\n", b64(s.ClientCert), b64(s.ClientKey))
	}
	if user.Len() == 0 {
		user.WriteString("    {}\n")
	}
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: host
  cluster:
    server: https://%s:%d
    tls-server-name: 127.0.0.1
    certificate-authority-data: %s
users:
- name: host
  user:
%scontexts:
- name: host
  context: {cluster: host, user: host}
current-context: host
`, HostAddr, s.Port, b64(s.CA), user.String()))
}

// payloadArchive builds the per-run binaries and files into an archive that
// is appended to the cached base initramfs.
func payloadArchive(root, tmp, nonce string, opts Options) (*archive, error) {
	a := newArchive()
	a.file("/vm/nonce", 0o644, []byte(nonce+"\n"))
	svcproxy := filepath.Join(tmp, "svcproxy")
	if opts.Svcproxy {
		if err := goBuild(root, opts.Tags, "build", "-o", svcproxy, "./cmd/svcproxy"); err != nil {
			return nil, err
		}
		a.hostFile(SvcproxyPath, 0o755, svcproxy)
	}
	if opts.Package != "" {
		bin := filepath.Join(tmp, "test.bin")
		if err := goBuild(root, opts.Tags, "test", "-c", "-o", bin, opts.Package); err != nil {
			return nil, err
		}
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("package %s has no tests to build", opts.Package)
		}
		a.hostFile(TestBinaryPath, 0o755, bin)
	}
	env := map[string]string{}
	for k, v := range opts.Env {
		env[k] = v
	}
	if opts.APIServer != nil {
		a.file(KubeconfigPath, 0o600, opts.APIServer.kubeconfig())
		env["KUBECONFIG"] = KubeconfigPath
	}
	for p, data := range opts.Files {
		a.file(p, 0o755, data)
	}
	script, err := runScript(env, opts)
	if err != nil {
		return nil, err
	}
	a.file("/vm/run.sh", 0o755, []byte(script))
	return a, nil
}

// runScript is what /init runs: the environment, then either the caller's
// script or the test binary.
func runScript(env map[string]string, opts Options) (string, error) {
	var b strings.Builder
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	switch {
	case opts.Script != "":
		b.WriteString(opts.Script + "\n")
	case opts.Package != "":
		// Leave the test binary time to report a hung test before qemu is killed.
		timeout := opts.Timeout - opts.Timeout/5
		args := []string{TestBinaryPath, "-test.v", "-test.timeout=" + timeout.Round(time.Second).String()}
		if opts.Run != "" {
			args = append(args, "-test.run="+opts.Run)
		}
		for _, a := range append(args, opts.Args...) {
			b.WriteString(shellQuote(a) + " ")
		}
		b.WriteString("\n")
	default:
		return "", fmt.Errorf("vm: Options needs Package or Script")
	}
	return b.String(), nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// goBuild runs the go command statically linked, with the caller's GOFLAGS.
func goBuild(root string, tags []string, args ...string) error {
	if len(tags) > 0 {
		args = append(args[:1:1], append([]string{"-tags", strings.Join(tags, ",")}, args[1:]...)...)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
