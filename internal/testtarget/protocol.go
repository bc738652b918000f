package testtarget

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// RunWorkload sends "run iterations" to a [Workload] or [UseLib] process
// and returns the call counts it reports (compare them with
// [WorkloadCounts]).
func RunWorkload(p *Process, iterations int, timeout time.Duration) (map[string]uint64, error) {
	return workloadCmd(p, fmt.Sprintf("run %d", iterations), "done ", timeout)
}

// SpawnWorkload sends "spawn n" to a [Workload] or [UseLib] process: n new
// threads each run the pattern once. It returns the call counts reported
// after they are joined, which equal [WorkloadCounts](1, n) when no other
// run happened since the last report.
func SpawnWorkload(p *Process, n int, timeout time.Duration) (map[string]uint64, error) {
	return workloadCmd(p, fmt.Sprintf("spawn %d", n), "spawned ", timeout)
}

func workloadCmd(p *Process, cmd, prefix string, timeout time.Duration) (map[string]uint64, error) {
	if err := p.Send(cmd); err != nil {
		return nil, err
	}
	l, err := p.Expect(prefix, timeout)
	if err != nil {
		return nil, err
	}
	var m map[string]uint64
	if err := json.Unmarshal([]byte(strings.TrimPrefix(l, prefix)), &m); err != nil {
		return nil, fmt.Errorf("parse workload reply %q: %w", l, err)
	}
	return m, nil
}

// RunStress sends "run passes" to a [Stress] process and returns the
// checksum and the lt_counter_stub counters, one per generated function in
// order (then reset to zero by the fixture).
func RunStress(p *Process, passes int, timeout time.Duration) (checksum uint64, counts []uint64, err error) {
	if err := p.Send(fmt.Sprintf("run %d", passes)); err != nil {
		return 0, nil, err
	}
	deadline := time.Now().Add(timeout)
	l, err := p.Expect("done ", timeout)
	if err != nil {
		return 0, nil, err
	}
	checksum, err = strconv.ParseUint(strings.TrimPrefix(l, "done "), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("parse stress reply %q: %w", l, err)
	}
	l, err = p.Expect("counts", time.Until(deadline))
	if err != nil {
		return 0, nil, err
	}
	fields := strings.Fields(l)[1:]
	counts = make([]uint64, len(fields))
	for i, f := range fields {
		if counts[i], err = strconv.ParseUint(f, 10, 64); err != nil {
			return 0, nil, fmt.Errorf("parse stress count %d %q: %w", i, f, err)
		}
	}
	return checksum, counts, nil
}

// HammerStress sends "hammer" to a [Stress] process and returns once every
// worker thread is calling the generated functions in a loop.
func HammerStress(p *Process, timeout time.Duration) error {
	if err := p.Send("hammer"); err != nil {
		return err
	}
	_, err := p.Expect("hammering", timeout)
	return err
}

// Gap is a stretch of over 1 ms in which a worker of a hammering [Stress]
// process completed no call: it ended at End (CLOCK_MONOTONIC, ns) and
// lasted Len.
type Gap struct {
	End uint64
	Len time.Duration
}

// StressGaps sends "gaps" to a hammering [Stress] process and returns the
// gaps of over 1 ms its workers saw since the last call (or the "hammer"),
// and how many gaps did not fit the workers' logs.
func StressGaps(p *Process, timeout time.Duration) (gaps []Gap, lost int, err error) {
	if err := p.Send("gaps"); err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(timeout)
	for {
		l, err := p.ReadLine(max(time.Until(deadline), time.Nanosecond))
		if err != nil {
			return nil, 0, fmt.Errorf("read stress gaps: %w", err)
		}
		if rest, ok := strings.CutPrefix(l, "gaps done "); ok {
			lost, err := strconv.Atoi(rest)
			if err != nil {
				return nil, 0, fmt.Errorf("parse stress reply %q: %w", l, err)
			}
			return gaps, lost, nil
		}
		var g Gap
		var ns int64
		if _, err := fmt.Sscanf(l, "gap %d %d", &g.End, &ns); err != nil {
			return nil, 0, fmt.Errorf("parse stress reply %q: want \"gap END LEN\" or \"gaps done LOST\"", l)
		}
		g.Len = time.Duration(ns)
		gaps = append(gaps, g)
	}
}

// StopStress sends "stop" to a hammering [Stress] process and returns the
// longest gap any worker saw between two consecutive calls (the longest
// stall) and the checksum, which equals the one of RunStress with one pass.
func StopStress(p *Process, timeout time.Duration) (maxStall time.Duration, checksum uint64, err error) {
	if err := p.Send("stop"); err != nil {
		return 0, 0, err
	}
	l, err := p.Expect("stopped ", timeout)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(l)
	if len(f) != 3 {
		return 0, 0, fmt.Errorf("parse stress reply %q: want \"stopped NS CHECKSUM\"", l)
	}
	ns, err := strconv.ParseUint(f[1], 10, 63)
	if err != nil {
		return 0, 0, fmt.Errorf("parse stress reply %q: %w", l, err)
	}
	if checksum, err = strconv.ParseUint(f[2], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("parse stress reply %q: %w", l, err)
	}
	return time.Duration(ns), checksum, nil
}
