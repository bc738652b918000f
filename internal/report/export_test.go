package report

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
