package tracefile

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// randomMeta returns metadata with n functions and symbols whose names
// mix plain identifiers, C++ names (<, >, &), quotes, backslashes, control
// characters, non-ASCII and invalid UTF-8.
func randomMeta(r *rand.Rand, n int) *Meta {
	pieces := []string{"fn_", "std::vector<int>", "operator&&", "a\"b", `c\d`, "\x01", "\n", "é", "日本", "\xff\xfe", "<>&", "x", "_Z3foov", " "}
	name := func() string {
		var b bytes.Buffer
		for k := r.IntN(4); k >= 0; k-- {
			b.WriteString(pieces[r.IntN(len(pieces))])
		}
		return b.String()
	}
	m := &Meta{Mode: ModeGraph, PID: 42, Comm: "t<e>st", Start: time.Unix(1700000000, 5).UTC(),
		Modules: []Module{{Path: "/bin/x", Base: 0x400000}}}
	for i := 0; i < n; i++ {
		f := Func{Name: name(), Module: r.IntN(3) - 1, Addr: r.Uint64(), Site: r.Uint64()}
		if r.IntN(2) == 0 {
			f.Size = r.Uint64N(1 << 20)
		}
		switch r.IntN(10) {
		case 0:
			f.Args = []ArgSpec{{Reg: 1, Format: "d"}}
		case 1:
			f.Ret = &ArgSpec{Format: "x"}
		}
		m.Funcs = append(m.Funcs, f)
		s := Symbol{Name: name(), Module: r.IntN(3) - 1, Addr: r.Uint64()}
		if r.IntN(2) == 0 {
			s.Size = r.Uint64N(1 << 20)
		}
		m.Symbols = append(m.Symbols, s)
	}
	return m
}

// TestMarshalMeta checks that the metadata's own encoder writes what
// encoding/json writes, byte for byte, for random names, for metadata
// without functions or symbols (nil and empty), and for changes whose
// funcs key is null.
func TestMarshalMeta(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	metas := []*Meta{{Mode: ModeEntry}, {Mode: ModeEntry, Funcs: []Func{}, Symbols: []Symbol{}},
		{Mode: ModeEntry, Symbols: []Symbol{{Name: "s"}}, Changes: []Change{{Op: "load", Globs: []string{`"funcs":null`}}}},
		{Mode: ModeEntry, Comm: `"funcs":null`, Funcs: []Func{{Name: "f"}}, Changes: []Change{{Op: "enable"}}}}
	for i := 0; i < 50; i++ {
		metas = append(metas, randomMeta(r, r.IntN(40)))
	}
	for i, m := range metas {
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := marshalMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("meta %d: encodings differ:\n got %s\nwant %s", i, got, want)
		}
		// The strings themselves are written as encoding/json writes them.
		for _, f := range m.Funcs {
			w, _ := json.Marshal(f.Name)
			if g := appendJSONString(nil, f.Name); !bytes.Equal(g, w) {
				t.Fatalf("name %q: %s, want %s", f.Name, g, w)
			}
		}
	}
}

// BenchmarkMarshalMeta compares the metadata's encoder with encoding/json
// on metadata the size of a program of 10,000 functions and its libc.
func BenchmarkMarshalMeta(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	m := &Meta{Mode: ModeEntry}
	for i := 0; i < 17000; i++ {
		name := "fn_" + string(rune('a'+r.IntN(26))) + "_some_function_name"
		if i < 10000 {
			m.Funcs = append(m.Funcs, Func{Name: name, Addr: r.Uint64(), Size: 64, Site: r.Uint64()})
		}
		m.Symbols = append(m.Symbols, Symbol{Name: name, Module: 1, Addr: r.Uint64(), Size: 64})
	}
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("own", func(b *testing.B) {
		for b.Loop() {
			if _, err := marshalMeta(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
