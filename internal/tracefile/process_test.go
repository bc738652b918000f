package tracefile_test

import (
	"bytes"
	"testing"

	"github.com/livetrace/livetrace/internal/tracefile"
)

// TestProcesses checks the pids of a recording made with --follow: they
// round-trip, every thread maps to its process (a thread without a pid to
// the target), and a bad pid is refused as corrupt.
func TestProcesses(t *testing.T) {
	meta := func() tracefile.Meta {
		return tracefile.Meta{
			Mode: tracefile.ModeEntry, PID: 100, Comm: "parent",
			Modules: []tracefile.Module{{Path: "/bin/x"}},
			Funcs:   []tracefile.Func{{Name: "f", Module: 0, Addr: 0x1000, Site: 0x1000}},
			Threads: []tracefile.Thread{{TID: 100}, {TID: 101, PID: 100}, {TID: 200, PID: 200}},
			Processes: []tracefile.Process{{PID: 100, Comm: "parent"}, {PID: 200, PPID: 100, Comm: "child", ForkTSC: 7},
				{PID: 200, PPID: 100, Comm: "other", ExecFrom: 201}},
		}
	}
	write := func(m tracefile.Meta) ([]byte, error) {
		var buf bytes.Buffer
		w, err := tracefile.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		if err := w.WriteEvents([]tracefile.Event{{TSC: 1, TID: 100, Kind: tracefile.KindEntry}, {TSC: 2, TID: 200, Kind: tracefile.KindEntry}}); err != nil {
			return nil, err
		}
		if err := w.Close(m); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	data, err := write(meta())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := readBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Processes) != 3 || rec.Processes[2].ExecFrom != 201 || rec.Processes[1].ForkTSC != 7 {
		t.Errorf("processes: %+v", rec.Processes)
	}
	pids := rec.ThreadPIDs()
	if pids[100] != 100 || pids[101] != 100 || pids[200] != 200 || rec.PIDOf(200) != 200 || rec.PIDOf(999) != 100 {
		t.Errorf("thread pids: %v", pids)
	}
	if !rec.MultiProcess() {
		t.Error("not seen as several processes")
	}
	one := meta()
	one.Processes, one.Threads = nil, []tracefile.Thread{{TID: 100}}
	if one.MultiProcess() {
		t.Error("a recording of one process seen as several")
	}
	for name, bad := range map[string]func(*tracefile.Meta){
		"thread pid": func(m *tracefile.Meta) { m.Threads[1].PID = -1 },
		"pid":        func(m *tracefile.Meta) { m.Processes[1].PID = 0 },
		"ppid":       func(m *tracefile.Meta) { m.Processes[1].PPID = -3 },
	} {
		m := meta()
		bad(&m)
		if _, err := write(m); err == nil {
			t.Errorf("%s: the writer took it", name)
		}
	}
}
