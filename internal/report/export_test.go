package report

import "io"

// SetLookahead sets how many events the second pass of the outputs in
// entry order may hold back, and returns a function that restores it.
func SetLookahead(n uint64) (restore func()) {
	old := lookahead
	lookahead = n
	return func() { lookahead = old }
}

// SetPerfettoOnePass sets whether the Perfetto export of graph mode
// without a duration filter takes its one-pass path, and returns a
// function that restores it.
func SetPerfettoOnePass(on bool) (restore func()) {
	old := perfettoOnePass
	perfettoOnePass = on
	return func() { perfettoOnePass = old }
}

// SetWritebackWindow sets the window of the writeback of big output
// files, and returns a function that restores it.
func SetWritebackWindow(n int64) (restore func()) {
	old := writebackWindow
	writebackWindow = n
	return func() { writebackWindow = old }
}

// WritebackProgress writes data to w in chunks of chunk bytes through a
// writeback, and returns how many bytes it had written back and dropped
// from the cache, or -1 if it was not used or stopped.
func WritebackProgress(w io.Writer, data []byte, chunk int) (int64, error) {
	wb := newWriteback(w)
	for len(data) > 0 {
		n, err := w.Write(data[:min(chunk, len(data))])
		if err != nil {
			return 0, err
		}
		data = data[n:]
		if wb != nil {
			wb = wb.wrote(n)
		}
	}
	if wb == nil {
		return -1, nil
	}
	return wb.dropped, nil
}
