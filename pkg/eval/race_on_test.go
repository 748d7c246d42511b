//go:build race

package eval

// raceEnabled shrinks the dataset integration test under the race detector (5–10× slower).
const raceEnabled = true
