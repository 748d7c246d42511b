package events

import (
	"fmt"
	"regexp"
	"testing"
	"time"
)

// Generated ids keep the contract's format (32 lowercase hex characters, a UUID without
// dashes) and sort by their millisecond, so the indexes keyed by them are appended to.
func TestNewEventIDIsTimeOrderedUUID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$`)
	t0 := time.UnixMilli(1_790_000_000_000)
	seen := map[string]bool{}
	prev := ""
	for i := range 1000 {
		id := newEventID(t0.Add(time.Duration(i) * time.Millisecond))
		if !re.MatchString(id) {
			t.Fatalf("id %q is not a version 7 UUID in 32 lowercase hex characters", id)
		}
		if id <= prev {
			t.Fatalf("id %q of a later millisecond sorts before %q", id, prev)
		}
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id], prev = true, id
	}
	if got, want := newEventID(t0)[:12], fmt.Sprintf("%012x", t0.UnixMilli()); got != want {
		t.Fatalf("time prefix = %s, want %s", got, want)
	}
	// Within one millisecond the ids are random, not equal.
	if a, b := newEventID(t0), newEventID(t0); a == b {
		t.Fatalf("two ids of the same millisecond are equal: %s", a)
	}
	if id := NewEventID(); !re.MatchString(id) {
		t.Fatalf("NewEventID() = %q", id)
	}
}
