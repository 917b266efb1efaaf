package conntrack

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/sysctl"
)

// fakeHashSize is the hashsize module parameter in memory.
type fakeHashSize struct {
	value    int
	readOnly bool
	writes   []int
}

func (f *fakeHashSize) Get() (int, error) { return f.value, nil }

func (f *fakeHashSize) Set(v int) error {
	if f.readOnly {
		return fmt.Errorf("write hashsize: %w", sysctl.ErrReadOnly)
	}
	f.value = v
	f.writes = append(f.writes, v)
	return nil
}

// brokenSetter fails Set of one key with an error that is neither
// read-only nor missing, like an I/O error.
type brokenSetter struct {
	*sysctl.Fake
	key string
}

func (b brokenSetter) Set(name, value string) error {
	if name == b.key {
		return errors.New("input/output error")
	}
	return b.Fake.Set(name, value)
}

func i32(v int32) *int32 { return &v }

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

// kernelDefaults are a fresh kernel's values.
func kernelDefaults() map[string]string {
	return map[string]string{
		sysctlMax:              "65536",
		sysctlTCPEstablished:   "432000",
		sysctlTCPCloseWait:     "60",
		sysctlTCPBeLiberal:     "0",
		sysctlUDPTimeout:       "30",
		sysctlUDPTimeoutStream: "120",
	}
}

// kubeProxyDefaults is the default conntrack configuration.
func kubeProxyDefaults() v1alpha1.KubeProxyConntrackConfiguration {
	return v1alpha1.KubeProxyConntrackConfiguration{
		MaxPerCore:            i32(32768),
		Min:                   i32(131072),
		TCPEstablishedTimeout: dur(24 * time.Hour),
		TCPCloseWaitTimeout:   dur(time.Hour),
	}
}

