package radix

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortBy checks SortBy against a stable sort on the same bits, for
// keys too few to radix-sort, keys whose high bits span one pass, several
// and the whole word, and duplicates.
func TestSortBy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		n     int
		span  uint64 // of the sorted bits
		shift uint
	}{{100, 1 << 40, 0}, {5000, 1 << 10, 0}, {5000, 1 << 20, 23}, {5000, 1 << 41, 23}, {5000, 0, 0}, {20000, 50, 0}, {3000, ^uint64(0), 0}} {
		keys := make([]uint64, c.n)
		for i := range keys {
			hi := uint64(0x7f0000000000)
			if c.span != 0 {
				hi += r.Uint64N(c.span)
			}
			if c.span == ^uint64(0) {
				hi = r.Uint64()
			}
			keys[i] = hi<<c.shift | uint64(i)&(1<<c.shift-1)
			if c.shift == 0 {
				keys[i] = hi
			}
		}
		want := slices.Clone(keys)
		slices.SortStableFunc(want, func(a, b uint64) int { return cmp.Compare(a>>c.shift, b>>c.shift) })
		SortBy(keys, c.shift)
		if !slices.Equal(keys, want) {
			t.Errorf("%d keys, span %#x, shift %d: differs from a stable sort", c.n, c.span, c.shift)
		}
	}
}
