package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// ConfigzGroup is the key kube-proxy's /configz puts its configuration under.
const ConfigzGroup = "kubeproxy.config.k8s.io"

const readHeaderTimeout = 5 * time.Second

// Server serves the metrics bind address: /metrics, /proxyMode, /healthz,
// /configz and, with profiling, /debug/pprof — the same paths as kube-proxy.
type Server struct {
	addr    string
	handler http.Handler
}

// NewServer builds the server for addr ("" disables it). health serves
// /healthz (ProxyHealthServer.HealthzHandler); when nil, /healthz answers a
// plain "ok" as kube-proxy's metrics port does. configz returns the running
// configuration for /configz; nil serves {}.
func NewServer(addr string, proxyMode string, health http.Handler, profiling bool, configz func() any) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, proxyMode)
	})
	if health == nil {
		health = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = fmt.Fprint(w, "ok")
		})
	}
	mux.Handle("/healthz", health)
	mux.HandleFunc("/configz", func(w http.ResponseWriter, _ *http.Request) {
		serveConfigz(w, configz)
	})
	if profiling {
		installProfiling(mux)
	}
	return &Server{addr: addr, handler: mux}
}

// serveConfigz writes {"kubeproxy.config.k8s.io": cfg}, the shape of
// component-base's configz handler that kube-proxy registers under that name.
func serveConfigz(w http.ResponseWriter, configz func() any) {
	configs := map[string]any{}
	if configz != nil {
		configs[ConfigzGroup] = configz()
	}
	body, err := json.Marshal(configs)
	if err != nil {
		http.Error(w, fmt.Sprintf("error marshaling json: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body)
}

// installProfiling mounts the pprof handlers where apiserver's
// routes.Profiling puts them, including the redirect from /debug/pprof.
func installProfiling(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/debug/pprof/", http.StatusFound)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Handler returns the server's routes.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on the address and serves until ctx is done. It returns nil at
// once when the address is empty, and the listen error when it cannot bind,
// so the caller can log it or exit (--bind-address-hard-fail).
func (s *Server) Run(ctx context.Context) error {
	if s.addr == "" {
		klog.V(2).InfoS("Metrics server disabled")
		return nil
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil // cancelled while binding
		}
		return fmt.Errorf("start metrics server on %s: %w", s.addr, err)
	}
	klog.InfoS("Serving metrics", "address", l.Addr().String())
	return s.Serve(ctx, l)
}

// Serve serves on l until ctx is done, then closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: readHeaderTimeout}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server on %s: %w", l.Addr(), err)
	}
	return nil
}
