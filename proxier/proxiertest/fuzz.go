package proxiertest

// FuzzInput hands out a fuzz target's bytes as small choices, and zeros once they run
// out, so that every input decodes into a valid case and a short input into a small one.
type FuzzInput struct {
	data []byte
	pos  int
}

// NewFuzzInput reads data.
func NewFuzzInput(data []byte) *FuzzInput { return &FuzzInput{data: data} }

// Done reports whether every byte was used.
func (in *FuzzInput) Done() bool { return in.pos >= len(in.data) }

// Pick returns a number in [0, n).
func (in *FuzzInput) Pick(n int) int {
	if in.Done() {
		return 0
	}
	b := in.data[in.pos]
	in.pos++
	return int(b) % n
}

// Choose returns one of values.
func Choose[T any](in *FuzzInput, values ...T) T { return values[in.Pick(len(values))] }
