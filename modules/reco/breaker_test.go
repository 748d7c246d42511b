package reco

import (
	"fmt"
	"testing"
)

// --reco.breaker-failures counts consecutive failures: a success starts the count again, so
// errors scattered over hours never open the breaker and send every read elsewhere; a probe
// that succeeds (Reset) closes it and starts the count again too.
func TestBreakerOpensOnConsecutiveFailuresOnly(t *testing.T) {
	var changes []bool
	b := newBreaker(3, func(open bool) { changes = append(changes, open) })
	for range 10 {
		b.Failure()
		b.Failure()
		b.Success()
	}
	if b.IsOpen() {
		t.Fatal("opened by failures that were never 3 in a row")
	}
	b.Failure()
	b.Failure()
	if b.IsOpen() {
		t.Fatal("opened after 2 failures in a row, threshold 3")
	}
	b.Failure()
	if !b.IsOpen() || b.Allow() {
		t.Fatal("still closed after 3 failures in a row")
	}
	b.Reset()
	b.Failure()
	if b.IsOpen() {
		t.Fatal("one failure after a reset opened it again")
	}
	if got := fmt.Sprint(changes); got != "[true false]" {
		t.Fatalf("state changes %s, want [true false]", got)
	}
}
