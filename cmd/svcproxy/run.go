package main

// PLACEHOLDER — the lead replaces this whole file with the real wiring
// (client, informers, trackers, data planes, healthz and metrics servers).
// Keep the runProxy signature: root.go calls it through runFunc.

import (
	"context"
	"errors"

	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/config"
)

// runProxy runs the proxy until ctx is cancelled. cfg is defaulted and
// validated; opts carries the flag-only settings (master, cleanup, init-only).
func runProxy(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, opts *config.Options) error {
	return errors.New("proxy wiring not built yet")
}
