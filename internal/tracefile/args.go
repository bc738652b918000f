package tracefile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"unsafe"
)

// MaxArgs is the largest encoded [Event.Args], in bytes.
const MaxArgs = 1024

// Argument value formats (ArgSpec.Format), as uftrace spells them.
const (
	FormatDecimal  = "d" // signed integer
	FormatUnsigned = "u" // unsigned integer
	FormatHex      = "x" // hexadecimal
	FormatString   = "s" // char *: the string it points to
	FormatChar     = "c" // a character
	FormatPointer  = "p" // an address
	FormatFloat    = "f" // double (a return value in xmm0)
)

// ArgSpec says how one captured value prints.
type ArgSpec struct {
	// Reg is the argument's register, 1..6 (rdi, rsi, rdx, rcx, r8, r9);
	// 0 for the return value.
	Reg int `json:"reg"`
	// Format is one of the Format constants.
	Format string `json:"fmt"`
	// Size is the value's size in bytes for d/u/x (1, 2, 4 or 8; 0
	// means 8): the upper bytes of the register are not part of it.
	Size int `json:"size,omitempty"`
	// Name is the argument's name (from DWARF), "" when unknown.
	Name string `json:"name,omitempty"`
	// Enum names the values of an enumeration type, if any.
	Enum map[int64]string `json:"enum,omitempty"`
}

// Value is one decoded captured value.
type Value struct {
	Reg  int    // 1..6: the argument register; 0: the return value
	Raw  uint64 // the register (for a string: the pointer)
	Str  bool   // the pointer was read as a string
	Bad  bool   // ... and was not readable (NULL or unmapped)
	Cut  bool   // ... and had no NUL within the bytes read
	Text string // ... the bytes read, without the NUL
}

// Spec bits of the encoded values (the agent's LT_SPEC_*).
const (
	argSpecArgs     = 0x3f
	argSpecStrShift = 8
	argSpecRet      = 1 << 16
	argSpecRetFloat = 1 << 17
	argStrBad       = 0xff
	argStrTrunc     = 0x80
)

// errArgs is the error of a malformed Event.Args.
var errArgs = errors.New("malformed argument values")

// EncodeArgs encodes the values the agent captured: spec, the bits of
// the site's spec they hold, and payload, the agent's bytes (docs/FORMAT.md,
// "Argument values"). It checks that payload matches spec.
func EncodeArgs(spec uint32, payload []byte) (string, error) {
	var a ArgsArena
	return a.encode(spec, payload, 0)
}

// ArgsArena is EncodeArgs for a stream of events: its strings are cut
// from shared blocks of argsBlock bytes, one allocation a block instead
// of one an event. A string keeps its whole block alive; the bytes of a
// block are never written again once a string points into them. The zero
// value is ready to use; it is not safe for concurrent use.
type ArgsArena struct{ buf []byte }

const argsBlock = 64 << 10

// Encode is EncodeArgs.
func (a *ArgsArena) Encode(spec uint32, payload []byte) (string, error) {
	return a.encode(spec, payload, argsBlock)
}

func (a *ArgsArena) encode(spec uint32, payload []byte, block int) (string, error) {
	if err := CheckArgs(spec, payload); err != nil {
		return "", err
	}
	var v [binary.MaxVarintLen32]byte
	n := binary.PutUvarint(v[:], uint64(spec))
	need := n + len(payload)
	if cap(a.buf)-len(a.buf) < need {
		a.buf = make([]byte, 0, max(block, need))
	}
	start := len(a.buf)
	a.buf = append(a.buf, v[:n]...)
	a.buf = append(a.buf, payload...)
	return unsafe.String(&a.buf[start], need), nil
}

// CheckArgs reports whether [EncodeArgs] would take spec and payload,
// without encoding them.
func CheckArgs(spec uint32, payload []byte) error {
	var v [binary.MaxVarintLen32]byte
	if need := binary.PutUvarint(v[:], uint64(spec)) + len(payload); need > MaxArgs {
		return fmt.Errorf("%w: %d bytes", errArgs, need)
	}
	return checkArgs(spec, payload)
}

