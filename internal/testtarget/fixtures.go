package testtarget

import (
	"embed"
	"fmt"
	"sort"
	"strings"
)

//go:embed c/*.c c/*.cc c/*.h
var sources embed.FS

// Fixture names accepted by [Build]. The stdin/stdout protocol of each is
// described at the top of its source in c/.
const (
	// Simple is c/simple.c: about twenty named functions (global and
	// static, one recursive). It prints "ready", calls each once and exits
	// 0; with the argument "loop" it calls them forever, sleeping 10 ms
	// per round.
	Simple = "simple"
	// CXX is c/cxx.cc, the C++ counterpart of [Simple]: namespaces, a class,
	// a template instantiated twice, an operator, and a throw and catch.
	CXX = "cxx"
	// Workload is c/workload.c, linked with libltshared.so (c/ltshared.c):
	// threads ("-t N", default 4) run a fixed pattern of calls on "run N"
	// and print ground-truth call counts, see [WorkloadCounts].
	Workload = "workload"
	// UseLib is the [Workload] program under the name "uselib": it is the
	// fixture for tracing functions of a shared library. The library sits
	// next to the executable, see [LibPath].
	UseLib = "uselib"
	// Stress is generated C: functions fn_00000.. (see [Funcs]) hammered by
	// threads, and lt_counter_stub, a routine a patched site can CALL that
	// counts calls per function. See c/stress.c.
	Stress = "stress"
	// Sleeper is c/sleeper.c: threads blocked in nanosleep, futex,
	// epoll_wait and read, for testing remote syscalls.
	Sleeper = "sleeper"
	// Nested is c/nested.c: a gcc nested function called through a
	// trampoline; gcc forms only.
	Nested = "nested"
	// Ucontext is c/ucontext.c: coroutines on ucontexts (one stack an
	// array in a traced frame, one malloc'd), a longjmp and a handler on
	// a sigaltstack, all under traced frames, on "run N".
	Ucontext = "ucontext"
	// LibcCalls is c/libccalls.c: threads calling strtol, qsort, malloc
	// and free of libc.so.6 a counted number of times on "run N" (the
	// [Workload] protocol's "done {...}" reply, see [RunWorkload]).
	LibcCalls = "libccalls"
	// Args is c/args.c: functions with known arguments of every kind
	// (integers, char, pointer, enum, strings: NULL, unmapped, cut) and
	// return values (integer, double), one called from a signal handler,
	// on "run N" ("done N").
	Args = "args"
	// KeepRegs is c/keepregs.c: callers that keep values in
	// call-clobbered registers across calls (gcc's -fipa-ra, and an
	// assembly caller that checks rax..r11 and the carry flag), on
	// "run N" ("done N bad B wrong W").
	KeepRegs = "keepregs"
	// Dlopen is c/dlopen.c: threads that dlopen, call and dlclose
	// libltplugin.so (c/dlplugin.c, built next to the executable, with
	// the program's site flags) over and over, on "run N"; see the
	// protocol at the top of c/dlopen.c.
	Dlopen = "dlopen"
	// Follow is c/follow.c: children made by fork, a double fork,
	// posix_spawn, vfork + exec and exec from a thread, each calling
	// fl_work(N) (N calls of fl_leaf), for record --follow.
	Follow = "follow"
	// JITCall is c/jitcall.c: a traced function called from a thunk the
	// program wrote into an anonymous executable page (as JIT-compiled
	// code calls into its runtime), which checks its own return address
	// as HotSpot reads it back, and from the program's text, on "run N"
	// ("done sum=S vm=A direct=B jit=C bad=D").
	JITCall = "jitcall"
	// VforkChild is c/vforkchild.c: a vfork child with SIGTRAP at its
	// default action, as posix_spawn's, that calls vf_target after
	// spinning a given time, on "go MS" ("child exit=7" or "child
	// signal=S").
	VforkChild = "vforkchild"
)

