package main

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
)

// Guest* configure TestScaleGuest, the harness run inside the VM (IPVS mode needs the
// VM kernel); e2e/vmscale sets them from its own environment.
const (
	GuestEnv         = "SVCPROXY_SCALE_GUEST" // "1" runs TestScaleGuest
	GuestServicesEnv = "SVCPROXY_SCALE_SERVICES"
	GuestRunsEnv     = "SVCPROXY_SCALE_RUNS"
	GuestChurnEnv    = "SVCPROXY_SCALE_CHURN" // a Go duration, "0s" skips the churn
	GuestModeEnv     = "SVCPROXY_SCALE_MODE"
	// TableMarker starts the line after which the guest prints the Markdown table.
	TableMarker = "SVCPROXY-SCALE-TABLE"
)

// TestScaleGuest runs the harness with the configuration e2e/vmscale passed and prints
// the table; it fails only when a phase did not work, never on a figure.
func TestScaleGuest(t *testing.T) {
	if os.Getenv(GuestEnv) != "1" {
		t.Skipf("the harness run of e2e/vmscale (set %s=1 there)", GuestEnv)
	}
	bed.RequireRoot(t)
	churn, err := time.ParseDuration(guestEnv(GuestChurnEnv, "60s"))
	if err != nil {
		t.Fatalf("%s: %v", GuestChurnEnv, err)
	}
	cfg := Config{
		Services: guestInt(t, GuestServicesEnv, 1000), Endpoints: 10, Mode: guestEnv(GuestModeEnv, "ipvs"),
		ProxyBinary: bed.ProxyBinary(t), Backends: []string{""}, Runs: guestInt(t, GuestRunsEnv, 1),
		Adds: 20, ChurnRate: 100, ChurnDuration: churn, Workers: 32,
		ColdTimeout: 30 * time.Minute, Logf: t.Logf,
	}
	h, err := NewHarness(context.Background(), bed.API(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var all []Result
	for run := 1; run <= cfg.Runs; run++ {
		t.Run(strconv.Itoa(run), func(t *testing.T) {
			res := h.Run(t, "", run)
			all = append(all, res)
			if len(res.Errors) > 0 {
				t.Errorf("errors: %q", res.Errors)
			}
		})
	}
	// One write, so the console keeps the table's lines together.
	os.Stdout.WriteString("\n" + TableMarker + "\n" + Table(cfg, all) + TableMarker + "\n")
}

func guestEnv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func guestInt(t *testing.T, key string, def int) int {
	v, err := strconv.Atoi(guestEnv(key, strconv.Itoa(def)))
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}
