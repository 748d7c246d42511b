package consumer

import (
	"context"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
)

// A collected batch (a group) is split by user into MaxInFlight lanes (a small group collected
// while every lane is idle goes whole to one lane instead: see dispatch); each lane applies
// its share in its own transaction, one group after the other, so:
//   - one user's events always go to the same lane and apply in stream order: a failing
//     transaction of a lane is retried before anything later of its users (the lane waits);
//   - two lanes never lock the same user rows; the co-visitation lists and items they share
//     are locked in the same sorted order as concurrent consumers lock them (no deadlock),
//     and their effects are sums, so the lanes may commit in any order;
//   - a group's offsets are committed once every lane applied its share AND every earlier
//     group is committed (the sequencer), so a commit never covers an event not durable.
//
// The Kafka commit runs on its own goroutine (the committer), off the apply loop: it commits
// the highest offset per partition of the groups released so far, coalescing while a commit
// is in flight.

// partKey names a partition.
type partKey struct {
	topic     string
	partition int
}

// group is one collected batch: the unit of offset commits.
type group struct {
	batch   []fetched
	pending int  // lanes still applying their share (sequencer.mu)
	done    bool // every lane finished (sequencer.mu)
	ok      bool // no lane gave up (sequencer.mu)
}

// laneJob is a lane's share of a group, or the whole group (merged: see dispatch).
type laneJob struct {
	g      *group
	items  []*fetched
	merged bool
}

// sequencer releases groups in collection order and hands their offsets to the committer.
type sequencer struct {
	slots chan struct{} // one per group not yet released: bounds how far lanes drift apart

	mu      sync.Mutex
	queue   []*group // unreleased groups, oldest first
	halted  bool     // a group was abandoned (shutdown): nothing after it may be committed
	offsets map[partKey]kafkago.Message
	wake    chan struct{} // offsets to commit (capacity 1)
}

func newSequencer(window int) *sequencer {
	return &sequencer{slots: make(chan struct{}, window), offsets: map[partKey]kafkago.Message{}, wake: make(chan struct{}, 1)}
}

// reserve takes a slot for the next group: it blocks while the window is full. The group is
// collected after, so it grows while the lanes are busy.
func (s *sequencer) reserve() { s.slots <- struct{}{} }

// unreserve returns a slot that no group took.
func (s *sequencer) unreserve() { <-s.slots }

// add registers g (pending lanes already set) in the slot reserved for it.
func (s *sequencer) add(g *group) {
	s.mu.Lock()
	g.ok = true
	s.queue = append(s.queue, g)
	s.mu.Unlock()
}

// finish records one lane's outcome for g (ok false: it gave up, at shutdown).
func (s *sequencer) finish(g *group, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g.ok = g.ok && ok
	if g.pending--; g.pending > 0 {
		return
	}
	g.done = true
	released := false
	for len(s.queue) > 0 && s.queue[0].done {
		h := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		<-s.slots
		if !h.ok {
			s.halted = true
		}
		if s.halted {
			continue
		}
		for i := range h.batch {
			m := &h.batch[i].msg
			k := partKey{m.Topic, m.Partition}
			if cur, ok := s.offsets[k]; !ok || m.Offset > cur.Offset {
				s.offsets[k] = *m
			}
		}
		released = true
	}
	if released {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// take returns the offsets released since the last call.
func (s *sequencer) take() []kafkago.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offsets) == 0 {
		return nil
	}
	out := make([]kafkago.Message, 0, len(s.offsets))
	for _, m := range s.offsets {
		out = append(out, m)
	}
	clear(s.offsets)
	return out
}

// giveBack returns offsets whose commit failed, to go with the next commit (which the wake
// schedules: an idle stream brings none), unless a later offset of their partition was
// released meanwhile.
func (s *sequencer) giveBack(msgs []kafkago.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		k := partKey{m.Topic, m.Partition}
		if cur, ok := s.offsets[k]; !ok || m.Offset > cur.Offset {
			s.offsets[k] = m
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// commitLoop commits released offsets until stop is closed, then commits what is left.
// Offsets whose commit failed are retried with the next commit, one interval later at the
// earliest (a partition lost meanwhile is skipped by the reader).
func (c *Consumer) commitLoop(ctx context.Context, r *kafka.GroupReader, s *sequencer, stop <-chan struct{}) {
	var last time.Time
	for {
		select {
		case <-s.wake:
			// Batches released while waiting out the interval join this commit.
			if wait := c.cfg.CommitInterval - time.Since(last); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-stop:
					t.Stop()
					c.commit(ctx, r, s.take())
					return
				}
			}
			if msgs := s.take(); !c.commit(ctx, r, msgs) {
				s.giveBack(msgs)
			}
			last = time.Now()
		case <-stop:
			c.commit(ctx, r, s.take())
			return
		}
	}
}

// lane applies its jobs in order.
func (c *Consumer) lane(ctx context.Context, l int, jobs <-chan laneJob, s *sequencer) {
	for j := range jobs {
		s.finish(j.g, c.process(ctx, j.items))
		if j.merged && c.merged.Add(-1) == 0 {
			select {
			case c.mergedDone <- struct{}{}:
			default:
			}
		}
		if c.outstanding[l].Add(-1) == 0 {
			select {
			case c.laneFree <- struct{}{}:
			default:
			}
		}
	}
}

// lanesIdle reports whether no lane has anything queued or applying.
func (c *Consumer) lanesIdle() bool {
	for i := range c.outstanding {
		if c.outstanding[i].Load() != 0 {
			return false
		}
	}
	return true
}

// laneIdle reports whether a lane has nothing queued or applying.
func (c *Consumer) laneIdle() bool {
	for i := range c.outstanding {
		if c.outstanding[i].Load() == 0 {
			return true
		}
	}
	return false
}

// laneOf is the lane of a user: FNV-1a, stable for the process's life, which is all the
// order needs (a restart starts from committed offsets).
func laneOf(user string, lanes int) int {
	if lanes == 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(user); i++ {
		h ^= uint32(user[i])
		h *= 16777619
	}
	return int(h % uint32(lanes))
}
