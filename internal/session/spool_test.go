package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/livetrace/livetrace/internal/agent"
	"github.com/livetrace/livetrace/internal/testtarget"
)

// TestSpoolOrder puts frames of many sizes (up to a whole chunk) from a
// producer while the converter runs, and checks that the converter gets
// each frame once, whole, in order, and that the converted part of the file
// is given back (its blocks are freed) while the spool is open.
func TestSpoolOrder(t *testing.T) {
	var mu sync.Mutex
	var got [][]byte
	var tids []uint32
	sp, err := openSpool(t.TempDir(), func(tid uint32, raw []byte) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, bytes.Clone(raw))
		tids = append(tids, tid)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	var want [][]byte
	total := 0
	for i := 0; total < 3*spoolPunch; i++ {
		n := 16 * (1 + rng.Intn(4096)) // up to one 64 KiB chunk
		b := make([]byte, n)
		if i%3 == 0 {
			rng.Read(b) // stored as is
		}
		binary.LittleEndian.PutUint64(b, uint64(i))
		b[n-1] = byte(i)
		want = append(want, b)
		total += n
		if err := sp.put(uint32(i%7), b); err != nil {
			t.Fatal(err)
		}
	}
	// The converter keeps up and punches holes while the spool is open.
	flushAll(sp)
	deadline := time.Now().Add(20 * time.Second)
	for sp.backlog() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(sp.f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 2*spoolPunch {
		t.Errorf("the spool holds %d bytes on disk after converting %d: converted data is not given back", used, total)
	}
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("converted %d frames, put %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) || tids[i] != uint32(i%7) {
			t.Fatalf("frame %d: got %d bytes of tid %d, want %d bytes of tid %d", i, len(got[i]), tids[i], len(want[i]), i%7)
		}
	}
}

