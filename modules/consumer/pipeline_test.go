package consumer

import (
	"fmt"
	"slices"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
)

func msgs(part int, offsets ...int64) []fetched {
	out := make([]fetched, len(offsets))
	for i, o := range offsets {
		out[i].msg = kafkago.Message{Topic: "t", Partition: part, Offset: o}
	}
	return out
}

func committed(s *sequencer) map[int]int64 {
	out := map[int]int64{}
	for _, m := range s.take() {
		out[m.Partition] = m.Offset
	}
	return out
}

// Offsets are released in collection order only, coalesced to the highest per partition,
// and never past a group abandoned at shutdown.
func TestSequencerReleasesInOrder(t *testing.T) {
	type step struct {
		finish int // group index
		ok     bool
		want   map[int]int64 // released offsets after the step (empty: nothing)
	}
	tests := []struct {
		name   string
		groups [][]fetched
		lanes  []int // lanes per group
		steps  []step
	}{
		{
			name:   "later group first waits for the earlier",
			groups: [][]fetched{msgs(0, 1, 2), msgs(0, 3, 4)},
			lanes:  []int{1, 1},
			steps: []step{
				{finish: 1, ok: true, want: map[int]int64{}},
				{finish: 0, ok: true, want: map[int]int64{0: 4}},
			},
		},
		{
			name:   "a group waits for all its lanes",
			groups: [][]fetched{append(msgs(0, 5), msgs(1, 9)...)},
			lanes:  []int{2},
			steps: []step{
				{finish: 0, ok: true, want: map[int]int64{}},
				{finish: 0, ok: true, want: map[int]int64{0: 5, 1: 9}},
			},
		},
		{
			name:   "an abandoned group stops every later commit",
			groups: [][]fetched{msgs(0, 1), msgs(0, 2), msgs(0, 3)},
			lanes:  []int{1, 1, 1},
			steps: []step{
				{finish: 0, ok: true, want: map[int]int64{0: 1}},
				{finish: 2, ok: true, want: map[int]int64{}},
				{finish: 1, ok: false, want: map[int]int64{}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSequencer(len(tt.groups))
			gs := make([]*group, len(tt.groups))
			for i, b := range tt.groups {
				gs[i] = &group{batch: b, pending: tt.lanes[i]}
				s.reserve()
				s.add(gs[i])
			}
			for i, st := range tt.steps {
				s.finish(gs[st.finish], st.ok)
				if got := committed(s); fmt.Sprint(got) != fmt.Sprint(st.want) {
					t.Fatalf("step %d: released %v, want %v", i, got, st.want)
				}
			}
			if n := len(s.slots); n != 0 {
				t.Errorf("%d window slots still taken after every group finished", n)
			}
		})
	}
}

// Offsets whose commit failed go with the next commit, unless a later offset of their
// partition was released meanwhile.
func TestSequencerRetriesOffsetsOfAFailedCommit(t *testing.T) {
	s := newSequencer(2)
	release := func(b []fetched) {
		g := &group{batch: b, pending: 1}
		s.reserve()
		s.add(g)
		s.finish(g, true)
	}
	release(append(msgs(0, 1, 2), msgs(1, 7)...))
	failed := s.take()
	<-s.wake
	release(msgs(0, 3))
	s.giveBack(failed)
	select {
	case <-s.wake:
	default:
		t.Fatal("no commit scheduled for the offsets given back")
	}
	if got, want := committed(s), map[int]int64{0: 3, 1: 7}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("next commit %v, want %v", got, want)
	}
}

// A user always maps to the same lane, and users spread over every lane.
func TestLaneOf(t *testing.T) {
	for _, lanes := range []int{1, 2, 3} {
		seen := make([]int, lanes)
		for i := range 1000 {
			u := fmt.Sprintf("user-%d", i)
			l := laneOf(u, lanes)
			if l != laneOf(u, lanes) || l < 0 || l >= lanes {
				t.Fatalf("laneOf(%q, %d) = %d, unstable or out of range", u, lanes, l)
			}
			seen[l]++
		}
		if slices.Min(seen) < 1000/lanes/2 {
			t.Errorf("lanes=%d: users per lane %v, badly spread", lanes, seen)
		}
	}
}
