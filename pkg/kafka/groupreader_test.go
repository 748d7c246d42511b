package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
	"recsys/pkg/testutil"
)

// produceKeyed writes n messages keyed k<from>..k<from+n-1> (spread over the partitions) to
// each topic, with the value equal to the key.
func produceKeyed(t *testing.T, ctx context.Context, c *kafka.Client, from, n int, topics ...string) {
	t.Helper()
	p := c.NewProducer(kafka.ProducerOptions{})
	defer p.Close()
	var msgs []kafkago.Message
	for _, topic := range topics {
		for i := from; i < from+n; i++ {
			k := []byte(fmt.Sprintf("k%d", i))
			msgs = append(msgs, kafkago.Message{Topic: topic, Key: k, Value: k,
				Headers: []kafkago.Header{{Key: "h", Value: []byte(topic)}}})
		}
	}
	// A broker that just started may not lead its partitions yet: what it refused is sent again.
	testutil.ProduceAll(t, ctx, p, msgs...)
}

// collected is what a reader handed over, checked for per-partition order as it comes.
type collected struct {
	mu   sync.Mutex
	msgs []kafkago.Message
	next map[string]int64 // topic/partition -> offset expected at least next
	// order lists offsets that went back (a partition started over: within a generation a
	// fault, across one the redelivery of what was not committed); fault the content faults.
	order, fault []string
}

func (c *collected) add(b []kafkago.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next == nil {
		c.next = map[string]int64{}
	}
	for _, m := range b {
		k := fmt.Sprintf("%s/%d", m.Topic, m.Partition)
		if m.Offset < c.next[k] {
			c.order = append(c.order, fmt.Sprintf("%s: offset %d after %d", k, m.Offset, c.next[k]-1))
		}
		c.next[k] = m.Offset + 1
		if len(m.Headers) != 1 || string(m.Headers[0].Value) != m.Topic || string(m.Key) != string(m.Value) {
			c.fault = append(c.fault, fmt.Sprintf("%s@%d: key %q value %q headers %v", k, m.Offset, m.Key, m.Value, m.Headers))
		}
		c.msgs = append(c.msgs, m)
	}
}

func (c *collected) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// drain hands everything r fetches to into until ctx ends.
func drain(ctx context.Context, r *kafka.GroupReader, into *collected) {
	for {
		b, err := r.FetchBatch(ctx)
		if err != nil {
			return
		}
		into.add(b)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, d)
		}
	}
}