// TestSpoolCompact puts the records of a hot loop, and checks that the
// converter gets them back as they were, from a file 6 times smaller.
func TestSpoolCompact(t *testing.T) {
	var got []byte
	sp, err := openSpool(t.TempDir(), func(tid uint32, raw []byte) error {
		got = append(got, raw...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(4))
	var want []byte
	for i := 0; i < 64; i++ {
		b := hotLoopRecords(agent.DefaultChunkRecords, i%2 == 0, rng)
		want = append(want, b...)
		if err := sp.put(1, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
	size := sp.wOff.Load()
	if !bytes.Equal(got, want) {
		t.Fatalf("converted %d bytes of records, not the %d put", len(got), len(want))
	}
	t.Logf("%d bytes of records in a spool of %d bytes", len(want), size)
	if size*6 > int64(len(want)) {
		t.Errorf("%d bytes of records in a spool of %d bytes: want at least 6 times smaller", len(want), size)
	}
}

// TestSpoolConvertError stops converting at the first error, and finish
// reports it. A put after the converter stopped returns its error (the
// caller then converts the chunk itself), so the puts may see it too.
func TestSpoolConvertError(t *testing.T) {
	n, tid := 0, 0
	fire := errors.New("disk on fire")
	sp, err := openSpool(t.TempDir(), func(uint32, []byte) error {
		n++
		if n == 3 {
			tid = unix.Gettid()
			return fire
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := sp.put(1, make([]byte, 16)); err != nil {
			if !errors.Is(err, fire) || i < 3 {
				sp.finish()
				t.Fatalf("put %d: %v", i, err)
			}
			break
		}
		sp.flush()
	}
	flushAll(sp)
	// The converter stopped, and its thread went back to the runtime at
	// the nice it had (as root it was at 19 while it converted), before
	// finish.
	<-sp.done
	want, _ := unix.Getpriority(unix.PRIO_PROCESS, os.Getpid()) // the main thread's
	if got, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && got != want {
		t.Errorf("the stopped converter's thread is at nice %d, want %d", 20-got, 20-want)
	}
	if err := sp.finish(); !errors.Is(err, fire) || n != 3 {
		t.Fatalf("finish: %v after %d frames, want the converter's error after 3", err, n)
	}
}

// TestSpoolDiskFull fills the file system the spool is on (a tmpfs of
// 2 MiB) while the converter is held at the first frame. The writer's
// write fails; the frames it could not write are converted from memory;
// every put from then on fails, naming the directory and the cause, and
// the caller converts its chunk itself (as deliverRaw does); finish
// reports no error. Every frame put comes out once.
func TestSpoolDiskFull(t *testing.T) {
	testtarget.RequireRoot(t) // to mount the tmpfs
	dir := t.TempDir()
	if err := unix.Mount("livetrace-test", dir, "tmpfs", 0, "size=2m"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	var mu sync.Mutex
	got := map[uint64]int{} // frame number -> times converted
	take := func(raw []byte) {
		mu.Lock()
		defer mu.Unlock()
		got[binary.LittleEndian.Uint64(raw)]++
	}
	hold := make(chan struct{})
	sp, err := openSpool(dir, func(_ uint32, raw []byte) error {
		if binary.LittleEndian.Uint64(raw) == 0 {
			<-hold // the first frame, in the first slab: the converter's
		}
		take(raw)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	release := sync.OnceFunc(func() { close(hold) })
	finished := false
	defer func() {
		// On a failure too: a converter left lowered leaves the Go
		// collector off for the tests that follow.
		release()
		if !finished {
			sp.finish()
		}
	}()
	rng := rand.New(rand.NewSource(7))
	frame := func(i int) []byte {
		b := make([]byte, 64<<10)
		rng.Read(b) // stored as is
		binary.LittleEndian.PutUint64(b, uint64(i))
		return b
	}
	n, refused := 0, 0
	put := func() error {
		b := frame(n)
		n++
		err := sp.put(1, b)
		if err != nil {
			refused++
			take(b)
		}
		sp.flush()
		return err
	}
	// More than the file system holds, then until the writer has failed.
	for n < 64 {
		put()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if sp.failed.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("64 frames of 64 KiB on a tmpfs of 2 MiB, and no write failed within 10 s")
		}
		put()
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 8; i++ {
		err := put()
		if err == nil || !errors.Is(err, unix.ENOSPC) || !bytes.Contains([]byte(err.Error()), []byte(dir)) {
			t.Fatalf("put after the write failed: %v, want ENOSPC naming %s", err, dir)
		}
	}
	release()
	finished = true
	if err := sp.finish(); err != nil {
		t.Fatalf("finish: %v (a write error loses nothing and is no error)", err)
	}
	for i := 0; i < n; i++ {
		if got[uint64(i)] != 1 {
			t.Fatalf("frame %d of %d converted %d times, want once", i, n, got[uint64(i)])
		}
	}
	if len(got) != n {
		t.Fatalf("converted %d distinct frames, put %d", len(got), n)
	}
	t.Logf("%d frames: %d refused by put and converted by the caller", n, refused)
}

// TestSpoolSlabsFull: with the writer held at its first slab until put
// has queued every other one, put makes no more than spoolSlabs slabs
// and waits for the writer to give one back; every frame still comes out
// once, in order.
func TestSpoolSlabsFull(t *testing.T) {
	var got []uint64
	sp, err := openSpool(t.TempDir(), func(_ uint32, raw []byte) error {
		got = append(got, binary.LittleEndian.Uint64(raw))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	first := true
	spoolWriteHook = func() { // on the writer's goroutine
		if !first {
			return
		}
		first = false
		deadline := time.Now().Add(10 * time.Second)
		for len(sp.queue) < spoolSlabs-1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // put is then waiting for a slab
	}
	defer func() { spoolWriteHook = nil }()
	rng := rand.New(rand.NewSource(8))
	b := make([]byte, 64<<10)
	n := 2 * spoolSlabs * spoolSlab / len(b) // twice what the slabs hold
	for i := 0; i < n; i++ {
		rng.Read(b) // stored as is
		binary.LittleEndian.PutUint64(b, uint64(i))
		if err := sp.put(1, b); err != nil {
			sp.finish()
			t.Fatal(err)
		}
	}
	sp.mu.Lock()
	waits, slabs := sp.putStats.waits, sp.slabs
	sp.mu.Unlock()
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
	if waits == 0 || slabs != spoolSlabs {
		t.Errorf("%d puts waited for a slab, %d slabs made: want waits, and %d slabs at most", waits, slabs, spoolSlabs)
	}
	if len(got) != n {
		t.Fatalf("converted %d frames, put %d", len(got), n)
	}
	for i, v := range got {
		if v != uint64(i) {
			t.Fatalf("frame %d converted as the %dth", v, i)
		}
	}
}

// TestSpoolUnused: a spool that got no frame finishes at once.
func TestSpoolUnused(t *testing.T) {
	sp, err := openSpool(t.TempDir(), func(uint32, []byte) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestSpoolNoDirectory names the directory and what to do.
func TestSpoolNoDirectory(t *testing.T) {
	_, err := openSpool("/nonexistent/dir", func(uint32, []byte) error { return nil })
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("/nonexistent/dir")) {
		t.Fatalf("got %v", err)
	}
}

// BenchmarkSpoolPut measures the poll loop's cost of spooling a full chunk
// of hot-loop records, raw and encoded, with the writer and the converter
// running. The CPU time of the putting thread (RUSAGE_THREAD) is what the
// loop pays.
func BenchmarkSpoolPut(b *testing.B) {
	for _, encode := range []bool{false, true} {
		name := "raw"
		if encode {
			name = "encoded"
		}
		b.Run(name, func(b *testing.B) {
			defer func(old bool) { spoolEncode = old }(spoolEncode)
			spoolEncode = encode
			sp, err := openSpool(b.TempDir(), func(uint32, []byte) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			raw := hotLoopRecords(agent.DefaultChunkRecords, false, rand.New(rand.NewSource(5)))
			n := len(raw) / agent.SizeofRecord
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var r0, r1 unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_THREAD, &r0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := sp.put(1, raw); err != nil {
					b.Fatal(err)
				}
			}
			_ = unix.Getrusage(unix.RUSAGE_THREAD, &r1)
			b.StopTimer()
			cpu := time.Duration(r1.Utime.Nano()+r1.Stime.Nano()-r0.Utime.Nano()-r0.Stime.Nano()) * time.Nanosecond
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(n), "cpu-ns/record")
			if err := sp.finish(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestSpoolLargeFrame puts chunks larger than the converter's read (the
// largest chunk, stored as is), between small ones: each comes back whole.
func TestSpoolLargeFrame(t *testing.T) {
	var got [][]byte
	sp, err := openSpool(t.TempDir(), func(tid uint32, raw []byte) error {
		got = append(got, bytes.Clone(raw))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(6))
	var want [][]byte
	for _, n := range []int{16, spoolRead + 16, 32, spoolMaxFrame, 48} {
		b := make([]byte, n)
		rng.Read(b) // random: stored as is
		want = append(want, b)
		if err := sp.put(1, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("converted %d frames, put %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
}

// TestSpoolCollector: while the converter's thread is at nice 19, the
// runtime's own collections are off (a stop of the world would wait for
// that thread, which the kernel may leave without a CPU for over 100 ms)
// and the spool's collector runs them; for a collection, and for a punch
// (which holds the file's lock against the poll loop's writes), the
// thread is raised, and lowered again after; finish turns the runtime's
// collections back on.
func TestSpoolCollector(t *testing.T) {
	testtarget.RequireRoot(t) // to lower the converter's priority
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	type seen struct {
		what      string
		tid, nice int
	}
	seenc := make(chan seen, 64)
	raisedHook = func(what string, tid int) {
		old, _ := unix.Getpriority(unix.PRIO_PROCESS, tid)
		select {
		case seenc <- seen{what, tid, 20 - old}:
		default:
		}
	}
	defer func() { raisedHook = nil }()
	// The goal is reckoned from the live heap at the last collection,
	// which an earlier test may have left far above what is live now.
	runtime.GC()
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	garbage := max(64<<20, 2*int(live[0].Value.Uint64())+8<<20)
	release := make(chan struct{})
	converting := make(chan int, 1)
	first := true
	sp, err := openSpool(t.TempDir(), func(uint32, []byte) error {
		if first {
			first = false
			converting <- unix.Gettid()
			<-release
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.put(1, make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	flushAll(sp)
	tid := <-converting
	if g := gogc(); g != -1 {
		t.Errorf("GOGC %d while the converter is lowered, want -1 (off)", g)
	}
	// Garbage past the goal: the collector must collect it.
	var keep [][]byte
	for n := 0; n < garbage; n += 1 << 20 {
		keep = append(keep, make([]byte, 1<<20))
	}
	keep = nil
	// Then more than a punch's worth of frames.
	close(release)
	frame := make([]byte, 64<<10)
	rand.New(rand.NewSource(1)).Read(frame) // stored as is
	for n := 0; n < spoolPunch+len(frame); n += len(frame) {
		if err := sp.put(1, frame); err != nil {
			t.Fatal(err)
		}
	}
	flushAll(sp)
	got := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for !got["collect"] || !got["punch"] {
		select {
		case s := <-seenc:
			if s.tid != tid {
				t.Fatalf("%s: raised thread %d, the converter is %d", s.what, s.tid, tid)
			}
			if s.nice == 19 {
				t.Errorf("%s: the converter's thread is at nice 19", s.what)
			}
			got[s.what] = true
		case <-timeout:
			t.Fatalf("within 10 s of %d MiB of garbage and %d MiB of frames, raised for %v; want a collection and a punch", garbage>>20, spoolPunch>>20, got)
		}
	}
	// Lowered again after.
	deadline := time.Now().Add(5 * time.Second)
	for {
		old, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err == nil && 20-old == 19 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the converter's thread is at nice %d after the collection and the punch, want 19", 20-old)
		}
		time.Sleep(time.Millisecond)
	}
	if err := sp.finish(); err != nil {
		t.Fatal(err)
	}
	if g := gogc(); g != 100 {
		t.Errorf("GOGC %d after finish, want 100 back", g)
	}
}

// flushAll flushes until the writer has every frame put (or the spool
// failed), as the poll loop's flush after each poll does in time.
func flushAll(sp *spool) {
	for {
		sp.mu.Lock()
		done := len(sp.cur) == 0 && len(sp.queue) == 0 || sp.failed.Load()
		sp.mu.Unlock()
		if done {
			return
		}
		sp.flush()
		time.Sleep(time.Millisecond)
	}
}

// gogc is the current GOGC.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(int64(s[0].Value.Uint64()))
}
