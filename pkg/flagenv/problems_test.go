package flagenv

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestProblems(t *testing.T) {
	var p Problems
	if p.Err() != nil {
		t.Fatal("no problem recorded, but an error")
	}
	p.IntBetween("x.ok", 5, 1, 10)
	p.DurationBetween("x.ok-d", time.Second, 0, time.Minute)
	p.DurationAtLeast("x.ok-min", time.Second, time.Millisecond)
	p.DurationPositive("x.ok-pos", time.Nanosecond)
	p.Add(nil)
	if err := p.Err(); err != nil {
		t.Fatalf("valid values reported: %v", err)
	}
	p.IntBetween("x.n", 0, 1, 10)
	p.DurationBetween("x.d", 2*time.Minute, 0, time.Minute)
	p.DurationAtLeast("x.min", 0, time.Millisecond)
	p.DurationPositive("x.pos", 0)
	p.Add(errors.New("--x.other is wrong"))
	p.Addf("--x.f must be %s", "set")
	want := []string{
		"--x.n must be between 1 and 10, got 0",
		"--x.d must be between 0s and 1m0s, got 2m0s",
		"--x.min must be >= 1ms, got 0s",
		"--x.pos must be > 0, got 0s",
		"--x.other is wrong",
		"--x.f must be set",
	}
	if got := p.Err().Error(); got != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
}