func newGroupReader(t *testing.T, c *kafka.Client, group string, topics ...string) *kafka.GroupReader {
	t.Helper()
	r, err := c.NewGroupReader(kafka.ReaderOptions{GroupID: group, Topics: topics, MaxWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// Every message of every partition of both topics arrives once, in offset order per
// partition, in far fewer fetches than messages; committed offsets are where a new member of
// the group starts.
func TestGroupReaderReadsEveryPartitionAndResumesFromCommits(t *testing.T) {
	c, ctx, topics := producerTopics(t, 6, "t.gr.a.", "t.gr.b.")
	const n = 600
	produceKeyed(t, ctx, c, 0, n, topics...)
	group := testutil.Unique("gr")
	r := newGroupReader(t, c, group, topics...)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	waitFor(t, "every message read", 30*time.Second, func() bool { return got.len() >= 2*n })
	stop()
	<-done
	if f := append(got.order, got.fault...); len(f) > 0 {
		t.Fatalf("%d faults, first %s", len(f), f[0])
	}
	seen := map[string]int{}
	for _, m := range got.msgs {
		seen[m.Topic+"|"+string(m.Value)]++
	}
	for _, topic := range topics {
		for i := 0; i < n; i++ {
			if k := fmt.Sprintf("%s|k%d", topic, i); seen[k] != 1 {
				t.Fatalf("%s read %d times", k, seen[k])
			}
		}
	}
	partitions := map[string]bool{}
	for _, m := range got.msgs {
		partitions[fmt.Sprintf("%s/%d", m.Topic, m.Partition)] = true
	}
	if len(partitions) != 12 {
		t.Fatalf("messages from %d partitions, want 12", len(partitions))
	}
	s := r.Stats()
	t.Logf("%d messages in %d fetches, %d dials, %d errors, %d rebalances", len(got.msgs), s.Fetches, s.Dials, s.Errors, s.Rebalances)
	if s.Rebalances < 1 || s.Fetches < 1 || s.Fetches > int64(len(got.msgs))/10 {
		t.Fatalf("stats %+v for %d messages: want a generation, and batched fetches", s, len(got.msgs))
	}
	if err := r.CommitMessages(ctx, got.msgs...); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[int]int64{}
	for _, m := range got.msgs {
		if want[m.Topic] == nil {
			want[m.Topic] = map[int]int64{}
		}
		want[m.Topic][m.Partition] = max(want[m.Topic][m.Partition], m.Offset+1)
	}
	if cm := r.Committed(); !maps.EqualFunc(cm, want, maps.Equal) {
		t.Fatalf("committed %v after the commit of %v", cm, want)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	produceKeyed(t, ctx, c, n, 10, topics...)
	r2 := newGroupReader(t, c, group, topics...)
	// What the generation starts from, before this member commits anything (the lag of an
	// idle partition that came back from another member).
	waitFor(t, "the new member's assignment", 30*time.Second, r2.Joined)
	if cm := r2.Committed(); !maps.EqualFunc(cm, want, maps.Equal) {
		t.Fatalf("a new member's committed offsets %v, want %v", cm, want)
	}
	var again collected
	dctx, stop = context.WithCancel(ctx)
	done = make(chan struct{})
	go func() { defer close(done); drain(dctx, r2, &again) }()
	waitFor(t, "the new messages read", 30*time.Second, func() bool { return again.len() >= 20 })
	time.Sleep(300 * time.Millisecond) // anything redelivered would come with them
	stop()
	<-done
	if again.len() != 20 {
		t.Fatalf("after the commit a new member read %d messages, want the 20 new ones", again.len())
	}
	for _, m := range again.msgs {
		var i int
		if _, err := fmt.Sscanf(string(m.Value), "k%d", &i); err != nil || i < n {
			t.Fatalf("redelivered %q of %s/%d@%d", m.Value, m.Topic, m.Partition, m.Offset)
		}
	}
}

// An idle member long-polls each broker once per wait, whatever its partition count: a
// reader per partition polled each of them (12 here).
func TestGroupReaderIdleLongPolls(t *testing.T) {
	c, ctx, topics := producerTopics(t, 6, "t.gr.idle.a.", "t.gr.idle.b.")
	r, err := c.NewGroupReader(kafka.ReaderOptions{GroupID: testutil.Unique("gr-idle"), Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() { _, _ = r.FetchBatch(ctx) }()
	waitFor(t, "joined", 20*time.Second, r.Joined)
	_ = r.Stats()
	const watch = 4 * time.Second
	time.Sleep(watch)
	s := r.Stats()
	t.Logf("idle for %s: %d fetches, %d dials, %d errors", watch, s.Fetches, s.Dials, s.Errors)
	if perSec := float64(s.Fetches) / watch.Seconds(); perSec > 2 || s.Fetches < 2 {
		t.Errorf("%.1f fetches a second for 12 idle partitions, want about 1 (the wait %s)", perSec, kafka.DefaultFetchMaxWait)
	}
	if s.Errors > 0 {
		t.Errorf("%d fetch errors while idle", s.Errors)
	}
}

// Two members share the partitions; each message produced once both hold their share
// reaches exactly one of them. A member's commit of a partition it no longer owns is left
// out: the owner's commit stands.
func TestGroupReaderTwoMembersSplitThePartitions(t *testing.T) {
	c, ctx, topics := producerTopics(t, 6, "t.gr.two.")
	group := testutil.Unique("gr-two")
	a := newGroupReader(t, c, group, topics...)
	var gotA, gotB collected
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { drain(dctx, a, &gotA) })
	waitFor(t, "first member joined", 20*time.Second, a.Joined)
	produceKeyed(t, ctx, c, 0, 60, topics...)
	waitFor(t, "first member read everything", 20*time.Second, func() bool { return gotA.len() >= 60 })
	old := append([]kafkago.Message(nil), gotA.msgs...)

	b := newGroupReader(t, c, group, topics...)
	wg.Go(func() { drain(dctx, b, &gotB) })
	waitFor(t, "partitions split", 30*time.Second, func() bool {
		return b.Joined() && kafka.Assigned(a) == 3 && kafka.Assigned(b) == 3
	})
	// The first member commits every partition it read before the split, three of which
	// are now the second member's: only its own three are committed.
	if err := a.CommitMessages(ctx, old...); err != nil {
		t.Fatal(err)
	}
	committed, err := c.Admin().OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topics[0]: {0, 1, 2, 3, 4, 5}}})
	if err != nil {
		t.Fatal(err)
	}
	ownedByA := 0
	for _, p := range committed.Topics[topics[0]] {
		if p.CommittedOffset >= 0 {
			ownedByA++
		}
	}
	if ownedByA != 3 {
		t.Fatalf("%d partitions committed by the first member, want its 3", ownedByA)
	}
	before := gotA.len() + gotB.len()
	produceKeyed(t, ctx, c, 1000, 60, topics...)
	// The second member starts its partitions at the group's offsets (none committed: the
	// first offset), so it reads the first 60 of them again, then the new ones.
	waitFor(t, "new messages read", 30*time.Second, func() bool {
		return countFrom(&gotA, 1000)+countFrom(&gotB, 1000) >= 60
	})
	time.Sleep(300 * time.Millisecond)
	stop()
	wg.Wait()
	if n := countFrom(&gotA, 1000) + countFrom(&gotB, 1000); n != 60 || countFrom(&gotA, 1000) == 0 || countFrom(&gotB, 1000) == 0 {
		t.Fatalf("new messages: %d to the first member, %d to the second, want 60 split", countFrom(&gotA, 1000), countFrom(&gotB, 1000))
	}
	if len(gotA.fault)+len(gotB.fault)+len(gotB.order) > 0 {
		t.Fatalf("faults: %v %v %v", gotA.fault, gotB.fault, gotB.order)
	}
	// The first member's partitions that stayed its own started over at offset 0 in the
	// new generation (nothing was committed yet): once each, no other going back.
	if len(gotA.order) > 3 {
		t.Fatalf("the first member went back %d times: %v", len(gotA.order), gotA.order)
	}
	t.Logf("%d messages before the new ones; the first member started over %v", before, gotA.order)
}

func countFrom(c *collected, from int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.msgs {
		var i int
		if _, err := fmt.Sscanf(string(m.Value), "k%d", &i); err == nil && i >= from {
			n++
		}
	}
	return n
}

// A committed offset past the partition's end (a topic recreated, a hand-set offset) starts
// the partition over at its first offset: redelivery is deduplicated downstream, a skip
// would lose events.
func TestGroupReaderOffsetOutOfRangeStartsOver(t *testing.T) {
	c, ctx, topics := producerTopics(t, 1, "t.gr.oor.")
	produceKeyed(t, ctx, c, 0, 20, topics...)
	group := testutil.Unique("gr-oor")
	res, err := c.Admin().OffsetCommit(ctx, &kafkago.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafkago.OffsetCommit{topics[0]: {{Partition: 0, Offset: 1_000_000}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Topics[topics[0]] {
		if p.Error != nil {
			t.Fatal(p.Error)
		}
	}
	r := newGroupReader(t, c, group, topics...)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	waitFor(t, "the partition read from its start", 30*time.Second, func() bool { return got.len() >= 20 })
	stop()
	<-done
	if got.msgs[0].Offset != 0 || got.len() != 20 {
		t.Fatalf("read %d messages from offset %d, want 20 from 0", got.len(), got.msgs[0].Offset)
	}
	if s := r.Stats(); s.Errors < 1 {
		t.Fatalf("stats %+v: the out-of-range fetch was not counted", s)
	}
}

// A fetch loop stopped while it waits to hand over an answer (every loop starts over: a
// partition of another leader's failed loop moved to this one's broker) leaves its
// partitions where the caller's messages end,
// so the loops that start over fetch that answer again. Had its offsets moved past the
// answer, the messages would never reach the consumer, whose later commits would go past
// them: events lost.
func TestGroupReaderLoopStoppedByAnotherLeaderLosesNothing(t *testing.T) {
	c, ctx, topics := producerTopics(t, 1, "t.gr.split.data.", "t.gr.split.gone.")
	data, gone := topics[0], topics[1]
	produceKeyed(t, ctx, c, 0, 20, data)
	r := kafka.NewFetcher(c, 200*time.Millisecond, 10*time.Second)
	type result struct {
		next [][]int64
		err  error
	}
	res := make(chan result, 1)
	go func() {
		next, err := kafka.FetchLeaders(ctx, r, []kafka.FetchPart{{Topic: data}}, []kafka.FetchPart{{Topic: gone}})
		res <- result{next, err}
	}()
	// The first answer waits in the reader's buffer, unread; the second cannot be handed over.
	waitFor(t, "the first answer fetched", 20*time.Second, func() bool { return r.Stats().Fetches > 0 })
	time.Sleep(500 * time.Millisecond)
	produceKeyed(t, ctx, c, 20, 20, data)
	time.Sleep(time.Second)
	// The other leader's partition fails its loop, which stops this one.
	if err := c.DeleteTopics(ctx, gone); err != nil {
		t.Fatal(err)
	}
	var got result
	select {
	case got = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("the fetch loops did not stop after a partition's topic was deleted")
	}
	t.Logf("loops ended: %v", got.err)
	first, err := r.FetchBatch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	handed := first[len(first)-1].Offset + 1
	if next := got.next[0][0]; next != handed {
		t.Fatalf("the consumer got offsets up to %d, the fetch starts again at %d: offsets %d..%d lost", handed-1, next, handed, next-1)
	}
}

// A member goes on reading its other topic while one of its topics is deleted, and takes
// the topic back once it is created again. kafka-go's group assigned nothing at all while a
// topic was missing, and its partition watcher ended every generation at its start: the
// group rebalanced in a loop (~400 generations a second) and read nothing.
func TestGroupReaderGoesOnWhileATopicIsDeleted(t *testing.T) {
	c, _, topics := producerTopics(t, 2, "t.gr.kept.", "t.gr.gone.")
	kept, gone := topics[0], topics[1]
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	r := newGroupReader(t, c, testutil.Unique("gr-gone"), topics...)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	defer func() { stop(); <-done }()
	of := func(topic string) int {
		got.mu.Lock()
		defer got.mu.Unlock()
		n := 0
		for _, m := range got.msgs {
			if m.Topic == topic {
				n++
			}
		}
		return n
	}
	produceKeyed(t, ctx, c, 0, 10, kept, gone)
	waitFor(t, "both topics read", 30*time.Second, func() bool { return got.len() >= 20 })
	r.Stats() // the counters from here on
	if err := c.DeleteTopics(ctx, gone); err != nil {
		t.Fatal(err)
	}
	// Once the group noticed (a rebalance), what it assigns goes on being read.
	rebalances := int64(0)
	waitFor(t, "a rebalance after the deletion", 30*time.Second, func() bool {
		rebalances += r.Stats().Rebalances
		return rebalances > 0
	})
	time.Sleep(2 * time.Second)
	produceKeyed(t, ctx, c, 10, 10, kept)
	waitFor(t, "the kept topic read after the other was deleted", 60*time.Second, func() bool { return of(kept) >= 20 })
	if err := c.EnsureTopics(ctx, gone); err != nil {
		t.Fatal(err)
	}
	produceKeyed(t, ctx, c, 10, 10, gone)
	waitFor(t, "the topic created again read", 60*time.Second, func() bool { return of(gone) >= 20 })
	if n := rebalances + r.Stats().Rebalances; n > 10 {
		t.Errorf("%d generations", n)
	}
	if len(got.fault) > 0 {
		t.Fatalf("faults: %v", got.fault)
	}
}

// Partitions added to a topic are assigned (the group's partition watcher) and read from
// their first offset: what the producers wrote to them before the rebalance is not skipped.
func TestGroupReaderTakesAddedPartitions(t *testing.T) {
	c, ctx, topics := producerTopics(t, 1, "t.gr.grow.")
	r := newGroupReader(t, c, testutil.Unique("gr-grow"), topics...)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	defer func() { stop(); <-done }()
	produceKeyed(t, ctx, c, 0, 10, topics...)
	waitFor(t, "the first partition read", 20*time.Second, func() bool { return got.len() >= 10 })
	res, err := c.Admin().CreatePartitions(ctx, &kafkago.CreatePartitionsRequest{Topics: []kafkago.TopicPartitionsConfig{{Name: topics[0], Count: 3}}})
	if err == nil {
		err = errors.Join(slices.Collect(maps.Values(res.Errors))...)
	}
	if err != nil {
		t.Fatal(err)
	}
	// The broker lists the new partitions, and names their leader, a moment before that
	// leader serves them: a produce then fails with Not Leader For Partition (1 run in 3
	// under -race). EnsureTopics on the existing topic returns once the leader of every
	// partition listed serves it.
	waitFor(t, "the added partitions listed", 20*time.Second, func() bool {
		conn, err := kafkago.DialContext(ctx, "tcp", testutil.KafkaBrokers(t)[0])
		if err != nil {
			return false
		}
		defer conn.Close()
		parts, err := conn.ReadPartitions(topics[0])
		return err == nil && len(parts) == 3
	})
	if err := c.EnsureTopics(ctx, topics...); err != nil {
		t.Fatal(err)
	}
	// A new producer: the metadata of the first would know one partition for a while.
	produceKeyed(t, ctx, c, 10, 30, topics...)
	waitFor(t, "every partition read", 40*time.Second, func() bool { return got.len() >= 40 })
	parts := map[int]bool{}
	for _, m := range got.msgs {
		parts[m.Partition] = true
	}
	if len(parts) != 3 || kafka.Assigned(r) != 3 {
		t.Fatalf("read partitions %v, %d assigned", parts, kafka.Assigned(r))
	}
}

// A partition whose fetch fails (its topic deleted: the reader's metadata still names its
// leader) waits without holding back the partitions fetched from the same broker: each of
// their messages arrives within moments. The failed fetch used to stop the whole broker's
// loop, whose partitions then waited out the backoff (up to 2 s) again and again until the
// reader's metadata no longer listed the topic.
func TestGroupReaderFetchesAroundAPartitionItsBrokerRefuses(t *testing.T) {
	c, ctx, topics := producerTopics(t, 1, "t.gr.park.kept.", "t.gr.park.gone.")
	kept, gone := topics[0], topics[1]
	produceKeyed(t, ctx, c, 0, 1, kept, gone)
	// Metadata kept for the whole test: the deleted topic's partition keeps its leader.
	r := kafka.NewFetcher(c, 200*time.Millisecond, time.Hour)
	fctx, stop := context.WithCancel(ctx)
	fetching := make(chan struct{})
	go func() {
		defer close(fetching)
		kafka.FetchAll(fctx, r, kafka.FetchPart{Topic: kept}, kafka.FetchPart{Topic: gone})
	}()
	defer func() { stop(); <-fetching }()
	var mu sync.Mutex
	read := map[string]time.Time{}
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		for {
			b, err := r.FetchBatch(fctx)
			if err != nil {
				return
			}
			mu.Lock()
			for _, m := range b {
				read[m.Topic+"|"+string(m.Value)] = time.Now()
			}
			mu.Unlock()
		}
	}()
	defer func() { stop(); <-reading }()
	seen := func(k string) (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		at, ok := read[k]
		return at, ok
	}
	waitFor(t, "both partitions read", 20*time.Second, func() bool {
		_, a := seen(kept + "|k0")
		_, b := seen(gone + "|k0")
		return a && b
	})
	if err := c.DeleteTopics(ctx, gone); err != nil {
		t.Fatal(err)
	}
	p := c.NewProducer(kafka.ProducerOptions{})
	defer p.Close()
	// The first 2 s let a backoff grow; the latency counts after them.
	const n, measureFrom = 40, 20
	acked := make([]time.Time, n)
	for i := range n {
		k := fmt.Sprintf("k%d", i+1)
		testutil.ProduceAll(t, ctx, p, kafkago.Message{Topic: kept, Key: []byte(k), Value: []byte(k)})
		acked[i] = time.Now()
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, "every message of the kept topic read", 20*time.Second, func() bool {
		_, ok := seen(fmt.Sprintf("%s|k%d", kept, n))
		return ok
	})
	var worst time.Duration
	for i := measureFrom; i < n; i++ {
		at, ok := seen(fmt.Sprintf("%s|k%d", kept, i+1))
		if !ok {
			t.Fatalf("k%d of the kept topic not read", i+1)
		}
		worst = max(worst, at.Sub(acked[i]))
	}
	t.Logf("the kept partition's messages read at most %v after their ack; %+v", worst, r.Stats())
	if worst > 750*time.Millisecond {
		t.Errorf("a message of the kept partition read %v after its ack: the other partition's failure held it back", worst)
	}
}
