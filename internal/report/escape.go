package report

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable returns s with every character that could act on a terminal,
// or disguise text, written as a visible escape: C0 controls and DEL as
// \t, \n, \r or \xNN, invalid UTF-8 bytes as \xNN, and C1 controls, bidi
// overrides and isolates (U+202E...), line and paragraph separators,
// zero-width and other non-graphic characters as \uNNNN. A backslash
// becomes \\, so that the result reads back unambiguously. Printable
// characters, in any script, are kept.
//
// Every name in a recording (functions, symbols, modules, threads, the
// command line) comes from the traced process, which may be hostile: a
// thread names itself with prctl(PR_SET_NAME), a program names its
// symbols as it likes. Every output of this package shows such names
// through Printable, so that `livetrace replay` on a terminal, or a
// viewer of an export, never receives a raw escape sequence.
func Printable(s string) string {
	i := 0
	for i < len(s) && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\' {
		i++
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '\\':
				b.WriteString(`\\`)
			case c == '\t':
				b.WriteString(`\t`)
			case c == '\n':
				b.WriteString(`\n`)
			case c == '\r':
				b.WriteString(`\r`)
			case c < 0x20 || c == 0x7f:
				fmt.Fprintf(&b, `\x%02x`, c)
			default:
				b.WriteByte(c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, c)
		case !unicode.IsGraphic(r) && r > 0xffff:
			fmt.Fprintf(&b, `\U%08x`, r)
		case !unicode.IsGraphic(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
