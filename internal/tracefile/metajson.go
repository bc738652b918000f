package tracefile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// The metadata of a recording of a program with its libc holds tens of
// thousands of functions and symbols, and encoding/json spent about 9 ms
// of CPU on them at every checkpoint (reflection over each field of each
// element): the first checkpoint comes right after the attach, on a
// machine whose CPUs the target may keep busy. marshalMeta encodes those
// two lists itself.

// marshalMeta is json.Marshal(meta), byte for byte, faster: the rest of
// the metadata is left to encoding/json, with Funcs and Symbols spliced in
// where it writes "funcs":null (the first such key is Meta's own: every
// field before it is a number, a time, or holds strings whose quotes
// encoding/json escapes, and Module has no funcs key).
func marshalMeta(meta *Meta) ([]byte, error) {
	m := *meta
	m.Funcs, m.Symbols = nil, nil
	rest, err := json.Marshal(&m)
	if err != nil {
		return nil, err
	}
	key := []byte(`"funcs":null`)
	i := bytes.Index(rest, key)
	if i < 0 {
		return nil, fmt.Errorf("encode metadata: no funcs key in %.100q", rest)
	}
	n := len(rest)
	for i := range meta.Funcs {
		n += len(meta.Funcs[i].Name) + 110 // the longest numbers and keys
	}
	for i := range meta.Symbols {
		n += len(meta.Symbols[i].Name) + 90
	}
	b := make([]byte, 0, n)
	b = append(b, rest[:i]...)
	b = append(b, `"funcs":`...)
	if meta.Funcs == nil {
		b = append(b, "null"...)
	} else if b, err = appendFuncs(b, meta.Funcs); err != nil {
		return nil, err
	}
	if len(meta.Symbols) > 0 {
		b = append(b, `,"symbols":`...)
		b = appendSymbols(b, meta.Symbols)
	}
	return append(b, rest[i+len(key):]...), nil
}

func appendFuncs(b []byte, fs []Func) ([]byte, error) {
	b = append(b, '[')
	for i := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		f := &fs[i]
		if len(f.Args) > 0 || f.Ret != nil {
			// Rare (record -A, -R): leave it to encoding/json.
			e, err := json.Marshal(f)
			if err != nil {
				return nil, err
			}
			b = append(b, e...)
			continue
		}
		b = appendSymbolFields(b, f.Name, f.Module, f.Addr, f.Size)
		b = append(b, `,"site":`...)
		b = strconv.AppendUint(b, f.Site, 10)
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

func appendSymbols(b []byte, ss []Symbol) []byte {
	b = append(b, '[')
	for i := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		s := &ss[i]
		b = appendSymbolFields(b, s.Name, s.Module, s.Addr, s.Size)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendSymbolFields opens an object with the fields Func and Symbol
// share, in their order: name, module, addr and, unless 0, size.
func appendSymbolFields(b []byte, name string, module int, addr, size uint64) []byte {
	b = append(b, `{"name":`...)
	b = appendJSONString(b, name)
	b = append(b, `,"module":`...)
	b = strconv.AppendInt(b, int64(module), 10)
	b = append(b, `,"addr":`...)
	b = strconv.AppendUint(b, addr, 10)
	if size != 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendUint(b, size, 10)
	}
	return b
}

// appendJSONString appends s as encoding/json writes it: quoted, with <, >
// and & escaped for HTML. A string with a control character, a quote, a
// backslash or a byte outside ASCII (which may be invalid UTF-8) is left
// to encoding/json.
func appendJSONString(b []byte, s string) []byte {
	b0 := len(b)
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x80 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		var esc string
		switch c {
		case '<':
			esc = `\u003c`
		case '>':
			esc = `\u003e`
		case '&':
			esc = `\u0026`
		default:
			e, _ := json.Marshal(s) // a string always encodes
			return append(b[:b0], e...)
		}
		b = append(b, s[start:i]...)
		b = append(b, esc...)
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
