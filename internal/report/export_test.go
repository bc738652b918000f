package report

// SetLookahead sets how many events the second pass of the outputs in
// entry order may hold back, and returns a function that restores it.
func SetLookahead(n uint64) (restore func()) {
	old := lookahead
	lookahead = n
	return func() { lookahead = old }
}