// checkArgs is [DecodeArgs]'s check of payload against spec, without
// decoding the values.
func checkArgs(spec uint32, b []byte) error {
	if spec&argSpecRet != 0 {
		if spec&^(argSpecRet|argSpecRetFloat) != 0 {
			return fmt.Errorf("%w: spec %#x mixes a return value and arguments", errArgs, spec)
		}
		if len(b) != 8 {
			return fmt.Errorf("%w: return value of %d bytes", errArgs, len(b))
		}
		return nil
	}
	if spec&^(argSpecArgs|argSpecArgs<<argSpecStrShift) != 0 || spec&argSpecArgs == 0 ||
		(spec>>argSpecStrShift)&^spec&argSpecArgs != 0 {
		return fmt.Errorf("%w: bad spec %#x", errArgs, spec)
	}
	regs := bits.OnesCount32(spec & argSpecArgs)
	if len(b) < 8*regs {
		return fmt.Errorf("%w: arguments truncated", errArgs)
	}
	b = b[8*regs:]
	for i := 0; i < 6; i++ {
		if spec&(1<<(argSpecStrShift+i)) == 0 {
			continue
		}
		if len(b) < 1 {
			return fmt.Errorf("%w: string of argument %d truncated", errArgs, i+1)
		}
		l := b[0]
		b = b[1:]
		if l == argStrBad {
			continue
		}
		ln := int(l &^ argStrTrunc)
		if len(b) < ln {
			return fmt.Errorf("%w: string of argument %d truncated", errArgs, i+1)
		}
		b = b[ln:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errArgs, len(b))
	}
	return nil
}

// DecodeArgs decodes an [Event.Args]: the arguments in register order, or
// the return value.
func DecodeArgs(a string) ([]Value, error) {
	b := []byte(a)
	spec, n := binary.Uvarint(b)
	if n <= 0 || spec > 0xffffffff {
		return nil, fmt.Errorf("%w: bad spec", errArgs)
	}
	b = b[n:]
	u64 := func() (uint64, bool) {
		if len(b) < 8 {
			return 0, false
		}
		v := binary.LittleEndian.Uint64(b)
		b = b[8:]
		return v, true
	}
	var out []Value
	if spec&argSpecRet != 0 {
		if spec&^(argSpecRet|argSpecRetFloat) != 0 {
			return nil, fmt.Errorf("%w: spec %#x mixes a return value and arguments", errArgs, spec)
		}
		v, ok := u64()
		if !ok || len(b) != 0 {
			return nil, fmt.Errorf("%w: return value of %d bytes", errArgs, len(b))
		}
		return []Value{{Reg: 0, Raw: v}}, nil
	}
	if spec&^(argSpecArgs|argSpecArgs<<argSpecStrShift) != 0 || spec&argSpecArgs == 0 ||
		(spec>>argSpecStrShift)&^spec&argSpecArgs != 0 {
		return nil, fmt.Errorf("%w: bad spec %#x", errArgs, spec)
	}
	for i := 0; i < 6; i++ {
		if spec&(1<<i) == 0 {
			continue
		}
		v, ok := u64()
		if !ok {
			return nil, fmt.Errorf("%w: argument %d truncated", errArgs, i+1)
		}
		out = append(out, Value{Reg: i + 1, Raw: v})
	}
	for k := range out {
		if spec&(1<<(argSpecStrShift+out[k].Reg-1)) == 0 {
			continue
		}
		if len(b) < 1 {
			return nil, fmt.Errorf("%w: string of argument %d truncated", errArgs, out[k].Reg)
		}
		l := b[0]
		b = b[1:]
		out[k].Str = true
		if l == argStrBad {
			out[k].Bad = true
			continue
		}
		ln := int(l &^ argStrTrunc)
		if len(b) < ln {
			return nil, fmt.Errorf("%w: string of argument %d truncated", errArgs, out[k].Reg)
		}
		out[k].Cut = l&argStrTrunc != 0
		out[k].Text = string(b[:ln])
		b = b[ln:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errArgs, len(b))
	}
	return out, nil
}
