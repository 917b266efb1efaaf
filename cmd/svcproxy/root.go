package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/config"
)

// version is set at build time: go build -ldflags "-X main.version=v0.1.0".
var version = "dev"

// runFunc starts the proxy with a validated configuration and returns when
// ctx is cancelled or the proxy fails. runProxy (run.go) is the real one.
type runFunc func(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, opts *config.Options) error

func newRootCommand(run runFunc) *cobra.Command {
	flagCfg, opts := &v1alpha1.KubeProxyConfiguration{}, &config.Options{}
	cmd := &cobra.Command{
		Use:   "svcproxy",
		Short: "svcproxy: a Kubernetes service proxy (iptables and IPVS), compatible with kube-proxy",
		Long: `svcproxy watches Services and EndpointSlices and programs the node's
iptables or IPVS rules so that Service traffic reaches its endpoints. It
accepts kube-proxy's flags and its KubeProxyConfiguration file (--config).`,
		Version: version,
		Args:    cobra.NoArgs,
		// Errors are printed once, by execute; usage is for --help only.
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Complete(cmd.Flags(), flagCfg, opts)
			if err != nil {
				return err
			}
			if err := config.Validate(cfg); err != nil {
				return err
			}
			if opts.WriteConfigTo != "" {
				return writeConfig(cmd, cfg, opts.WriteConfigTo)
			}
			return run(cmd.Context(), cfg, opts)
		},
	}
	cmd.CompletionOptions.DisableDefaultCmd = true
	config.AddFlags(cmd.Flags(), flagCfg, opts)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	cmd.SetVersionTemplate("svcproxy {{.Version}}\n")
	cmd.AddCommand(newTraceCommand())
	cmd.AddCommand(newRenderCommand())
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the svcproxy version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "svcproxy %s\n", version)
			return err
		},
	})
	return cmd
}

func writeConfig(cmd *cobra.Command, cfg *v1alpha1.KubeProxyConfiguration, path string) error {
	if path == "-" {
		return config.Encode(cmd.OutOrStdout(), cfg)
	}
	if err := config.Write(cfg, path); err != nil {
		return err
	}
	klog.InfoS("Wrote configuration", "file", path)
	return nil
}
