package ipvs

import (
	"fmt"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/util/sets"
)

// FakeIPSets is an IPSets in memory with `ipset restore -exist` semantics.
type FakeIPSets struct {
	mu sync.Mutex
	fakeCalls
	sets map[string]*IPSet
}

var _ IPSets = (*FakeIPSets)(nil)

func NewFakeIPSets() *FakeIPSets { return &FakeIPSets{sets: map[string]*IPSet{}} }

func (f *FakeIPSets) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *FakeIPSets) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// Members returns a set's members, sorted; nil if the set does not exist.
func (f *FakeIPSets) Members(name string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return nil
	}
	return sets.List(s.Members)
}

// Names lists the existing sets, sorted.
func (f *FakeIPSets) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.sets {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (f *FakeIPSets) List() (map[string]*IPSet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("List"); err != nil {
		return nil, err
	}
	out := make(map[string]*IPSet, len(f.sets))
	for n, s := range f.sets {
		c := *s
		c.Members = s.Members.Clone()
		out[n] = &c
	}
	return out, nil
}

// Apply records "Apply create=N add=N del=N flush=N destroy=N" and runs the
// batch in order, stopping at the first failing operation.
func (f *FakeIPSets) Apply(b *IPSetBatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("Apply create=%d add=%d del=%d flush=%d destroy=%d",
		len(b.Create), len(b.Add), len(b.Del), len(b.Flush), len(b.Destroy))); err != nil {
		return &BatchError{Index: 0, Op: "batch", Err: err}
	}
	i := 0
	fail := func(op string, err error) error { return &BatchError{Index: i, Op: op, Err: err} }
	for _, c := range b.Create {
		if s, ok := f.sets[c.Name]; ok {
			if s.Type != c.Type || s.Family != c.Family && c.Type != setTypeBitmapPort {
				return fail("create "+c.Name, fmt.Errorf("set with the same name already exists"))
			}
		} else {
			f.sets[c.Name] = &IPSet{Name: c.Name, Type: c.Type, Family: c.Family, Members: sets.New[string]()}
		}
		i++
	}
	for _, m := range b.Add {
		s, ok := f.sets[m.Set]
		if !ok {
			return fail("add "+m.Set+" "+m.Member, fmt.Errorf("the set with the given name does not exist"))
		}
		s.Members.Insert(m.Member)
		i++
	}
	for _, m := range b.Del {
		s, ok := f.sets[m.Set]
		if !ok {
			return fail("del "+m.Set+" "+m.Member, fmt.Errorf("the set with the given name does not exist"))
		}
		s.Members.Delete(m.Member)
		i++
	}
	for _, n := range b.Flush {
		if s, ok := f.sets[n]; ok {
			s.Members.Clear()
		}
		i++
	}
	for _, n := range b.Destroy {
		if _, ok := f.sets[n]; !ok {
			return fail("destroy "+n, fmt.Errorf("the set with the given name does not exist"))
		}
		delete(f.sets, n)
		i++
	}
	return nil
}
