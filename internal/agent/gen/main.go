// Command gen builds the livetrace agent blob and its Go layout.
//
// It compiles agent.c and agent.S with clang-16 (or $LIVETRACE_CLANG) and
// pinned flags, links them with the system ld and agent.ld, checks that the
// result needs no relocation, and writes agent.bin (the loadable bytes) and
// layout_generated.go (symbol offsets, region offsets and sizes, and every
// struct field offset and enumerator of agent.h, read from DWARF). Run it
// through `go generate ./internal/agent`. Two runs give identical bytes.
package main

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	src := flag.String("src", ".", "directory holding agent.c, agent.S and agent.ld")
	out := flag.String("out", ".", "directory to write agent.bin and layout_generated.go into")
	flag.Parse()
	if err := run(*src, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

// cflags are the pinned compiler flags; changing one changes the blob.
var cflags = []string{
	"-O2", "-ffreestanding", "-fno-builtin", "-nostdlib", "-fPIC",
	"-fvisibility=hidden", "-mgeneral-regs-only", "-fno-stack-protector",
	"-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fcf-protection=none",
	"-fno-ident", "-fno-jump-tables", "-g", "-fno-eliminate-unused-debug-types",
	"-Wall", "-Werror", "-std=gnu11",
}

func tool(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

func run(src, out string) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "livetrace-agent-gen-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	clang := tool("LIVETRACE_CLANG", "clang-16")
	ld := tool("LIVETRACE_LD", "ld")
	flags := append([]string{}, cflags...)
	flags = append(flags, "-ffile-prefix-map="+src+"=.", "-ffile-prefix-map="+tmp+"=.")
	for _, f := range []string{"agent.c", "agent.S"} {
		obj := filepath.Join(tmp, f+".o")
		args := append(append([]string{}, flags...), "-c", filepath.Join(src, f), "-o", obj)
		if err := runTool(tmp, clang, args...); err != nil {
			return err
		}
	}
	elfPath := filepath.Join(tmp, "agent.elf")
	if err := runTool(tmp, ld, "-static", "-nostdlib", "--build-id=none", "--emit-relocs",
		"--no-warn-rwx-segments", "-z", "noexecstack", "-T", filepath.Join(src, "agent.ld"),
		"-o", elfPath, filepath.Join(tmp, "agent.c.o"), filepath.Join(tmp, "agent.S.o")); err != nil {
		return err
	}
	blob, gosrc, err := extract(elfPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "agent.bin"), blob, 0o644); err != nil {
		return fmt.Errorf("write agent.bin: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "layout_generated.go"), gosrc, 0o644); err != nil {
		return fmt.Errorf("write layout_generated.go: %w", err)
	}
	return nil
}

func runTool(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("run %s: %w (install clang-16 and binutils, or set LIVETRACE_CLANG / LIVETRACE_LD)", name, err)
		}
		return fmt.Errorf("run %s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

type constant struct {
	name, doc string
	value     int64
}

// regions maps the agent.ld output sections to their Go names.
var regions = []struct{ section, name, doc string }{
	{".lt_ctl", "Ctl", "the control page (MADV_WIPEONFORK)"},
	{".lt_priv", "Priv", "the private region (thread table, shadow stacks)"},
	{".lt_shared", "Shared", "the shared memfd"},
}

// symbols maps agent symbols to their Go names.
var symbols = []struct{ sym, name, doc string }{
	{"lt_entry", "EntryOff", "lt_entry, the target of every site stub"},
	{"lt_return", "ReturnOff", "lt_return, the hijacked return address in graph mode"},
	{"lt_return_keep", "ReturnKeepOff", "lt_return_keep, the hijacked return address of a keep site's frame (agent.Keep)"},
	{"lt_sigtrap", "SigtrapOff", "lt_sigtrap, the SIGTRAP backstop handler (SA_SIGINFO)"},
	{"lt_restorer", "RestorerOff", "lt_restorer, the SA_RESTORER for lt_sigtrap"},
	{"lt_remote", "RemoteOff", "lt_remote, `syscall; int3`: where the tracer runs remote system calls once the agent is in"},
	{"lt_hook_raise", "HookRaiseOff", "lt_hook_raise, which runs in place of _Unwind_RaiseException in graph mode"},
	{"lt_hook_resume_or_rethrow", "HookResumeOrRethrowOff", "lt_hook_resume_or_rethrow, which runs in place of _Unwind_Resume_or_Rethrow in graph mode"},
	{"lt_hook_begin_catch", "HookBeginCatchOff", "lt_hook_begin_catch, which runs in place of __cxa_begin_catch in graph mode"},
	{"lt_hook_longjmp", "HookLongjmpOff", "lt_hook_longjmp, which runs in place of longjmp in graph mode"},
	{"lt_hook__longjmp", "HookLongjmpUOff", "lt_hook__longjmp, which runs in place of _longjmp in graph mode"},
	{"lt_hook_siglongjmp", "HookSiglongjmpOff", "lt_hook_siglongjmp, which runs in place of siglongjmp in graph mode"},
	{"lt_hook_longjmp_chk", "HookLongjmpChkOff", "lt_hook_longjmp_chk, which runs in place of __longjmp_chk in graph mode"},
}

// structs lists the agent.h structs whose layout Go needs.
var structs = []struct{ c, goName string }{
	{"lt_ctl", "Ctl"},
	{"lt_owner", "Owner"},
	{"lt_range", "Range"},
	{"lt_span", "Span"},
	{"lt_hook", "Hook"},
	{"lt_ksigaction", "Sigaction"},
	{"lt_thread", "Thread"},
	{"lt_shadow", "Shadow"},
	{"lt_priv", "Priv"},
	{"lt_remote_save", "RemoteSave"},
	{"lt_unwind_real", "UnwindReal"},
	{"lt_site", "Site"},
	{"lt_shared_hdr", "SharedHdr"},
	{"lt_chunk_hdr", "ChunkHdr"},
	{"lt_record", "Record"},
}

func extract(path string) (blob, gosrc []byte, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open linked agent: %w", err)
	}
	defer f.Close()

	syms, err := f.Symbols()
	if err != nil {
		return nil, nil, fmt.Errorf("read agent symbols: %w", err)
	}
	symval := map[string]uint64{}
	for _, s := range syms {
		symval[s.Name] = s.Value
	}
	codeEnd, ok := symval["lt_code_end"]
	if !ok {
		return nil, nil, errors.New("linked agent has no lt_code_end: check agent.ld")
	}

	// Only code and read-only data may be loaded, and nothing may need
	// a relocation at load time.
	allowed := map[string]bool{".lt_ctl": true, ".lt_priv": true, ".lt_shared": true}
	blob = make([]byte, 0, codeEnd)
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		switch {
		case allowed[s.Name]:
			if s.Type != elf.SHT_NOBITS {
				return nil, nil, fmt.Errorf("agent section %s must be NOBITS", s.Name)
			}
		case s.Type == elf.SHT_PROGBITS && s.Flags&elf.SHF_WRITE == 0 &&
			(s.Name == ".text" || strings.HasPrefix(s.Name, ".rodata")):
			if s.Addr+s.Size > codeEnd {
				return nil, nil, fmt.Errorf("agent section %s lies beyond the code end", s.Name)
			}
			data, err := s.Data()
			if err != nil {
				return nil, nil, fmt.Errorf("read agent section %s: %w", s.Name, err)
			}
			if need := int(s.Addr + s.Size); need > len(blob) {
				blob = append(blob, make([]byte, need-len(blob))...)
			}
			copy(blob[s.Addr:], data)
		default:
			return nil, nil, fmt.Errorf("agent has a forbidden loadable section %s (%v): no writable data, GOT or PLT allowed; keep state in lt_ctl, lt_priv or lt_shared", s.Name, s.Type)
		}
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_RELA && s.Type != elf.SHT_REL {
			continue
		}
		if s.Type == elf.SHT_REL || int(s.Info) >= len(f.Sections) {
			return nil, nil, fmt.Errorf("agent has unexpected relocation section %s", s.Name)
		}
		target := f.Sections[s.Info]
		if target.Flags&elf.SHF_ALLOC == 0 {
			continue // debug info
		}
		data, err := s.Data()
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", s.Name, err)
		}
		for i := 0; i+24 <= len(data); i += 24 {
			info := f.ByteOrder.Uint64(data[i+8:])
			switch t := elf.R_X86_64(info & 0xffffffff); t {
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_PC64:
			default:
				off := f.ByteOrder.Uint64(data[i:])
				return nil, nil, fmt.Errorf("agent needs relocation %v at %s+%#x: the blob must be position independent (no absolute addresses, GOT or jump tables)", t, target.Name, off)
			}
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_DYNAMIC || p.Type == elf.PT_INTERP || p.Type == elf.PT_TLS {
			return nil, nil, fmt.Errorf("agent has a %v segment", p.Type)
		}
	}

	var consts []constant
	consts = append(consts, constant{"CodeSize", "CodeSize is the size of the code region at the agent's base, a multiple of the page size.", int64(codeEnd)})
	for _, s := range symbols {
		v, ok := symval[s.sym]
		if !ok || v >= uint64(len(blob)) {
			return nil, nil, fmt.Errorf("agent symbol %s missing", s.sym)
		}
		consts = append(consts, constant{s.name, fmt.Sprintf("%s is the offset from the agent's base of %s.", s.name, s.doc), int64(v)})
	}
	for _, r := range regions {
		s := f.Section(r.section)
		if s == nil {
			return nil, nil, fmt.Errorf("agent section %s missing", r.section)
		}
		consts = append(consts, constant{r.name + "Off", fmt.Sprintf("%sOff is the offset from the agent's base of %s.", r.name, r.doc), int64(s.Addr)})
		if r.name != "Shared" {
			consts = append(consts, constant{r.name + "Size", fmt.Sprintf("%sSize is the size of %s.", r.name, r.doc), int64(s.Size)})
		}
	}

	d, err := f.DWARF()
	if err != nil {
		return nil, nil, fmt.Errorf("read agent DWARF: %w", err)
	}
	dc, err := dwarfConsts(d)
	if err != nil {
		return nil, nil, err
	}
	consts = append(consts, dc...)
	seen := map[string]bool{}
	for _, c := range consts {
		if seen[c.name] {
			return nil, nil, fmt.Errorf("generated constant %s defined twice: rename it in agent.h", c.name)
		}
		seen[c.name] = true
	}

	var b bytes.Buffer
	b.WriteString("// Code generated by go run ./gen; DO NOT EDIT.\n\npackage agent\n\nimport _ \"embed\"\n\n")
	b.WriteString("// Blob is the agent's code and read-only data, to be copied to the base\n// of the agent's region. The rest of the code region, up to CodeSize, is zero.\n//\n//go:embed agent.bin\nvar Blob []byte\n\n")
	b.WriteString("// Layout of the agent, from agent.ld, agent.h and the linked agent.\nconst (\n")
	for _, c := range consts {
		fmt.Fprintf(&b, "\t// %s\n\t%s = %#x\n", c.doc, c.name, c.value)
	}
	b.WriteString(")\n")
	gosrc, err = format.Source(b.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("format generated Go: %w", err)
	}
	return blob, gosrc, nil
}

