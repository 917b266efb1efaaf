package conntrack

import (
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
)

// Fake is an in-memory conntrack table. It keeps its flows, so a test asks
// what is left rather than which calls were made.
type Fake struct {
	mu    sync.Mutex
	flows []Flow
	// ListErr and DeleteErr, when set, are returned by the next List or
	// Delete (Delete then deletes nothing).
	ListErr, DeleteErr error
	lists, deletes     int
}

// NewFake returns a table holding flows.
func NewFake(flows ...Flow) *Fake {
	return &Fake{flows: slices.Clone(flows)}
}

// Add inserts flows, as traffic would.
func (f *Fake) Add(flows ...Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows = append(f.flows, flows...)
}

// Flows returns the family's flows in insertion order.
func (f *Fake) Flows(family v1.IPFamily) []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Flow
	for _, fl := range f.flows {
		if fl.Family() == family {
			out = append(out, fl)
		}
	}
	return out
}

// Calls returns how many List and Delete calls were made.
func (f *Fake) Calls() (lists, deletes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists, f.deletes
}

func (f *Fake) List(family v1.IPFamily) ([]Flow, error) {
	f.mu.Lock()
	f.lists++
	err := f.ListErr
	f.ListErr = nil
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.Flows(family), nil
}

func (f *Fake) Delete(family v1.IPFamily, flows []Flow) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes++
	if err := f.DeleteErr; err != nil {
		f.DeleteErr = nil
		return 0, err
	}
	gone := make(map[Flow]bool, len(flows))
	for _, fl := range flows {
		if fl.Family() == family {
			gone[fl] = true
		}
	}
	kept := f.flows[:0]
	n := 0
	for _, fl := range f.flows {
		if gone[fl] {
			n++
			continue
		}
		kept = append(kept, fl)
	}
	f.flows = kept
	return n, nil
}
