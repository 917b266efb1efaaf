// Package config holds svcproxy's configuration: kube-proxy's published
// KubeProxyConfiguration (v1alpha1) as the one effective configuration, the
// flags that fill it, and the decoding, defaulting and validation that run
// before anything touches the kernel.
package config

// Options holds what kube-proxy has only as command-line flags: settings that
// are not part of KubeProxyConfiguration and so are never read from, or
// written to, a configuration file.
type Options struct {
	// ConfigFile is the path given with --config; empty means the flags make
	// the configuration.
	ConfigFile string
	// WriteConfigTo is the path given with --write-config-to; "-" is stdout.
	WriteConfigTo string
	// Master overrides the API server address found in the kubeconfig.
	Master string
	// Cleanup asks the proxy to remove its rules and exit (--cleanup).
	Cleanup bool
	// InitOnly asks the proxy to do its privileged setup and exit (--init-only).
	InitOnly bool
	// HostnameOverride is the raw --hostname-override value. Unlike the other
	// config-bound flags it wins over the config file, so it is kept apart.
	HostnameOverride string
	// HealthzPort and MetricsPort are kube-proxy's deprecated --healthz-port
	// and --metrics-port; 0 disables the server.
	HealthzPort int32
	MetricsPort int32
}
