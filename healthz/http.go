package healthz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// readHeaderTimeout bounds slow clients; probes send tiny requests.
const readHeaderTimeout = 5 * time.Second

// addrEnabled reports whether a bind address asks for a server: kube-proxy
// disables its health server with an empty address or port 0.
func addrEnabled(addr string) (bool, error) {
	if addr == "" {
		return false, nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("parse %q: %w", addr, err)
	}
	return port != "0", nil
}

// serveUntilDone serves h on l until ctx is done; a shutdown is not an error.
func serveUntilDone(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
