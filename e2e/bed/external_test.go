package bed

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func TestConnectExternal(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.Header.Get("Authorization") != "Bearer admin-tok" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	u, _ := url.Parse(srv.URL)
	// As inside the VM: the server is reached by another address, the certificate is for 127.0.0.1.
	viaLocalhost := "https://localhost:" + u.Port()

	tests := []struct {
		name, server, serverName, token, wantErr string
	}{
		{name: "direct", server: srv.URL, token: "admin-tok"},
		{name: "other address, tls-server-name 127.0.0.1", server: viaLocalhost, serverName: "127.0.0.1", token: "admin-tok"},
		{name: "certificate name not 127.0.0.1", server: viaLocalhost, token: "admin-tok", wantErr: `checked for "localhost"`},
		{name: "no token", server: srv.URL, wantErr: "no bearer token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kubeconfig")
			cfg := clientcmdapi.NewConfig()
			cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: tc.server, TLSServerName: tc.serverName, CertificateAuthorityData: ca}
			cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: tc.token}
			cfg.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
			cfg.CurrentContext = "x"
			if err := clientcmd.WriteToFile(*cfg, path); err != nil {
				t.Fatal(err)
			}
			a, err := connectExternal(path, "proxy-tok")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Stop()
			host := strings.TrimPrefix(tc.server, "https://")
			if a.URL != "https://127.0.0.1:"+u.Port() || a.forwardTarget() != host || a.ProxyToken != "proxy-tok" || a.AdminToken != "admin-tok" {
				t.Errorf("URL %s, forward target %s, tokens %s/%s", a.URL, a.forwardTarget(), a.AdminToken, a.ProxyToken)
			}
			if b, err := os.ReadFile(a.CAFile); err != nil || string(b) != string(ca) {
				t.Errorf("CA file %s: %v", a.CAFile, err)
			}
		})
	}
}
