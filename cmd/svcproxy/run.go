package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/healthz"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
)

// runProxy runs the proxy until ctx is cancelled. cfg is defaulted and
// validated; opts carries the flag-only settings (master, cleanup, init-only).
func runProxy(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, opts *config.Options) error {
	nodeName, err := config.NodeName(cfg)
	if err != nil {
		return err
	}
	families := ipFamilies()
	if opts.Cleanup {
		return cleanupAll(families, cfg)
	}
	if cfg.Mode == config.ModeIPVS {
		if err := checkIPVS(cfg); err != nil {
			return err
		}
	}
	if err := platformSetup(cfg, families); err != nil {
		return err
	}
	if opts.InitOnly {
		klog.InfoS("Init-only: privileged setup done, exiting", "mode", cfg.Mode)
		return nil
	}
	setOOMScoreAdj(cfg.OOMScoreAdj)

	client, err := newClient(cfg, opts.Master)
	if err != nil {
		return err
	}
	recorder, stopEvents := newRecorder(client, nodeName)
	defer stopEvents()

	node := waitForNode(ctx, client, nodeName, proxier.NodeWaitTimeout)
	bind, _ := netip.ParseAddr(cfg.BindAddress)
	planes, err := newDataPlanes(cfg, families, node, nodeName, bind)
	if err != nil {
		return err
	}
	if cfg.Mode == config.ModeIPVS {
		recorder.Eventf(nodeRef(nodeName), v1.EventTypeNormal, "IPVSMode",
			"svcproxy runs in IPVS mode; unlike upstream kube-proxy, this mode is maintained here")
	}

	syncPeriod, minSync := syncPeriods(cfg)
	health := healthz.NewProxyHealthServer(cfg.HealthzBindAddress, 2*syncPeriod, families, clock.RealClock{})
	serviceHealth := healthz.NewServiceHealthServer(healthCheckAddresses(cfg, families, node, bind), recorder, health.IsHealthy)
	defer serviceHealth.Close()
	metricsServer := metrics.NewServer(cfg.MetricsBindAddress, string(cfg.Mode), health.HealthzHandler(),
		cfg.EnableProfiling, func() any { return cfg })

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p := proxier.New(proxier.Options{
		NodeName:      nodeName,
		Families:      families,
		DataPlanes:    planes,
		BindAddress:   bind,
		MinSyncPeriod: minSync,
		RetryPeriod:   syncPeriod,
		MaxSyncPeriod: maxSyncPeriod(cfg),
		VerifyPeriod:  syncPeriod,
		Health:        health,
		ServiceHealth: serviceHealth,
		Recorder:      recorder,
		Clock:         clock.RealClock{},
		// kube-proxy exits too: rules built for the old addresses are wrong,
		// and the DaemonSet restarts it with the new ones.
		OnNodeIPsChanged: func() { cancel(errors.New("node IPs changed, restarting to pick them up")) },
	})
	serve(ctx, cancel, "healthz", health.Run, cfg.BindAddressHardFail)
	serve(ctx, cancel, "metrics", metricsServer.Run, cfg.BindAddressHardFail)
	proxier.StartInformers(ctx, client, nodeName, cfg.ConfigSyncPeriod.Duration, p)
	klog.InfoS("Starting svcproxy", "version", version, "mode", cfg.Mode, "node", nodeName, "families", families)
	err = p.Run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// serve runs a server in the background. A bind failure is fatal only with
// --bind-address-hard-fail, as in kube-proxy.
func serve(ctx context.Context, cancel context.CancelCauseFunc, name string, run func(context.Context) error, hardFail bool) {
	go func() {
		err := run(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		if hardFail {
			cancel(fmt.Errorf("%s server: %w", name, err))
			return
		}
		klog.ErrorS(err, "Server failed; continuing without it (set --bind-address-hard-fail to make this fatal)", "server", name)
	}()
}

// syncPeriods returns the active mode's sync period and minimum sync period.
func syncPeriods(cfg *v1alpha1.KubeProxyConfiguration) (period, min time.Duration) {
	if cfg.Mode == config.ModeIPVS {
		return cfg.IPVS.SyncPeriod.Duration, cfg.IPVS.MinSyncPeriod.Duration
	}
	return cfg.IPTables.SyncPeriod.Duration, cfg.IPTables.MinSyncPeriod.Duration
}

// maxSyncPeriod bounds the time between syncs. iptables mode, like
// kube-proxy's, relies on change tracking plus a verification every sync
// period, and forces a sync hourly; IPVS mode reconciles every sync period.
func maxSyncPeriod(cfg *v1alpha1.KubeProxyConfiguration) time.Duration {
	if cfg.Mode == config.ModeIPVS {
		return cfg.IPVS.SyncPeriod.Duration
	}
	return iptables.DefaultFullSyncPeriod
}

// ipFamilies is kube-proxy's rule: IPv4 always, IPv6 too when the kernel has it.
func ipFamilies() []v1.IPFamily {
	families := []v1.IPFamily{v1.IPv4Protocol}
	if _, err := os.Stat("/proc/net/if_inet6"); err == nil {
		families = append(families, v1.IPv6Protocol)
	}
	return families
}

func setOOMScoreAdj(v *int32) {
	if v == nil {
		return
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(*v))), 0o644); err != nil {
		klog.InfoS("Could not set oom_score_adj", "value", *v, "err", err)
	}
}
