package consumer

// SetUserTrimPage sets how many users a housekeeping pass examines, until the test ends
// (restore runs the previous value back in). Not for parallel tests.
func SetUserTrimPage(n int) (restore func()) {
	old := userTrimPage
	userTrimPage = n
	return func() { userTrimPage = old }
}
