package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// GroupReader reads the partitions a consumer group assigns to this member with one fetch
// request per leader broker holding all of them, as the Java consumer does. kafka-go's Reader
// runs a reader per partition, each with its own connection and long poll, so every wake-up
// of a topic cost the broker a fetch request per partition: at 4,400 auto-logged lists/s the
// consumer made ~350 fetches a second over the 12 partitions of the two topics (session 33),
// and the broker's share of the machine grew with the partition count, not with the events.
// Here a member's fetches grow with the brokers it reads from.
//
// Membership, assignment and offset commits stay kafka-go's ConsumerGroup. A partition
// without a committed offset starts at its first offset. A fetch of an offset the broker no
// longer has (retention, a recreated topic) starts the partition over at its first offset:
// redelivery is deduplicated downstream, a skip would lose events.
type GroupReader struct {
	o       ReaderOptions
	addr    net.Addr
	timeout time.Duration
	cg      *kafkago.ConsumerGroup
	trs     *transports

	out    chan []kafkago.Message
	gen    atomic.Pointer[generation]
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	dials, fetches, errs, rebalances atomic.Int64
}

// generation is what CommitMessages needs of the current generation.
type generation struct {
	g     *kafkago.Generation
	owned map[topicPartition]bool

	mu        sync.Mutex
	committed map[topicPartition]int64 // the group's offset of owned partitions that have one
}

// fetchState is one assigned partition and the next offset to fetch.
type fetchState struct {
	topicPartition
	offset int64
}

// ReaderStats are the reader's counters since the previous Stats call.
type ReaderStats struct {
	Dials, Fetches, Errors, Rebalances int64
}

// NewGroupReader joins the group and starts fetching; offsets move only when the caller
// commits (after its effects are durable). The caller closes it.
func (c *Client) NewGroupReader(o ReaderOptions) (*GroupReader, error) {
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultFetchMaxWait
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 16 << 20
	}
	o.MinBytes = max(o.MinBytes, 1)
	r := &GroupReader{o: o, addr: kafkago.TCP(c.Brokers...), timeout: c.RequestTimeout,
		out: make(chan []kafkago.Message, 1), done: make(chan struct{})}
	var errLog kafkago.Logger
	if o.ErrorLog != nil {
		errLog = kafkago.LoggerFunc(func(msg string, args ...any) { o.ErrorLog.Warn(fmt.Sprintf(msg, args...)) })
	}
	r.trs = newTransports(func() kafkago.RoundTripper {
		tr := c.Transport(5*time.Second, 10*time.Second)
		tr.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			r.dials.Add(1) // the raw connection; kafka-go adds TLS and SASL on top
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		return tr
	})
	cg, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                o.GroupID,
		Brokers:           c.Brokers,
		Topics:            o.Topics,
		Dialer:            c.Dialer(5 * time.Second),
		HeartbeatInterval: time.Second,
		SessionTimeout:    sessionTimeout,
		RebalanceTimeout:  10 * time.Second,
		// kafka-go waits this long after every failed join (5 s by default): once a broker
		// was back, the member waited up to that long to try again, and a fresh cluster's
		// first join (the offsets topic being created) cost it every time. A refused dial
		// or a coordinator still loading is cheap to ask again.
		JoinGroupBackoff: joinGroupBackoff,
		// kafka-go's defaults (range, then round robin) but for a topic that does not exist:
		// see presentTopics. Its partition watcher is watchPartitions.
		GroupBalancers: []kafkago.GroupBalancer{
			presentTopics{kafkago.RangeGroupBalancer{}, r.partitionsOf},
			presentTopics{kafkago.RoundRobinGroupBalancer{}, r.partitionsOf},
		},
		StartOffset: kafkago.FirstOffset,
		ErrorLogger: errLog,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", o.GroupID, err)
	}
	r.cg = cg
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(ctx)
	return r, nil
}

