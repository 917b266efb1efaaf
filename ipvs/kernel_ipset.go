package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// execIPSets is the real IPSets: one `ipset restore -exist` per batch and
// `ipset save` to read. A batch of any size costs one exec (~2 ms), where
// netlink would cost one round trip per member; reads are rare (start-up,
// errors, periodic resyncs).
type execIPSets struct {
	bin   string
	netns string // path; "" for the current namespace
}

// NewIPSets returns the real IPSets for the namespace at netnsPath ("" for
// the current one). It needs the ipset tool.
func NewIPSets(netnsPath string) (IPSets, error) {
	bin, err := exec.LookPath("ipset")
	if err != nil {
		return nil, fmt.Errorf("ipset tool not found: %w", err)
	}
	return &execIPSets{bin: bin, netns: netnsPath}, nil
}

func (s *execIPSets) run(stdin []byte, args ...string) ([]byte, error) {
	var out, stderr bytes.Buffer
	err := inNetNS(s.netns, func() error {
		cmd := exec.Command(s.bin, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		return cmd.Run()
	})
	if err != nil {
		return out.Bytes(), fmt.Errorf("ipset %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.Bytes(), nil
}

func (s *execIPSets) List() (map[string]*IPSet, error) {
	out, err := s.run(nil, "save")
	if err != nil {
		return nil, err
	}
	return parseSave(out)
}

// parseSave reads `ipset save` output.
func parseSave(out []byte) (map[string]*IPSet, error) {
	res := map[string]*IPSet{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[0] == "create":
			set := &IPSet{Name: f[1], Type: f[2], Members: sets.New[string]()}
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "family" {
					set.Family = v1.IPv4Protocol
					if f[i+1] == "inet6" {
						set.Family = v1.IPv6Protocol
					}
				}
			}
			res[set.Name] = set
		case len(f) >= 3 && f[0] == "add":
			set, ok := res[f[1]]
			if !ok {
				return nil, fmt.Errorf("ipset save: member of unknown set %s", f[1])
			}
			set.Members.Insert(f[2])
		}
	}
	return res, sc.Err()
}

var restoreLineRE = regexp.MustCompile(`Error in line (\d+)`)

func (s *execIPSets) Apply(b *IPSetBatch) error {
	var in bytes.Buffer
	var ops []string
	for _, c := range b.Create {
		ops = append(ops, "create "+c.Name)
		fmt.Fprintf(&in, "create %s %s %s\n", c.Name, c.Type, c.createArgs())
	}
	for _, m := range b.Add {
		ops = append(ops, "add "+m.Set+" "+m.Member)
		fmt.Fprintf(&in, "add %s %s\n", m.Set, m.Member)
	}
	for _, m := range b.Del {
		ops = append(ops, "del "+m.Set+" "+m.Member)
		fmt.Fprintf(&in, "del %s %s\n", m.Set, m.Member)
	}
	for _, n := range b.Flush {
		ops = append(ops, "flush "+n)
		fmt.Fprintf(&in, "flush %s\n", n)
	}
	for _, n := range b.Destroy {
		ops = append(ops, "destroy "+n)
		fmt.Fprintf(&in, "destroy %s\n", n)
	}
	_, err := s.run(in.Bytes(), "restore", "-exist")
	if err == nil {
		return nil
	}
	idx := len(ops)
	if m := restoreLineRE.FindStringSubmatch(err.Error()); m != nil {
		if n, _ := strconv.Atoi(m[1]); n >= 1 && n <= len(ops) {
			idx = n - 1
		}
	}
	op := "restore"
	if idx < len(ops) {
		op = ops[idx]
	}
	return &BatchError{Index: idx, Op: op, Err: err}
}

// inNetNS runs f, and the processes it starts, in the namespace at path.
// Children inherit the namespace of the thread that forks them, so f runs
// on a locked thread switched into it; the thread is never unlocked and
// exits with its goroutine, so the switch cannot leak.
func inNetNS(path string, f func() error) error {
	if path == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