func camel(s string) string {
	var b strings.Builder
	for _, p := range strings.Split(strings.ToLower(s), "_") {
		if p == "" {
			continue
		}
		b.WriteString(strings.ToUpper(p[:1]) + p[1:])
	}
	return b.String()
}

func dwarfConsts(d *dwarf.Data) ([]constant, error) {
	want := map[string]string{}
	for _, s := range structs {
		want[s.c] = s.goName
	}
	found := map[string][]constant{}
	var enums []constant
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("read agent DWARF: %w", err)
		}
		if e == nil {
			break
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		switch {
		case e.Tag == dwarf.TagStructType && want[name] != "" && found[name] == nil:
			g := want[name]
			size, _ := e.Val(dwarf.AttrByteSize).(int64)
			cs := []constant{{"Sizeof" + g, fmt.Sprintf("Sizeof%s is sizeof(struct %s).", g, name), size}}
			for e.Children {
				m, err := r.Next()
				if err != nil {
					return nil, fmt.Errorf("read agent DWARF: %w", err)
				}
				if m == nil || m.Tag == 0 {
					break
				}
				if m.Tag != dwarf.TagMember {
					r.SkipChildren()
					continue
				}
				mn, _ := m.Val(dwarf.AttrName).(string)
				off, ok := m.Val(dwarf.AttrDataMemberLoc).(int64)
				if !ok {
					return nil, fmt.Errorf("struct %s member %s has no constant offset", name, mn)
				}
				if strings.HasPrefix(mn, "pad") {
					continue
				}
				cs = append(cs, constant{g + camel(mn) + "Off", fmt.Sprintf("%s%sOff is the offset of %s in struct %s.", g, camel(mn), mn, name), off})
			}
			found[name] = cs
		case e.Tag == dwarf.TagEnumerationType && name == "lt_const" && enums == nil:
			for e.Children {
				m, err := r.Next()
				if err != nil {
					return nil, fmt.Errorf("read agent DWARF: %w", err)
				}
				if m == nil || m.Tag == 0 {
					break
				}
				mn, _ := m.Val(dwarf.AttrName).(string)
				v, ok := m.Val(dwarf.AttrConstValue).(int64)
				if !ok || !strings.HasPrefix(mn, "LT_") {
					return nil, fmt.Errorf("enumerator %s is not an LT_ constant", mn)
				}
				n := camel(strings.TrimPrefix(mn, "LT_"))
				enums = append(enums, constant{n, fmt.Sprintf("%s is %s from agent.h.", n, mn), v})
			}
		default:
			if e.Children && e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
		}
	}
	if enums == nil {
		return nil, errors.New("agent DWARF has no enum lt_const")
	}
	out := enums
	names := make([]string, 0, len(structs))
	for _, s := range structs {
		if found[s.c] == nil {
			return nil, fmt.Errorf("agent DWARF has no struct %s", s.c)
		}
		names = append(names, s.c)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, found[n]...)
	}
	return out, nil
}