func TestConntrackMax(t *testing.T) {
	tests := []struct {
		name       string
		maxPerCore *int32
		min        *int32
		cpus       int
		want       int
	}{
		{"min wins on a small node", i32(32768), i32(131072), 2, 131072},
		{"per core wins on a bigger node", i32(32768), i32(131072), 8, 262144},
		{"capped at 1Mi", i32(32768), i32(131072), 64, 1 << 20},
		{"min above the cap is still honoured", i32(32768), i32(2 << 20), 64, 2 << 20},
		{"zero per core leaves it alone", i32(0), i32(131072), 8, 0},
		{"unset per core leaves it alone", nil, i32(131072), 8, 0},
		{"no min", i32(1000), nil, 2, 2000},
		{"bogus CPU count counts as one", i32(1000), nil, 0, 1000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := v1alpha1.KubeProxyConntrackConfiguration{MaxPerCore: tc.maxPerCore, Min: tc.min}
			if got := ConntrackMax(cfg, tc.cpus); got != tc.want {
				t.Errorf("ConntrackMax = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestApplySysctls(t *testing.T) {
	tests := []struct {
		name     string
		cfg      func(*v1alpha1.KubeProxyConntrackConfiguration)
		cpus     int
		initial  func(map[string]string)
		hashSize int
		// hashReadOnly makes the hashsize parameter refuse writes.
		hashReadOnly bool
		// readOnly makes these keys read-only; "" makes the whole tree read-only.
		readOnly []string
		// broken fails Set of this key with an unexpected error.
		broken     string
		wantWrites []string
		wantHash   []int
		wantErr    bool
	}{
		{
			name:       "kube-proxy defaults on a fresh 2-CPU kernel",
			cpus:       2,
			hashSize:   16384,
			wantWrites: []string{sysctlMax + "=131072", sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
			wantHash:   []int{32768},
		},
		{
			name:       "max capped at 1Mi on 64 CPUs",
			cpus:       64,
			hashSize:   16384,
			wantWrites: []string{sysctlMax + "=1048576", sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
			wantHash:   []int{262144},
		},
		{
			name:       "max and hashsize are only ever raised",
			cpus:       2,
			initial:    func(m map[string]string) { m[sysctlMax] = "2000000" },
			hashSize:   500000,
			wantWrites: []string{sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
		},
		{
			name:       "maxPerCore 0 leaves max and hashsize alone",
			cfg:        func(c *v1alpha1.KubeProxyConntrackConfiguration) { c.MaxPerCore = i32(0) },
			cpus:       2,
			hashSize:   16384,
			wantWrites: []string{sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
		},
		{
			name: "zero or unset timeouts leave the kernel's values",
			cfg: func(c *v1alpha1.KubeProxyConntrackConfiguration) {
				*c = v1alpha1.KubeProxyConntrackConfiguration{MaxPerCore: i32(0), TCPCloseWaitTimeout: dur(0)}
			},
			cpus:     2,
			hashSize: 16384,
		},
		{
			name: "be-liberal and UDP timeouts",
			cfg: func(c *v1alpha1.KubeProxyConntrackConfiguration) {
				*c = v1alpha1.KubeProxyConntrackConfiguration{
					TCPBeLiberal:     true,
					UDPTimeout:       metav1.Duration{Duration: 45 * time.Second},
					UDPStreamTimeout: metav1.Duration{Duration: 150 * time.Second},
				}
			},
			cpus:       2,
			hashSize:   16384,
			wantWrites: []string{sysctlTCPBeLiberal + "=1", sysctlUDPTimeout + "=45", sysctlUDPTimeoutStream + "=150"},
		},
		{
			name: "values already in place are not rewritten",
			initial: func(m map[string]string) {
				m[sysctlMax] = "131072"
				m[sysctlTCPEstablished] = "86400"
				m[sysctlTCPCloseWait] = "3600"
			},
			cpus:     2,
			hashSize: 32768,
		},
		{
			name:       "read-only nf_conntrack_max (non-init namespace) is a warning and skips hashsize",
			cpus:       2,
			hashSize:   16384,
			readOnly:   []string{sysctlMax},
			wantWrites: []string{sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
		},
		{
			name:     "read-only /proc/sys is a warning",
			cpus:     2,
			hashSize: 16384,
			readOnly: []string{""},
		},
		{
			name:       "missing keys are a warning",
			cfg:        func(c *v1alpha1.KubeProxyConntrackConfiguration) { c.UDPTimeout.Duration = time.Minute },
			initial:    func(m map[string]string) { delete(m, sysctlUDPTimeout); delete(m, sysctlTCPCloseWait) },
			cpus:       2,
			hashSize:   16384,
			wantWrites: []string{sysctlMax + "=131072", sysctlTCPEstablished + "=86400"},
			wantHash:   []int{32768},
		},
		{
			name:         "read-only hashsize is a warning",
			cpus:         2,
			hashSize:     16384,
			hashReadOnly: true,
			wantWrites:   []string{sysctlMax + "=131072", sysctlTCPEstablished + "=86400", sysctlTCPCloseWait + "=3600"},
		},
		{
			name:       "an unexpected error is returned after the other keys are set",
			cpus:       2,
			hashSize:   16384,
			broken:     sysctlTCPEstablished,
			wantWrites: []string{sysctlMax + "=131072", sysctlTCPCloseWait + "=3600"},
			wantHash:   []int{32768},
			wantErr:    true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := kubeProxyDefaults()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			values := kernelDefaults()
			if tc.initial != nil {
				tc.initial(values)
			}
			fake := sysctl.NewFake(values)
			for _, k := range tc.readOnly {
				fake.SetReadOnly(k)
			}
			var s sysctl.Setter = fake
			if tc.broken != "" {
				s = brokenSetter{Fake: fake, key: tc.broken}
			}
			hs := &fakeHashSize{value: tc.hashSize, readOnly: tc.hashReadOnly}

			err := applySysctls(s, hs, cfg, tc.cpus)
			if (err != nil) != tc.wantErr {
				t.Errorf("applySysctls error = %v, want error: %v", err, tc.wantErr)
			}
			if got := fake.Writes(); !reflect.DeepEqual(got, tc.wantWrites) {
				t.Errorf("sysctl writes = %q, want %q", got, tc.wantWrites)
			}
			if !reflect.DeepEqual(hs.writes, tc.wantHash) {
				t.Errorf("hashsize writes = %v, want %v", hs.writes, tc.wantHash)
			}
		})
	}
}
