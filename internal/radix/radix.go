// Package radix sorts machine words by their high bits, for the tables of
// addresses an attach builds: the functions of every module (elfsite)
// and the direct branch targets of every executable section (reloc),
// tens of thousands each, which pdqsort took milliseconds for.
package radix

import "slices"

// SortBy sorts keys by key>>shift, stably: keys equal in those bits keep
// the order they come in. It is a least-significant-digit radix sort, 11
// bits a pass, over the bits that differ between the keys' lowest and
// highest values: two passes for the addresses of a program's 10,000
// functions or a library's text.
func SortBy(keys []uint64, shift uint) {
	if len(keys) < 256 {
		slices.SortStableFunc(keys, func(a, b uint64) int {
			switch {
			case a>>shift < b>>shift:
				return -1
			case a>>shift > b>>shift:
				return 1
			}
			return 0
		})
		return
	}
	lo, hi := ^uint64(0), uint64(0)
	for _, k := range keys {
		lo, hi = min(lo, k>>shift), max(hi, k>>shift)
	}
	const bits = 11
	src, dst := keys, make([]uint64, len(keys))
	for pass := uint(0); pass < 64 && (hi-lo)>>pass != 0; pass += bits {
		var at [1 << bits]int
		for _, k := range src {
			at[(k>>shift-lo)>>pass&(1<<bits-1)]++
		}
		sum := 0
		for d, n := range at {
			at[d] = sum
			sum += n
		}
		for _, k := range src {
			d := (k>>shift - lo) >> pass & (1<<bits - 1)
			dst[at[d]] = k
			at[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &keys[0] {
		copy(keys, src)
	}
}
