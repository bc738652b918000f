package session

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// tidMap translates between the thread ids of the target's pid namespace
// and the host's. The agent records gettid(), which in a container is the
// id inside its pid namespace; the tracer (ptrace, /proc, the recording)
// speaks host ids. When the target shares the tracer's pid namespace both
// are the same and nothing is read. The zero value is ready to use; it is
// safe for concurrent use.
type tidMap struct {
	mu       sync.Mutex
	checked  bool
	nested   bool              // the target is in another pid namespace
	toHost   map[uint32]uint32 // namespace tid -> host tid
	toNS     map[uint32]uint32 // host tid -> namespace tid
	lastScan time.Time
}

// minRescan bounds how often an unknown namespace tid makes the map read
// every thread's status again (the ids come from the target's memory).
const minRescan = 20 * time.Millisecond

func (m *tidMap) init(pid int) {
	if m.checked {
		return
	}
	m.checked = true
	self, err1 := os.Readlink("/proc/self/ns/pid")
	target, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	m.nested = err1 == nil && err2 == nil && self != target
	m.toHost, m.toNS = map[uint32]uint32{}, map[uint32]uint32{}
}

// host returns the host tid of the namespace tid ns of process pid, or ns
// itself when it is unknown (a thread already gone).
func (m *tidMap) host(pid int, ns uint32) uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init(pid)
	if !m.nested {
		return ns
	}
	if h, ok := m.toHost[ns]; ok {
		return h
	}
	if time.Since(m.lastScan) >= minRescan {
		m.lastScan = time.Now()
		entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, e := range entries {
			if h, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
				m.learn(pid, uint32(h))
			}
		}
		if h, ok := m.toHost[ns]; ok {
			return h
		}
	}
	return ns
}

// ns returns the namespace tid of the host tid host of process pid, which
// must still exist (a thread stopped at its exit does).
func (m *tidMap) ns(pid int, host uint32) uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init(pid)
	if !m.nested {
		return host
	}
	if n, ok := m.toNS[host]; ok {
		return n
	}
	if n, ok := m.learn(pid, host); ok {
		return n
	}
	return host
}

// learn reads the NSpid line of thread host: its ids from the host's
// namespace to the target's, the last one being the target's.
func (m *tidMap) learn(pid int, host uint32) (uint32, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, host))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(l, "NSpid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(f[len(f)-1], 10, 32)
		if err != nil {
			return 0, false
		}
		m.toHost[uint32(n)], m.toNS[host] = host, uint32(n)
		return uint32(n), true
	}
	return 0, false
}
