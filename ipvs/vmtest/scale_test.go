package vmtest

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestGuestScale measures a cold sync and a one-endpoint change at the
// service counts given by -scale (10 endpoints each).
func TestGuestScale(t *testing.T) {
	guestOnly(t)
	if *scale == "" {
		t.Skip("no -scale given")
	}
	for _, s := range strings.Split(*scale, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(s, func(t *testing.T) {
			nd := newNode(t, "scale"+s)
			opts := ipvs.DefaultOptions()
			nd.setup(t, opts)
			p := ipvs.NewProxier(nd.kernel, opts, nil)
			defer ipvs.Cleanup(nd.kernel, opts)
			base := proxiertest.Snapshot(proxiertest.Config{Services: n, EndpointsPerService: 10})
			start := time.Now()
			cold := sync(t, p, base)
			t.Logf("SCALE services=%d cold sync: %v, calls %+v", n, time.Since(start), cold.Calls)
			for i, snap := range []*proxier.Snapshot{proxiertest.WithEndpointChange(base, n/2), base} {
				start := time.Now()
				st := sync(t, p, snap)
				t.Logf("SCALE services=%d one-endpoint change %d: %v, calls %+v", n, i, time.Since(start), st.Calls)
			}
			p.ForceFullSync()
			start = time.Now()
			st := sync(t, p, base)
			t.Logf("SCALE services=%d full re-read: %v, calls %+v", n, time.Since(start), st.Calls)
		})
	}
}
