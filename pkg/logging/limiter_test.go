package logging

import (
	"testing"
	"time"
)

// The first occurrence goes through; those within the second after it are only counted, and
// the next one through carries their number.
func TestLimiterLetsOneLineASecondThrough(t *testing.T) {
	var l Limiter
	var got []int64
	do := func() { l.Do(func(n int64) { got = append(got, n) }) }
	for range 5 {
		do()
	}
	if len(got) != 1 || got[0] != 1 {
		t.Fatalf("lines %v after 5 occurrences within a second, want [1]", got)
	}
	l.last.Store(time.Now().Add(-time.Second).UnixNano()) // a second has passed
	do()
	if len(got) != 2 || got[1] != 5 {
		t.Fatalf("lines %v, want [1 5]: the second line counts the 4 suppressed and itself", got)
	}
}
