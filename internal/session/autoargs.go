package session

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/livetrace/livetrace/internal/elfsite"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// autoSpec is what record -a captures of one function, from DWARF.
type autoSpec struct {
	args []tracefile.ArgSpec
	ret  *tracefile.ArgSpec
}

// errNoDWARF means a module has no debug information, in the file or in
// a separate debug file found by build ID.
var errNoDWARF = errors.New("no DWARF debug information")

// autoArgs reads the DWARF of module mi and returns the specs of its
// functions by link-time entry address. Only the arguments passed in the
// six integer registers are taken: integers, enums (with their value
// names), pointers (char pointers as strings), until the first argument
// that is not one of those (a struct by value, a float or a long double
// changes how the rest are passed, and is not captured).
func (s *Session) autoArgs(mi int) (specs map[uint64]autoSpec, err error) {
	m := s.mods[mi]
	if len(m.Mappings) == 0 {
		return nil, errNoDWARF
	}
	f, err := elfsite.OpenMappedFile(s.pid, m.Mappings[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, err
	}
	defer func() {
		// debug/dwarf reads the target's file: a malformed one must be
		// an error, not a crash of the tracer.
		if r := recover(); r != nil {
			specs, err = nil, fmt.Errorf("malformed DWARF: %v", r)
		}
	}()
	d, err := ef.DWARF()
	if err != nil || !hasInfo(d) {
		d, err = s.debugFileDWARF(m.Spec.BuildID)
		if err != nil {
			return nil, err
		}
	}
	return dwarfSpecs(d)
}

func hasInfo(d *dwarf.Data) bool {
	e, err := d.Reader().Next()
	return err == nil && e != nil
}

// debugFileDWARF opens the separate debug file of build ID id in the
// target's root (/usr/lib/debug/.build-id/xx/rest.debug).
func (s *Session) debugFileDWARF(id string) (*dwarf.Data, error) {
	if len(id) < 3 {
		return nil, errNoDWARF
	}
	p := filepath.Join(fmt.Sprintf("/proc/%d/root", s.pid), "usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
	f, err := os.Open(p)
	if err != nil {
		return nil, errNoDWARF
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, errNoDWARF
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("debug file %s: %w", p, err)
	}
	d, err := ef.DWARF()
	if err != nil {
		return nil, fmt.Errorf("debug file %s: %w", p, err)
	}
	return d, nil
}

// dwarfSpecs walks every subprogram with a low PC.
func dwarfSpecs(d *dwarf.Data) (map[uint64]autoSpec, error) {
	out := map[uint64]autoSpec{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return out, err
		}
		if e == nil {
			return out, nil
		}
		if e.Tag != dwarf.TagSubprogram {
			continue
		}
		low, ok := e.Val(dwarf.AttrLowpc).(uint64)
		if !ok || !e.Children {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		var sp autoSpec
		if off, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
			if t, err := d.Type(off); err == nil {
				if a, ok := valueSpec(t, true); ok {
					sp.ret = &a
				}
			}
		}
		reg, stop := 1, false
		for {
			c, err := r.Next()
			if err != nil {
				return out, err
			}
			if c == nil || c.Tag == 0 {
				break
			}
			if c.Children {
				r.SkipChildren()
			}
			if c.Tag != dwarf.TagFormalParameter || stop {
				continue
			}
			off, ok := c.Val(dwarf.AttrType).(dwarf.Offset)
			if !ok {
				stop = true
				continue
			}
			t, err := d.Type(off)
			if err != nil {
				stop = true
				continue
			}
			a, ok := valueSpec(t, false)
			if !ok || reg > 6 {
				stop = true
				continue
			}
			a.Reg = reg
			a.Name, _ = c.Val(dwarf.AttrName).(string)
			sp.args = append(sp.args, a)
			reg++
		}
		if len(sp.args) > 0 || sp.ret != nil {
			out[low] = sp
		}
	}
}

// valueSpec returns how a value of type t prints, and false when it is
// not passed in an integer register (or, for ret, in rax or xmm0).
func valueSpec(t dwarf.Type, ret bool) (tracefile.ArgSpec, bool) {
	for {
		switch x := t.(type) {
		case *dwarf.TypedefType:
			t = x.Type
			continue
		case *dwarf.QualType:
			t = x.Type
			continue
		}
		break
	}
	switch x := t.(type) {
	case *dwarf.IntType:
		return sized(tracefile.FormatDecimal, x.ByteSize)
	case *dwarf.UintType:
		return sized(tracefile.FormatUnsigned, x.ByteSize)
	case *dwarf.BoolType:
		return sized(tracefile.FormatUnsigned, x.ByteSize)
	case *dwarf.CharType:
		return tracefile.ArgSpec{Format: tracefile.FormatChar}, x.ByteSize == 1
	case *dwarf.UcharType:
		return tracefile.ArgSpec{Format: tracefile.FormatChar}, x.ByteSize == 1
	case *dwarf.EnumType:
		a, ok := sized(tracefile.FormatDecimal, x.ByteSize)
		if ok && len(x.Val) > 0 && len(x.Val) <= 1024 {
			a.Enum = map[int64]string{}
			for _, v := range x.Val {
				a.Enum[v.Val] = v.Name
			}
		}
		return a, ok
	case *dwarf.PtrType:
		if isChar(x.Type) {
			return tracefile.ArgSpec{Format: tracefile.FormatString}, true
		}
		return tracefile.ArgSpec{Format: tracefile.FormatPointer}, true
	case *dwarf.FloatType:
		// Only a double return value: a float argument goes in an xmm
		// register, and a float return value is 32 bits of xmm0.
		return tracefile.ArgSpec{Format: tracefile.FormatFloat}, ret && x.ByteSize == 8
	}
	return tracefile.ArgSpec{}, false
}

func sized(format string, size int64) (tracefile.ArgSpec, bool) {
	switch size {
	case 1, 2, 4, 8:
		return tracefile.ArgSpec{Format: format, Size: int(size)}, true
	}
	return tracefile.ArgSpec{}, false
}

// isChar reports whether t is char (signed, unsigned or plain, with
// qualifiers and typedefs).
func isChar(t dwarf.Type) bool {
	for {
		switch x := t.(type) {
		case *dwarf.QualType:
			t = x.Type
			continue
		case *dwarf.TypedefType:
			t = x.Type
			continue
		case *dwarf.CharType, *dwarf.UcharType:
			return t.Size() == 1
		}
		return false
	}
}