// FetchBatch returns the next fetched messages of one broker's answer, in offset order per
// partition. It returns io.EOF once the reader is closed.
func (r *GroupReader) FetchBatch(ctx context.Context) ([]kafkago.Message, error) {
	select {
	case b := <-r.out:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
		return nil, io.EOF
	}
}

// CommitMessages commits, per partition, the offset after the last of msgs. Partitions the
// current generation does not assign to this member are left alone: their owner commits
// them, and what this member applied of them is redelivered to it and deduplicated.
//
// A partition's commits may go back. A member that keeps a partition across a rebalance
// fetches it again from the committed offset while its pipeline still holds, and commits,
// later messages of it; one that gets a partition back from another member may commit what
// its pipeline held of it from before, below what the other member committed. Each commit
// still covers only durable effects: the caller commits a partition's offsets in the order
// it read them, each once everything read before is applied, and everything it read again
// was applied the first time. So the cost of a commit that went back is a replay after a
// crash of at most what the pipeline held, which the dedup absorbs; nothing is skipped.
func (r *GroupReader) CommitMessages(_ context.Context, msgs ...kafkago.Message) error {
	g := r.gen.Load()
	if g == nil {
		return errors.New("commit offsets: not a member of the group yet")
	}
	offsets := map[string]map[int]int64{}
	for i := range msgs {
		m := &msgs[i]
		if !g.owned[topicPartition{m.Topic, int32(m.Partition)}] {
			continue
		}
		if offsets[m.Topic] == nil {
			offsets[m.Topic] = map[int]int64{}
		}
		if next := m.Offset + 1; next > offsets[m.Topic][m.Partition] {
			offsets[m.Topic][m.Partition] = next
		}
	}
	if err := g.g.CommitOffsets(offsets); err != nil {
		return fmt.Errorf("commit offsets (generation %d): %w", g.g.ID, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for topic, ps := range offsets {
		for p, off := range ps {
			g.committed[topicPartition{topic, int32(p)}] = off
		}
	}
	return nil
}

// Committed returns the group's committed offset (the next one to read) of each partition
// the current generation assigns to this member, by topic: the one the generation started
// from, then this member's commits. A partition without one is left out; nil before the
// first assignment.
func (r *GroupReader) Committed() map[string]map[int]int64 {
	g := r.gen.Load()
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]map[int]int64{}
	for tp, off := range g.committed {
		if out[tp.topic] == nil {
			out[tp.topic] = map[int]int64{}
		}
		out[tp.topic][int(tp.partition)] = off
	}
	return out
}

// Assigned returns the partitions the current generation assigns to this member, by topic;
// nil before the first assignment.
func (r *GroupReader) Assigned() map[string][]int {
	g := r.gen.Load()
	if g == nil {
		return nil
	}
	out := map[string][]int{}
	for tp := range g.owned {
		out[tp.topic] = append(out[tp.topic], int(tp.partition))
	}
	return out
}

// Joined reports whether the group has assigned this member its partitions once.
func (r *GroupReader) Joined() bool { return r.gen.Load() != nil }

// Stats returns the counters since the previous call.
func (r *GroupReader) Stats() ReaderStats {
	return ReaderStats{Dials: r.dials.Swap(0), Fetches: r.fetches.Swap(0), Errors: r.errs.Swap(0), Rebalances: r.rebalances.Swap(0)}
}

// Close stops fetching and leaves the group.
func (r *GroupReader) Close() error {
	var err error
	r.once.Do(func() {
		r.cancel()
		err = r.cg.Close()
		<-r.done
		r.trs.close()
	})
	return err
}

const (
	// joinGroupBackoff is the wait after a failed join (kafka-go's JoinGroupBackoff).
	joinGroupBackoff = time.Second
	// sessionTimeout is how long the coordinator keeps a member it hears nothing from.
	sessionTimeout = 10 * time.Second
)

// run follows the group's generations: each one's partitions are fetched until it ends.
func (r *GroupReader) run(ctx context.Context) {
	var leaving sync.WaitGroup
	stopLeaving := func() {}
	defer func() {
		stopLeaving()
		leaving.Wait()
		close(r.done)
	}()
	member := "" // of the last generation, until the group's loop drops it
	for {
		gen, err := r.cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed) {
				return
			}
			// The group's own loop backs off before it reports the next error.
			r.errs.Add(1)
			r.warn("consumer group", err)
			// On any error but this one, the group's loop has dropped its member id after
			// asking to leave with it; with the coordinator unreachable (a broker restart)
			// that leave failed, and the coordinator, once back, kept the old member: the
			// member's join under a new id then waited for the old one's session to expire
			// (10 s more of nothing consumed after every broker restart).
			if member != "" && !errors.Is(err, kafkago.RebalanceInProgress) {
				stopLeaving()
				lctx, cancel := context.WithCancel(ctx)
				stopLeaving = cancel
				old := member
				leaving.Go(func() { r.leave(lctx, old) })
				member = ""
			}
			continue
		}
		// The join went through: the old member is gone.
		stopLeaving()
		member = gen.MemberID
		r.rebalances.Add(1)
		g := &generation{g: gen, owned: map[topicPartition]bool{}, committed: map[topicPartition]int64{}}
		var parts []*fetchState
		for topic, as := range gen.Assignments {
			for _, a := range as {
				tp := topicPartition{topic, int32(a.ID)}
				g.owned[tp] = true
				if a.Offset >= 0 {
					g.committed[tp] = a.Offset
				}
				parts = append(parts, &fetchState{topicPartition: tp, offset: a.Offset})
			}
		}
		r.gen.Store(g)
		// A function started on the generation that returns ends it: fetchAll returns only
		// when the generation or the reader ends, watchPartitions also when the topics'
		// partitions change.
		gen.Start(func(gctx context.Context) {
			fctx, cancel := context.WithCancel(ctx)
			defer cancel()
			defer context.AfterFunc(gctx, cancel)()
			r.fetchAll(fctx, parts)
		})
		gen.Start(func(gctx context.Context) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			defer context.AfterFunc(gctx, cancel)()
			r.watchPartitions(wctx)
		})
	}
}

