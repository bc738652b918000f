package main

import (
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/livetrace/livetrace/internal/report"
	"github.com/livetrace/livetrace/internal/tracefile"
)

// Shell completion: cobra's `livetrace completion bash|zsh|fish` prints
// the script, which calls the hidden `livetrace __complete ARGS...` for
// the candidates. The functions here give the values cobra cannot guess:
// export formats, report columns, PIDs, thread ids and function names.

// maxCompletions bounds the function names offered at once.
const maxCompletions = 5000

// addCompletions registers the value completions of every subcommand.
func addCompletions(root *cobra.Command) {
	root.CompletionOptions.HiddenDefaultCmd = false
	for _, cmd := range root.Commands() {
		flag := func(name string, fn cobra.CompletionFunc) {
			if cmd.Flags().Lookup(name) != nil {
				_ = cmd.RegisterFlagCompletionFunc(name, fn)
			}
		}
		flag("pid", completePIDs)
		switch cmd.Name() {
		case "ctl":
			cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return []string{"enable\tstart tracing functions", "disable\tstop tracing functions", "status\tfunctions traced, events, lost, mode", "stop\tend the recording"}, cobra.ShellCompDirectiveNoFileComp
				}
				if args[0] == "enable" || args[0] == "disable" {
					return completeFunctions(cmd, args, toComplete)
				}
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
		case "record", "live", "top":
			flag("function", completeFunctions)
			flag("notrace", completeFunctions)
			flag("module", completeModules)
			flag("tid", completeTIDs)
		case "list":
			cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if cmd.Flags().Changed("pid") || len(args) > 0 {
					return completeFunctions(cmd, args, toComplete)
				}
				return nil, cobra.ShellCompDirectiveDefault // a FILE
			}
		case "export":
			flag("format", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				var out []string
				for _, f := range report.ExportFormats {
					out = append(out, f.Name+"\t"+f.DefaultFile)
				}
				return out, cobra.ShellCompDirectiveNoFileComp
			})
		case "report":
			flag("sort", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				return report.SortColumns, cobra.ShellCompDirectiveNoFileComp
			})
		}
	}
}

// completePIDs offers the processes of the machine (not kernel threads,
// not livetrace itself), with their command names.
func completePIDs(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !strings.HasPrefix(e.Name(), toComplete) {
			continue
		}
		if _, err := os.Readlink("/proc/" + e.Name() + "/exe"); err != nil {
			continue // a kernel thread, or gone
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		out = append(out, e.Name()+"\t"+report.Printable(strings.TrimSpace(string(comm))))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeTIDs offers the threads of the -p process.
func completeTIDs(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	pid, err := cmd.Flags().GetInt("pid")
	if err != nil || pid <= 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), toComplete) {
			comm, _ := os.ReadFile(dir + "/" + e.Name() + "/comm")
			out = append(out, e.Name()+"\t"+report.Printable(strings.TrimSpace(string(comm))))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeModules offers the file names of the modules mapped executable
// in the -p process.
func completeModules(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	pid, err := cmd.Flags().GetInt("pid")
	if err != nil || pid <= 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	maps, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(string(maps), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.Contains(f[1], "x") || !strings.HasPrefix(f[5], "/") {
			continue
		}
		b := path.Base(f[5])
		if !seen[b] && strings.HasPrefix(b, toComplete) {
			seen[b] = true
			out = append(out, report.Printable(b))
		}
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeFunctions offers the names `livetrace list` gives for the -p
// process, or for the program on the line (record's -- CMD, list's FILE),
// restricted to the modules of -m if given.
func completeFunctions(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var globs []string
	if f := cmd.Flags().Lookup("module"); f != nil {
		globs, _ = cmd.Flags().GetStringArray("module")
	}
	rows := listFor(cmd, args, len(globs) > 0)
	seen := map[string]bool{}
	var out []string
	for _, r := range rows {
		if r.Form == "none" || seen[r.Function] || !strings.HasPrefix(r.Function, toComplete) || !matchModuleGlobs(r.Module, globs) {
			continue
		}
		seen[r.Function] = true
		out = append(out, r.Function)
		if len(out) == maxCompletions {
			break
		}
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// listFor lists the functions of the -p process or of the program on the
// line; all adds those without a compiler NOP. Errors give no rows.
func listFor(cmd *cobra.Command, args []string, all bool) []listRow {
	o := &listOptions{all: all, stdout: io.Discard, stderr: io.Discard}
	if pid, err := cmd.Flags().GetInt("pid"); err == nil && pid > 0 {
		o.pid = pid
		rows, _, err := o.pidRows()
		if err != nil {
			return nil
		}
		return rows
	}
	if len(args) == 0 {
		return nil
	}
	file := args[0]
	if !strings.Contains(file, "/") {
		if p, err := exec.LookPath(file); err == nil {
			file = p
		}
	}
	o.file = file
	rows, err := o.fileRows()
	if err != nil {
		return nil
	}
	return rows
}

// matchModuleGlobs is record's -m: the path or the file name matches.
func matchModuleGlobs(p string, globs []string) bool {
	return len(globs) == 0 || tracefile.MatchModule(p, globs)
}