// Fixtures returns the names of every fixture, sorted.
func Fixtures() []string {
	names := make([]string, 0, len(fixtures))
	for n := range fixtures {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// fixture knows how to plan the build of one fixture.
type fixture struct {
	cxx  bool // built with the C++ compiler
	plan func(form Form, cfg *config, cc, ccC string) (*buildPlan, error)
}

var fixtures = map[string]fixture{
	Simple:     {plan: singleFile(Simple, "simple.c")},
	Follow:     {plan: singleFile(Follow, "follow.c")},
	JITCall:    {plan: singleFile(JITCall, "jitcall.c")},
	VforkChild: {plan: singleFile(VforkChild, "vforkchild.c")},
	Sleeper:    {plan: singleFile(Sleeper, "sleeper.c")},
	Nested:     {plan: singleFile(Nested, "nested.c")},
	CXX:        {cxx: true, plan: singleFile(CXX, "cxx.cc")},
	Workload:   {plan: withLib(Workload)},
	UseLib:     {plan: withLib(UseLib)},
	Stress:     {plan: planStress},
	Ucontext:   {plan: singleFile(Ucontext, "ucontext.c")},
	LibcCalls:  {plan: singleFile(LibcCalls, "libccalls.c")},
	Args:       {plan: singleFile(Args, "args.c")},
	KeepRegs:   {plan: singleFile(KeepRegs, "keepregs.c")},
	Dlopen:     {plan: planDlopen},
}

// planDlopen plans c/dlopen.c and the library it loads, libltplugin.so,
// built as withLib builds libltshared.so.
func planDlopen(form Form, cfg *config, cc, _ string) (*buildPlan, error) {
	files := map[string][]byte{}
	for _, n := range []string{"dlopen.c", "dlplugin.c", "ltfixture.h"} {
		b, err := readSource(n)
		if err != nil {
			return nil, err
		}
		files[n] = b
	}
	libArgs := baseFlags(cfg)
	libArgs = append(libArgs, "-fPIC")
	if !cfg.noSites {
		libArgs = append(libArgs, siteFlags(form, true)...)
	}
	libArgs = append(libArgs, "-c", "dlplugin.c", "-o", "dlplugin.o")
	return &buildPlan{
		exeName: Dlopen,
		files:   files,
		phases: [][]step{
			{
				{cc, libArgs},
				{cc, compileArgs(form, cfg, true, "dlopen.c", "dlopen.o")},
			},
			{{cc, []string{"-shared", "-g", "-Wl,-soname,libltplugin.so", "-o", "libltplugin.so", "dlplugin.o"}}},
			{{cc, linkArgs(form, cfg, Dlopen, []string{"dlopen.o"}, "-ldl", "-rdynamic")}},
		},
	}, nil
}

func readSource(name string) ([]byte, error) {
	b, err := sources.ReadFile("c/" + name)
	if err != nil {
		return nil, fmt.Errorf("read embedded source %s: %w", name, err)
	}
	return b, nil
}

// compileArgs returns the arguments that compile src into obj for an
// executable of form (sites says whether with site flags).
func compileArgs(form Form, cfg *config, sites bool, src, obj string, extra ...string) []string {
	args := baseFlags(cfg)
	pic, _ := picFlags(form, cfg)
	args = append(args, pic...)
	if sites && !cfg.noSites {
		args = append(args, siteFlags(form, false)...)
	}
	args = append(args, extra...)
	return append(args, "-pthread", "-c", src, "-o", obj)
}

// linkArgs returns the arguments that link objs into the executable exe.
func linkArgs(form Form, cfg *config, exe string, objs []string, extra ...string) []string {
	_, ld := picFlags(form, cfg)
	args := append([]string{}, ld...)
	args = append(args, "-g", "-o", exe)
	args = append(args, objs...)
	args = append(args, extra...)
	return append(args, "-pthread")
}

func objName(src string) string {
	if i := strings.LastIndexByte(src, '.'); i >= 0 {
		src = src[:i]
	}
	return src + ".o"
}

// singleFile plans a fixture made of one source file.
func singleFile(exe, src string) func(Form, *config, string, string) (*buildPlan, error) {
	return func(form Form, cfg *config, cc, _ string) (*buildPlan, error) {
		b, err := readSource(src)
		if err != nil {
			return nil, err
		}
		hdr, err := readSource("ltfixture.h")
		if err != nil {
			return nil, err
		}
		obj := objName(src)
		return &buildPlan{
			exeName: exe,
			files:   map[string][]byte{src: b, "ltfixture.h": hdr},
			phases: [][]step{
				{{cc, compileArgs(form, cfg, true, src, obj)}},
				{{cc, linkArgs(form, cfg, exe, []string{obj})}},
			},
		}, nil
	}
}

// withLib plans the workload program linked with libltshared.so.
func withLib(exe string) func(Form, *config, string, string) (*buildPlan, error) {
	return func(form Form, cfg *config, cc, _ string) (*buildPlan, error) {
		files := map[string][]byte{}
		for _, n := range []string{"workload.c", "ltshared.c", "ltshared.h", "ltfixture.h"} {
			b, err := readSource(n)
			if err != nil {
				return nil, err
			}
			files[n] = b
		}
		libArgs := baseFlags(cfg)
		libArgs = append(libArgs, "-fPIC")
		if !cfg.noSites {
			libArgs = append(libArgs, siteFlags(form, true)...)
		}
		libArgs = append(libArgs, "-pthread", "-c", "ltshared.c", "-o", "ltshared.o")
		return &buildPlan{
			exeName: exe,
			files:   files,
			phases: [][]step{
				{
					{cc, libArgs},
					{cc, compileArgs(form, cfg, true, "workload.c", "workload.o")},
				},
				{{cc, []string{"-shared", "-g", "-Wl,-soname," + LibName, "-o", LibName, "ltshared.o", "-pthread"}}},
				{{cc, linkArgs(form, cfg, exe, []string{"workload.o"}, "-L.", "-lltshared", "-Wl,-rpath,"+finalDirToken)}},
			},
		}, nil
	}
}

// WorkloadCounts returns the call counts that the [Workload] (and [UseLib])
// fixture prints after "run iterations" with threads threads: the keys are
// work_leaf, work_nested, work_recurse and lib_add. One iteration of one
// thread calls work_leaf 3 times (once directly and twice from
// work_nested), work_nested once, work_recurse 6 times (depth 5 down to 0)
// and lib_add once.
func WorkloadCounts(iterations, threads int) map[string]uint64 {
	n := uint64(iterations) * uint64(threads)
	return map[string]uint64{
		"work_leaf":    3 * n,
		"work_nested":  1 * n,
		"work_recurse": 6 * n,
		"lib_add":      1 * n,
	}
}