// leave removes member, an id of this reader the group's loop no longer uses, from the
// group. It asks again until ctx ends (the member joined again) or the coordinator has been
// reachable for a session timeout, after which it has expired the member itself: a
// coordinator still loading the group after a restart may answer a leave as done and then
// load the member from its log.
func (r *GroupReader) leave(ctx context.Context, member string) {
	c := &kafkago.Client{Addr: r.addr, Timeout: r.timeout}
	var reached time.Time // since when the coordinator answers
	for {
		tr := r.trs.acquire()
		c.Transport = tr.rt
		res, err := c.LeaveGroup(ctx, &kafkago.LeaveGroupRequest{GroupID: r.o.GroupID,
			Members: []kafkago.LeaveGroupRequestMember{{ID: member}}})
		tr.release()
		if unreachable(err) {
			r.trs.renew(tr)
		}
		if err == nil {
			err = res.Error
			for _, m := range res.Members {
				err = errors.Join(err, m.Error)
			}
		}
		var kerr kafkago.Error
		switch {
		case ctx.Err() != nil:
			return
		case unreachable(err) || err != nil && !errors.As(err, &kerr): // not an answer
			reached = time.Time{}
		case err != nil && !kerr.Temporary() && !errors.Is(err, kafkago.UnknownMemberId):
			r.warn("leave the group with a former member id", err)
			return
		case reached.IsZero():
			reached = time.Now()
		case time.Since(reached) > sessionTimeout:
			return
		}
		t := time.NewTimer(joinGroupBackoff / 2)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// partitionWatchInterval is how often a member looks for partitions added to its topics,
// and for a topic deleted or created (kafka-go's default).
const partitionWatchInterval = 5 * time.Second

// watchPartitions returns when the partitions of the reader's topics differ from those at
// its start (a topic that does not exist has none), so that the group assigns them again,
// or when ctx ends. It replaces kafka-go's watcher, which ends the generation at once when
// a topic does not exist: once one of the topics was deleted, the group rebalanced in a
// loop (15,000 generations in 40 s, nothing fetched from the topic left).
func (r *GroupReader) watchPartitions(ctx context.Context) {
	var start map[string][]int
	t := time.NewTicker(partitionWatchInterval)
	defer t.Stop()
	for {
		ps, err := r.topicPartitions(ctx, r.o.Topics)
		switch {
		case err != nil:
			// Looked at again on the next tick; fetch errors tell the story meanwhile.
		case start == nil:
			start = ps
		case !maps.EqualFunc(start, ps, slices.Equal):
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// topicPartitions returns the partition ids of each topic, sorted; a topic that does not
// exist is left out.
func (r *GroupReader) topicPartitions(ctx context.Context, topics []string) (map[string][]int, error) {
	tr := r.trs.acquire()
	defer tr.release()
	tctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m, err := tr.rt.RoundTrip(tctx, r.addr, &metadataAPI.Request{TopicNames: topics})
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	out := map[string][]int{}
	for _, t := range m.(*metadataAPI.Response).Topics {
		switch t.ErrorCode {
		case 0:
		case int16(kafkago.UnknownTopicOrPartition):
			continue
		default:
			return nil, fmt.Errorf("metadata of %s: %w", t.Name, kafkago.Error(t.ErrorCode))
		}
		ids := make([]int, 0, len(t.Partitions))
		for _, p := range t.Partitions {
			ids = append(ids, int(p.PartitionIndex))
		}
		slices.Sort(ids)
		out[t.Name] = ids
	}
	return out, nil
}

// partitionsOf lists the partitions of the topics that exist, for presentTopics.
func (r *GroupReader) partitionsOf(topics []string) ([]kafkago.Partition, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	ps, err := r.topicPartitions(ctx, topics)
	if err != nil {
		return nil, err
	}
	var out []kafkago.Partition
	for topic, ids := range ps {
		for _, id := range ids {
			out = append(out, kafkago.Partition{Topic: topic, ID: id})
		}
	}
	return out, nil
}

// presentTopics is a kafka-go balancer given the partitions of the members' topics that
// exist. The group leader lists the partitions of all the topics in one metadata request,
// and kafka-go assigns none at all when one topic does not exist: a deleted topic stopped
// the group's consumption of every other topic too.
type presentTopics struct {
	kafkago.GroupBalancer
	partitions func(topics []string) ([]kafkago.Partition, error)
}

func (b presentTopics) AssignGroups(members []kafkago.GroupMember, partitions []kafkago.Partition) kafkago.GroupMemberAssignments {
	if len(partitions) == 0 { // every topic has partitions: the listing failed
		var topics []string
		for _, m := range members {
			for _, t := range m.Topics {
				if !slices.Contains(topics, t) {
					topics = append(topics, t)
				}
			}
		}
		if ps, err := b.partitions(topics); err == nil {
			partitions = ps
		}
	}
	return b.GroupBalancer.AssignGroups(members, partitions)
}

// fetchAll fetches parts until ctx ends.
func (r *GroupReader) fetchAll(ctx context.Context, parts []*fetchState) {
	if len(parts) == 0 {
		<-ctx.Done()
		return
	}
	attempt := 0 // failures in a row: the backoff goes on across a start over
	for ctx.Err() == nil {
		r.fetchGrouped(ctx, parts, &attempt)
	}
}

// loopEnd is a fetch loop that returned.
type loopEnd struct {
	leader int32
	parts  []*fetchState
	err    error
	tr     *transportRef
	ran    time.Duration
}

// fetchGrouped runs one fetch loop per leader broker over the partitions of parts it can
// fetch. A partition it cannot (no leader: the brokers of its replicas are down; its first
// offset not found), whose fetch failed (a leader moved, its topic deleted, its offset out of
// range) or whose loop failed (a broker unreachable) waits and is looked up again with
// backoff while the other loops, and the other partitions of its own loop, go on: one such
// partition used to stop every partition of the member, then those of its broker, for as
// long as it lasted (for good with a topic of one replica and its broker down). After a
// leader moved, the lookup is on a new transport (see transports), which looks the leaders
// up again. A waiting partition found on a broker that has a loop on the same transport
// joins that loop. fetchGrouped returns when ctx ends, or when a waiting partition is found
// on a broker whose loop runs on an older transport: the caller starts every loop over,
// with the partitions grouped again.
func (r *GroupReader) fetchGrouped(ctx context.Context, parts []*fetchState, attempt *int) {
	ctx, cancel := context.WithCancel(ctx)
	ends := make(chan loopEnd)
	parked := make(chan loopEnd)
	type loop struct {
		tr   *transportRef
		adds *loopAdds
	}
	running := map[int32]loop{}
	defer func() {
		cancel()
		for range running {
			<-ends
		}
	}()
	waiting := parts
	retry := time.NewTimer(0)
	defer retry.Stop()
	backoff := func() {
		d := min(50*time.Millisecond<<min(*attempt, 6), 2*time.Second)
		retry.Reset(d/2 + rand.N(d/2+1))
		*attempt++
	}
	failed := func(e loopEnd) {
		if leaderMoved(e.err) || unreachable(e.err) {
			r.trs.renew(e.tr)
		}
		r.errs.Add(1)
		r.warn("fetch", e.err)
		if len(waiting) == 0 {
			backoff()
		}
		waiting = append(waiting, e.parts...)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-ends:
			delete(running, e.leader)
			if ctx.Err() != nil {
				return
			}
			if e.err == nil { // it parked every partition it had, then was handed these
				if len(waiting) == 0 && len(e.parts) > 0 {
					retry.Reset(0)
				}
				waiting = append(waiting, e.parts...)
				continue
			}
			if e.ran > time.Minute {
				*attempt = 0 // the fetches ran a while: this failure starts the backoff over
			}
			failed(e)
		case e := <-parked:
			failed(e)
		case <-retry.C:
			tr := r.trs.acquire()
			byLeader, unfit, err := r.plan(ctx, tr, waiting)
			for l := range byLeader {
				if lp, ok := running[l]; ok && lp.tr != tr {
					tr.release()
					return
				}
			}
			for l, ps := range byLeader {
				if lp, ok := running[l]; ok {
					// Not a new loop: one with its request in flight would have to be cut
					// short, and a connection stays busy until the broker answers it.
					if !lp.adds.add(ps) { // it is ending: everything starts over
						tr.release()
						return
					}
					continue
				}
				adds := &loopAdds{}
				running[l] = loop{tr: tr, adds: adds}
				tr.users.Add(1)
				park := func(ps []*fetchState, err error) {
					select {
					case parked <- loopEnd{leader: l, parts: ps, err: err, tr: tr}:
					case <-ctx.Done(): // every loop starts over, with every partition
					}
				}
				go func() {
					began := time.Now()
					rest, err := r.fetchLoop(ctx, tr.rt, ps, adds, park)
					tr.release()
					ends <- loopEnd{leader: l, parts: rest, err: err, tr: tr, ran: time.Since(began)}
				}()
			}
			tr.release()
			waiting = unfit
			if len(waiting) > 0 {
				if ctx.Err() != nil {
					return
				}
				r.errs.Add(1)
				r.warn("fetch", err)
				backoff()
			}
		}
	}
}

// plan groups the partitions of parts it can fetch by leader broker, their symbolic offsets
// resolved; it returns the others (no leader, no offset), and why.
func (r *GroupReader) plan(ctx context.Context, tr *transportRef, parts []*fetchState) (map[int32][]*fetchState, []*fetchState, error) {
	leader, lerr := r.leaders(ctx, tr, parts)
	var led, unfit []*fetchState
	for _, p := range parts {
		if _, ok := leader[p.topicPartition]; ok {
			led = append(led, p)
		} else {
			unfit = append(unfit, p)
		}
	}
	oerr := r.resolveOffsets(ctx, tr, led)
	byLeader := map[int32][]*fetchState{}
	for _, p := range led {
		if p.offset < 0 {
			unfit = append(unfit, p)
			continue
		}
		l := leader[p.topicPartition]
		byLeader[l] = append(byLeader[l], p)
	}
	return byLeader, unfit, errors.Join(lerr, oerr)
}

// resolveOffsets turns the partitions' symbolic offsets (no committed offset, or a reset)
// into their first offsets. Those it could not resolve keep theirs, and it says why.
func (r *GroupReader) resolveOffsets(ctx context.Context, tr *transportRef, parts []*fetchState) error {
	req := &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{}}
	for _, p := range parts {
		if p.offset < 0 {
			req.Topics[p.topic] = append(req.Topics[p.topic], kafkago.FirstOffsetOf(int(p.partition)))
		}
	}
	if len(req.Topics) == 0 {
		return nil
	}
	res, err := (&kafkago.Client{Addr: r.addr, Transport: tr.rt, Timeout: r.timeout}).ListOffsets(ctx, req)
	if err != nil {
		if unreachable(err) {
			r.trs.renew(tr)
		}
		return fmt.Errorf("list offsets: %w", err)
	}
	var errs []error
	renew := false
	for _, p := range parts {
		if p.offset >= 0 {
			continue
		}
		var perr error
		for _, po := range res.Topics[p.topic] {
			if po.Partition != int(p.partition) {
				continue
			}
			if po.Error != nil {
				perr = po.Error
			} else if po.FirstOffset >= 0 {
				p.offset = po.FirstOffset
			}
		}
		switch {
		case perr != nil:
			// Routed by the transport's cached metadata, not by the leaders just read: a
			// moved leader (or the stale one's broker down, code -1) shows only here.
			renew = renew || leaderMoved(perr) || errors.Is(perr, kafkago.Unknown)
			errs = append(errs, fmt.Errorf("list offsets of %s/%d: %w", p.topic, p.partition, perr))
		case p.offset < 0:
			errs = append(errs, fmt.Errorf("list offsets: no answer for %s/%d", p.topic, p.partition))
		}
	}
	if renew {
		r.trs.renew(tr)
	}
	return errors.Join(errs...)
}

// leaders returns the leader broker of each partition of parts that has one, and why the
// others have none.
func (r *GroupReader) leaders(ctx context.Context, tr *transportRef, parts []*fetchState) (map[topicPartition]int32, error) {
	var topics []string
	for _, p := range parts {
		if !slices.Contains(topics, p.topic) {
			topics = append(topics, p.topic)
		}
	}
	if len(topics) == 0 {
		return nil, nil
	}
	tctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m, err := tr.rt.RoundTrip(tctx, r.addr, &metadataAPI.Request{TopicNames: topics})
	if err != nil {
		if unreachable(err) {
			r.trs.renew(tr)
		}
		return nil, fmt.Errorf("metadata: %w", err)
	}
	var errs []error
	failed := map[string]bool{}
	leader := map[topicPartition]int32{}
	for _, t := range m.(*metadataAPI.Response).Topics {
		if t.ErrorCode != 0 {
			failed[t.Name] = true
			errs = append(errs, fmt.Errorf("metadata of %s: %w", t.Name, kafkago.Error(t.ErrorCode)))
			continue
		}
		for _, pt := range t.Partitions {
			if pt.LeaderID >= 0 {
				leader[topicPartition{t.Name, pt.PartitionIndex}] = pt.LeaderID
			}
		}
	}
	for _, p := range parts {
		if _, ok := leader[p.topicPartition]; !ok && !failed[p.topic] {
			errs = append(errs, fmt.Errorf("no leader for %s/%d", p.topic, p.partition))
		}
	}
	return leader, errors.Join(errs...)
}

// loopAdds are partitions handed to a running fetch loop.
type loopAdds struct {
	mu     sync.Mutex
	parts  []*fetchState
	closed bool
}

// add hands parts over; false once the loop is ending.
func (a *loopAdds) add(parts []*fetchState) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.parts = append(a.parts, parts...)
	return true
}

// take returns the partitions handed over since the last call; with end, none are taken
// any more.
func (a *loopAdds) take(end bool) []*fetchState {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.parts
	a.parts, a.closed = nil, a.closed || end
	return ps
}

// fetchLoop asks one leader for all of parts, and those handed over through adds, again and
// again, and hands over what comes. A partition whose fetch failed goes to park, with its
// error, and the loop goes on with the others at once. It returns the partitions it still
// had, and why it stopped; no error once it parked them all.
func (r *GroupReader) fetchLoop(ctx context.Context, rt kafkago.RoundTripper, parts []*fetchState, adds *loopAdds, park func([]*fetchState, error)) (rest []*fetchState, err error) {
	parts = slices.Clone(parts)
	defer func() { rest = append(rest, adds.take(true)...) }()
	byKey := make(map[topicPartition]*fetchState, len(parts))
	for _, p := range parts {
		byKey[p.topicPartition] = p
	}
	var from []int64
	for first := 0; ; first++ {
		for _, p := range adds.take(false) {
			parts = append(parts, p)
			byKey[p.topicPartition] = p
		}
		if len(parts) == 0 {
			return nil, nil
		}
		from = slices.Grow(from[:0], len(parts))[:len(parts)]
		// A sessionless fetch fills partitions in request order up to MaxBytes: the first
		// one listed is rotated so that no partition's backlog starves the others.
		first %= len(parts)
		partMax := max(int32(1<<20), int32(r.o.MaxBytes/len(parts)))
		for i, p := range parts {
			from[i] = p.offset
		}
		req := &fetchAPI.Request{ReplicaID: -1, MaxWaitTime: int32(r.o.MaxWait.Milliseconds()),
			MinBytes: int32(r.o.MinBytes), MaxBytes: int32(r.o.MaxBytes), SessionID: 0, SessionEpoch: -1}
		for i := range parts {
			p := parts[(first+i)%len(parts)]
			req.Topics = appendFetchPartition(req.Topics, p.topic, fetchAPI.RequestPartition{Partition: p.partition,
				CurrentLeaderEpoch: -1, FetchOffset: p.offset, LogStartOffset: -1, PartitionMaxBytes: partMax})
		}
		rctx, cancel := context.WithTimeout(ctx, r.o.MaxWait+r.timeout)
		m, err := rt.RoundTrip(rctx, r.addr, req)
		cancel()
		if err != nil {
			return parts, fmt.Errorf("fetch: %w", err)
		}
		r.fetches.Add(1)
		res, ok := m.(*fetchAPI.Response)
		if !ok {
			return parts, fmt.Errorf("fetch: unexpected response %T", m)
		}
		if res.ErrorCode != 0 {
			return parts, fmt.Errorf("fetch: %w", kafkago.Error(res.ErrorCode))
		}
		msgs, failed, err := readFetched(res, byKey)
		if len(msgs) > 0 {
			select {
			case r.out <- msgs:
			case <-ctx.Done():
				// Not handed over: the partitions go back to where this answer started.
				// fetchGrouped starts every loop over from parts when a waiting partition
				// (of another leader's failed loop, or one parked) is found on this one's
				// broker while this one waited on a busy consumer; past this answer, its
				// messages would never reach the consumer, and its later commits would
				// skip them.
				for i, p := range parts {
					p.offset = from[i]
				}
				return parts, ctx.Err()
			}
		}
		if len(failed) == 0 {
			continue
		}
		parts = slices.DeleteFunc(parts, func(p *fetchState) bool { return slices.Contains(failed, p) })
		for _, p := range failed {
			delete(byKey, p.topicPartition)
		}
		park(failed, err)
	}
}

// readFetched turns a fetch answer into messages, moving each partition's offset past what
// it read, and returns the partitions that failed and why; an offset out of range is reset
// to the partition's start, found again by the caller.
func readFetched(res *fetchAPI.Response, byKey map[topicPartition]*fetchState) ([]kafkago.Message, []*fetchState, error) {
	var msgs []kafkago.Message
	var failed []*fetchState
	var errs []error
	for ti := range res.Topics {
		t := &res.Topics[ti]
		for pi := range t.Partitions {
			pt := &t.Partitions[pi]
			p := byKey[topicPartition{t.Topic, pt.Partition}]
			if p == nil {
				continue // not asked for
			}
			if pt.ErrorCode != 0 {
				err := kafkago.Error(pt.ErrorCode)
				if errors.Is(err, kafkago.OffsetOutOfRange) {
					p.offset = kafkago.FirstOffset
				}
				failed = append(failed, p)
				errs = append(errs, fmt.Errorf("fetch %s/%d: %w", t.Topic, pt.Partition, err))
				continue
			}
			if pt.RecordSet.Records == nil {
				continue
			}
			var err error
			if msgs, err = appendRecords(msgs, t.Topic, pt, p); err != nil {
				failed = append(failed, p)
				errs = append(errs, fmt.Errorf("fetch %s/%d: read records: %w", t.Topic, pt.Partition, err))
			}
		}
	}
	return msgs, failed, errors.Join(errs...)
}

// appendRecords appends a partition's records from p's offset on (an answer may start with
// earlier records of a compressed batch) and moves p's offset past the last one.
func appendRecords(msgs []kafkago.Message, topic string, pt *fetchAPI.ResponsePartition, p *fetchState) ([]kafkago.Message, error) {
	rs := pt.RecordSet.Records
	for {
		rec, err := rs.ReadRecord()
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			return msgs, err
		}
		if rec.Offset < p.offset {
			closeBytes(rec.Key)
			closeBytes(rec.Value)
			continue
		}
		m := kafkago.Message{Topic: topic, Partition: int(pt.Partition), Offset: rec.Offset,
			HighWaterMark: pt.HighWatermark, Time: rec.Time}
		key, kerr := protocol.ReadAll(rec.Key)
		value, verr := protocol.ReadAll(rec.Value)
		closeBytes(rec.Key)
		closeBytes(rec.Value)
		if err := errors.Join(kerr, verr); err != nil {
			return msgs, err
		}
		m.Key, m.Value = key, value
		if len(rec.Headers) > 0 {
			// The reader may reuse the headers' slice for the next record.
			m.Headers = make([]kafkago.Header, len(rec.Headers))
			for i, h := range rec.Headers {
				m.Headers[i] = kafkago.Header{Key: h.Key, Value: append([]byte(nil), h.Value...)}
			}
		}
		msgs = append(msgs, m)
		p.offset = rec.Offset + 1
	}
}

func closeBytes(b protocol.Bytes) {
	if b != nil {
		_ = b.Close()
	}
}

func appendFetchPartition(topics []fetchAPI.RequestTopic, topic string, pt fetchAPI.RequestPartition) []fetchAPI.RequestTopic {
	for i := range topics {
		if topics[i].Topic == topic {
			topics[i].Partitions = append(topics[i].Partitions, pt)
			return topics
		}
	}
	return append(topics, fetchAPI.RequestTopic{Topic: topic, Partitions: []fetchAPI.RequestPartition{pt}})
}

func (r *GroupReader) warn(what string, err error) {
	if r.o.ErrorLog != nil {
		r.o.ErrorLog.Warn("kafka group reader: "+what, "err", err)
	}
}
