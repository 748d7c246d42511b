package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
	"recsys/pkg/kafka"
	"recsys/pkg/logging"
	"recsys/pkg/module"
	"recsys/pkg/postgres"
)

// Consumer is the running role.
type Consumer struct {
	cfg    *Config
	log    *slog.Logger
	kafka  *kafka.Client
	topics []string
	store  *featurestore.Store
	m      *consumerMetrics
	// agree are the settings every pod must share (postgres.Agree), checked before the
	// consumer joins its group.
	agree []postgres.Setting
	pg    *pgxpool.Pool

	reader     atomic.Pointer[kafka.GroupReader]
	redisReady atomic.Bool
	// redisWhy says why the Redis copy is not ready, for Ready (nil: not checked yet).
	redisWhy atomic.Pointer[string]
	failures atomic.Int64
	lastErr  atomic.Pointer[string]
	mirror   chan mirrorJob
	// outstanding[l] counts the jobs lane l has queued or applying; laneFree is signalled
	// when one drops to 0, so that the next batch grows while every lane is busy.
	outstanding []atomic.Int32
	laneFree    chan struct{}
	// merged counts the merged jobs (see dispatch) queued or applying; mergedDone is
	// signalled when it drops to 0.
	merged     atomic.Int32
	mergedDone chan struct{}
	// forgotten are the erased users whose older events are skipped (forgottenLoop);
	// forgottenAt is when they were last read (Unix ns, 0: never).
	forgotten   featurestore.Forgotten
	forgottenAt atomic.Int64
	// warnLag limits the lines of failed high-water mark reads (one per heal interval while
	// a partition's leader is unreachable).
	warnLag logging.Limiter
}

type mirrorJob struct {
	b *featurestore.Batch
	a *featurestore.Applied
}

var _ module.Readier = (*Consumer)(nil)

func newConsumer(cfg *Config, d infra.Deps) *Consumer {
	kc := d.Kafka
	if cfg.ClientID != "" {
		c := *d.Kafka
		c.ClientID = cfg.ClientID
		kc = &c
	}
	c := &Consumer{cfg: cfg, log: d.Log, kafka: kc, m: newMetrics(d.Metrics),
		topics: []string{d.Config.Kafka.TopicImpressions, d.Config.Kafka.TopicWatches},
		store:  featurestore.New(d.PG, d.Redis, d.Config.Redis.KeyPrefix, cfg.Features, d.Log),
		agree:  infra.AgreedSettings(d.Config, true), pg: d.PG}
	c.m.exportZeros(c.topics)
	c.store.SetUserTTL(d.Config.Redis.UserTTL)
	c.store.SetImpressionsFormat(featurestore.ImpressionsFormat(cfg.ImpressionsFormat)) // checked by Validate
	c.store.SetImpressionsOverlay(cfg.ImpressionsOverlay)
	c.store.SetHooks(featurestore.Hooks{RedisWriteFailed: func(error) { c.m.redisFailures.Inc() }, Phase: c.m.phase,
		Resent: func(users, lists int) { c.m.resentUsers.Add(users); c.m.resentLists.Add(lists) }})
	return c
}

// fetched is one message with its decoding outcome.
type fetched struct {
	msg  kafkago.Message
	ev   featurestore.Event
	at   time.Time // when the reader returned it
	err  error
	lane int // laneOf the event's user (poison messages: 0)
}

// Run consumes until ctx is cancelled; the batch in flight is finished and committed.
func (c *Consumer) Run(ctx context.Context) error {
	if err := c.agreeSettings(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("feature consumer: %w", err)
	}
	if err := c.ensureTopics(ctx); err != nil {
		return nil //nolint:nilerr // only a cancelled context ends ensureTopics
	}
	c.checkRedisConfig(ctx)
	c.checkKafkaRetention(ctx)
	c.checkFeatureConfig(ctx)
	r, err := c.kafka.NewGroupReader(kafka.ReaderOptions{GroupID: c.cfg.GroupID, Topics: c.topics, MaxWait: c.cfg.FetchMaxWait,
		ErrorLog: c.log.With("source", "kafka-go")})
	if err != nil {
		return fmt.Errorf("feature consumer: %w", err)
	}
	c.reader.Store(r)
	// Read before the first batch, so an erased user's events already in the topics are
	// skipped from the start; forgottenLoop rereads it.
	_ = c.refreshForgotten(ctx) // a failure holds the first batch (awaitForgotten)
	lanes := c.cfg.MaxInFlight
	// The collector drains this while the lanes are busy (the next batch grows), so it need
	// not scale with the lanes. It carries pointers: a buffer of 40,000 fetched values (~330
	// bytes each, pointers among them) is 13 MB that the collector counts as live and scans,
	// empty or not. That was a quarter of `recsys all`'s live heap serving /reco, and the
	// heap goal is the live heap times 17 (pkg/gctune): ~220 MB more memory before each
	// collection.
	in := make(chan *fetched, 2*c.cfg.MaxBatch)
	fetchCtx, stopFetch := context.WithCancel(ctx)
	fetchDone := make(chan struct{})
	go func() { defer close(fetchDone); c.fetch(fetchCtx, r, in) }()
	healDone := make(chan struct{})
	go func() { defer close(healDone); c.heal(ctx) }()
	lagDone := make(chan struct{})
	go func() { defer close(lagDone); c.lagLoop(ctx, r) }()
	// Its own loop, not heal's: `users forget` counts on a reread every ForgottenRefresh,
	// whatever --consumer.heal-interval is and however long a repopulation keeps heal busy.
	forgottenDone := make(chan struct{})
	go func() { defer close(forgottenDone); c.forgottenLoop(ctx) }()
	// Redis is written by its own goroutine so the next PostgreSQL transaction overlaps the
	// previous batch's Redis write (Redis merges are order-independent); the small buffer is
	// the backpressure.
	c.mirror = make(chan mirrorJob, 2*lanes)
	mirrorDone := make(chan struct{})
	go func() {
		defer close(mirrorDone)
		for j := range c.mirror {
			c.writeRedis(ctx, j.b, j.a)
		}
	}()
	seq := newSequencer(lanes)
	stopCommits, commitsDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(commitsDone); c.commitLoop(ctx, r, seq, stopCommits) }()
	jobs := make([]chan laneJob, lanes)
	c.outstanding = make([]atomic.Int32, lanes)
	c.laneFree = make(chan struct{}, 1)
	c.mergedDone = make(chan struct{}, 1)
	var lanesDone sync.WaitGroup
	for i := range jobs {
		jobs[i] = make(chan laneJob, lanes)
		lanesDone.Go(func() { c.lane(ctx, i, jobs[i], seq) })
	}
	c.log.InfoContext(ctx, "feature consumer started", "group", c.cfg.GroupID, "topics", c.topics, "max_in_flight", lanes)
	share := make([][]*fetched, lanes)
	last := 0
	for {
		seq.reserve()
		batch, ok := c.collect(ctx, in, last)
		if !ok {
			seq.unreserve()
			break
		}
		last = len(batch)
		c.dispatch(&group{batch: batch}, share, jobs, seq)
	}
	stopFetch()
	<-fetchDone
	for _, j := range jobs {
		close(j)
	}
	lanesDone.Wait()
	// Flush: whatever the lanes applied before stopping is committed.
	close(stopCommits)
	<-commitsDone
	close(c.mirror)
	<-mirrorDone
	<-healDone
	<-lagDone
	<-forgottenDone
	if err := r.Close(); err != nil {
		c.m.errors("stop")
		c.log.WarnContext(ctx, "close kafka reader", "err", err)
	}
	c.log.InfoContext(ctx, "feature consumer stopped")
	return nil
}

// mergeBelow is the largest group (events) that may apply as one transaction on one lane.
// At low volume the lanes get a handful of events each (≈5 at 1,000 events/s) and a
// transaction costs about 1 ms of PostgreSQL and 0.5 ms of Go CPU whatever it holds
// (featurestore BenchmarkApply batch=5: 187–216 µs of PostgreSQL per event), so splitting
// such a group only doubles the fixed cost; from a few hundred events on, that cost is noise
// and two lanes overlap their work.
const mergeBelow = 256

// A group of impressions only merges up to --consumer.max-batch: nothing waits on its
// freshness, and the item rows it increments are shared by every user, so two lanes' halves
// rewrite most of them twice. With /reco's autolog at 5,000 lists/s (~500 impressions per
// 100 ms group, 2,000 items) the split cost ~10 % more PostgreSQL and Redis CPU per list
// than one transaction.
func mergeLimit(g *group, maxBatch int) int {
	for i := range g.batch {
		if f := &g.batch[i]; f.err == nil && f.ev.Kind != features.KindImpression {
			return min(mergeBelow, maxBatch)
		}
	}
	return maxBatch
}

// dispatch hands a collected group to the lanes: split by user, one job per lane with
// events, or, when the group is small (or impressions only) and every lane is idle, whole to
// lane 0 as one merged job. A merged job holds users of every lane, so the next split group
// waits until it is applied; no other group can be dispatched beside it (lane 0 is busy, so
// no second merge), and each user's events still apply in stream order, a failed
// transaction retried before anything later of its users.
func (c *Consumer) dispatch(g *group, share [][]*fetched, jobs []chan laneJob, seq *sequencer) {
	if len(jobs) > 1 && len(g.batch) <= mergeLimit(g, c.cfg.MaxBatch) && c.lanesIdle() {
		items := make([]*fetched, len(g.batch))
		for i := range g.batch {
			items[i] = &g.batch[i]
		}
		g.pending = 1
		seq.add(g)
		c.merged.Add(1)
		c.outstanding[0].Add(1)
		jobs[0] <- laneJob{g: g, items: items, merged: true}
		return
	}
	for c.merged.Load() > 0 {
		<-c.mergedDone // lanes finish their jobs even at shutdown (process detaches them)
	}
	for i := range g.batch {
		share[g.batch[i].lane] = append(share[g.batch[i].lane], &g.batch[i])
	}
	for _, sh := range share {
		if len(sh) > 0 {
			g.pending++
		}
	}
	seq.add(g)
	for l, sh := range share {
		if len(sh) > 0 {
			c.outstanding[l].Add(1)
			jobs[l] <- laneJob{g: g, items: sh}
			share[l] = nil
		}
	}
}

// checkRedisConfig warns about Redis settings that make the copy costlier or unsafe; a Redis
// that is down or refuses CONFIG only costs the warning.
func (c *Consumer) checkRedisConfig(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msgs, err := c.store.CheckRedisConfig(ctx)
	if err != nil {
		c.log.InfoContext(ctx, "redis settings not checked", "err", err)
	}
	for _, m := range msgs {
		c.log.WarnContext(ctx, m)
	}
}

// checkKafkaRetention warns when a topic may keep a message longer than its dedup record is
// kept (--consumer.dedup-retention): a group that starts over from the oldest offset (its
// committed offsets expired while the consumers were down, a new --consumer.group-id, offsets
// reset by hand) would apply such a message a second time. Only a warning: the committed
// offsets normally keep the group past those messages, and a broker that refuses
// DescribeConfigs only costs the check.
func (c *Consumer) checkKafkaRetention(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ret, err := c.kafka.Retention(ctx, c.topics...)
	if err != nil {
		c.log.InfoContext(ctx, "kafka topic retention not checked against --consumer.dedup-retention", "err", err)
	}
	for _, t := range c.topics {
		r, ok := ret[t]
		if !ok {
			continue
		}
		if h := r.Horizon(); h == 0 || h > c.cfg.DedupRetention {
			c.log.WarnContext(ctx, "kafka topic keeps messages longer than --consumer.dedup-retention: a consumer group that starts over from the oldest offset would apply the older ones twice",
				"topic", t, "retention_ms", r.Ms, "segment_ms", r.SegmentMs, "dedup_retention", c.cfg.DedupRetention.String(),
				"mitigation", "raise --consumer.dedup-retention above the topic's retention.ms + segment.ms, or lower the topic's retention.ms (docs/scaling.md, Retention)")
		}
	}
}

// agreeSettings refuses to consume when a setting every pod must share differs from the
// deployment's (postgres.Agree): a second copy of the features under another key prefix, or
// topics no writer publishes to, would go unnoticed. Other errors are retried.
func (c *Consumer) agreeSettings(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := postgres.Agree(ctx, c.pg, c.agree...)
		var de *postgres.DisagreeError
		if err == nil || errors.As(err, &de) {
			return err
		}
		c.m.errors("startup")
		c.log.WarnContext(ctx, "check the deployment's settings, retrying", "err", err, "attempt", attempt+1)
		if !c.sleep(ctx, attempt) {
			return ctx.Err()
		}
	}
}

// checkFeatureConfig warns about feature settings that the stored features override: the
// decay half-lives are those feature_meta recorded when the first event was applied (the
// stored values are sums relative to them), whatever the flags say now.
func (c *Consumer) checkFeatureConfig(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msgs, err := c.store.CheckFeatureConfig(ctx)
	if err != nil {
		c.log.InfoContext(ctx, "feature settings not checked", "err", err)
	}
	for _, m := range msgs {
		c.log.WarnContext(ctx, m)
	}
}

func (c *Consumer) ensureTopics(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := c.kafka.EnsureTopics(ctx, c.topics...)
		if err == nil {
			return nil
		}
		c.m.errors("startup")
		c.log.WarnContext(ctx, "ensure topics, retrying", "err", err, "attempt", attempt+1)
		if !c.sleep(ctx, attempt) {
			return ctx.Err()
		}
	}
}

// sleep waits the backoff of attempt (exponential with jitter); false when ctx ended.
func (c *Consumer) sleep(ctx context.Context, attempt int) bool {
	d := c.cfg.RetryBackoff << min(attempt, 20)
	if d > c.cfg.RetryMaxBackoff || d <= 0 {
		d = c.cfg.RetryMaxBackoff
	}
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func header(m *kafkago.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// maxCorrelationID bounds the correlation id a message's header brings into a log line: the
// API accepts 128 characters, other producers may send anything.
const maxCorrelationID = 128

// withEvent returns ctx whose log lines carry the message's correlation id (the relay's
// header, the X-Correlation-ID of the request that sent the event), so a line about one event
// leads back to that request (contract §16.12).
func withEvent(ctx context.Context, m *kafkago.Message) context.Context {
	cid := header(m, events.HeaderCorrelationID)
	if cid == "" {
		return ctx
	}
	if len(cid) > maxCorrelationID {
		cid = cid[:maxCorrelationID]
	}
	return logging.WithIDs(ctx, logging.IDs{CorrelationID: cid})
}

// fetch reads and decodes messages; decoding here overlaps with the apply of the previous
// batch.
func (c *Consumer) fetch(ctx context.Context, r *kafka.GroupReader, out chan<- *fetched) {
	for attempt := 0; ; {
		msgs, err := r.FetchBatch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.m.errors("poll")
			c.log.WarnContext(ctx, "fetch messages", "err", err)
			if !c.sleep(ctx, attempt) {
				return
			}
			attempt++
			continue
		}
		attempt = 0
		c.m.lagFetched(ownedOnly(msgs, r.Assigned()))
		at := time.Now()
		for i := range msgs {
			m := &msgs[i]
			f := &fetched{msg: *m, at: at}
			f.ev, f.err = featurestore.Decode(header(m, events.HeaderEventType), header(m, events.HeaderSchemaVersion), m.Value)
			if f.err == nil {
				f.err = featurestore.CheckNotFuture(f.ev, at, c.cfg.MaxEventFuture)
			}
			if f.err == nil {
				f.lane = laneOf(f.ev.UserID, c.cfg.MaxInFlight)
			}
			select {
			case out <- f:
			case <-ctx.Done():
				return
			}
		}
	}
}

// collect takes what is available until one lane's share reaches MaxBatch, lingering
// briefly for more (--consumer.impression-linger while the batch holds impressions only,
// --consumer.linger once it holds anything else); while every lane is busy (while any lane
// is, for impressions only) it keeps taking messages until they are free (the batch grows
// instead of queueing small ones behind the lanes). last is the length of the batch before.
func (c *Consumer) collect(ctx context.Context, in <-chan *fetched, last int) ([]fetched, bool) {
	select {
	case <-c.laneFree: // stale: idleness is checked below
	default:
	}
	// Sized for what is already waiting or, when more, for the batch before (under steady
	// load batches are alike, and most of a large one arrives while it is collected): a
	// backlog is taken without regrowing (and copying) the slice, a trickle does not
	// allocate a full batch.
	b := make([]fetched, 0, min(max(len(in)+1, last), c.cfg.MaxBatch*c.cfg.MaxInFlight))
	perLane := make([]int, c.cfg.MaxInFlight)
	full, urgent := false, false
	add := func(f *fetched) {
		b = append(b, *f)
		perLane[f.lane]++
		full = perLane[f.lane] >= c.cfg.MaxBatch
		// Poison goes to the DLQ with whatever batch carries it: it does not hurry one.
		urgent = urgent || f.err == nil && f.ev.Kind != features.KindImpression
	}
	select {
	case f := <-in:
		add(f)
	case <-ctx.Done():
		return nil, false
	}
	var timer *time.Timer
	var deadline time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for !full {
		select {
		case f := <-in:
			add(f)
			continue
		default:
		}
		// Impressions only wait for every lane, so the group applies whole in one
		// transaction (see mergeLimit); a watch needs only a free lane.
		if !c.laneIdle() || !urgent && !c.lanesIdle() {
			select {
			case f := <-in:
				add(f)
				continue
			case <-c.laneFree:
			case <-ctx.Done():
				return b, true
			}
		}
		if timer == nil {
			d := c.cfg.Linger
			if !urgent {
				d = max(d, c.cfg.ImpressionLinger)
			}
			if d <= 0 {
				break
			}
			deadline = time.Now().Add(d)
			timer = time.NewTimer(d)
		}
		select {
		case f := <-in:
			add(f)
			// A watch joined a batch lingering for impressions: it waits --consumer.linger
			// at most, like a watch in any batch.
			if urgent && time.Until(deadline) > c.cfg.Linger {
				if c.cfg.Linger <= 0 {
					return b, true
				}
				deadline = time.Now().Add(c.cfg.Linger)
				timer.Reset(c.cfg.Linger)
			}
		case <-timer.C:
			return b, true
		case <-ctx.Done():
			return b, true
		}
	}
	return b, true
}

// process applies one lane's share of a batch (retrying transient errors) and hands it to
// the Redis mirror. It reports false when ctx ended before the share was applied: its
// offsets (and every later one) must then not be committed, the messages are redelivered to
// whoever owns the partitions next.
func (c *Consumer) process(ctx context.Context, batch []*fetched) bool {
	if !c.awaitForgotten(ctx) {
		return false
	}
	c.m.batchSize.Update(float64(len(batch)))
	b := &featurestore.Batch{Events: make([]featurestore.Event, 0, len(batch))}
	msgs := make([]*kafkago.Message, 0, len(batch))
	now := time.Now()
	var lagTopic string
	var lag *metrics.PrometheusHistogram // looked up (a formatted name) per topic run, not per message
	for _, f := range batch {
		if lag == nil || f.msg.Topic != lagTopic {
			lagTopic, lag = f.msg.Topic, c.m.eventLag(f.msg.Topic)
		}
		lag.Update(float64(now.Sub(f.msg.Time).Milliseconds()))
		c.m.fetchDelay.Update(max(now.Sub(f.msg.Time).Seconds(), 0))
		c.m.queueDelay.Update(now.Sub(f.at).Seconds())
		if f.err != nil {
			d := dlqEntry(&f.msg, f.err)
			if c.forgotten.Skip(string(f.msg.Key), d.ReceivedMs) {
				// An erased user's message (the relay keys every message by its user) received
				// before the erasure: its raw bytes must not outlive the erasure in the DLQ,
				// which `users forget` cleared up to the erasure time.
				c.m.processed(f.msg.Topic, "ignored", 1)
				c.m.dlqErased.Inc()
				continue
			}
			status := "invalid_payload"
			if errors.Is(f.err, featurestore.ErrInvalidEvent) {
				status = "invalid_event"
			}
			c.m.processed(f.msg.Topic, status, 1)
			c.m.errors("poison_message")
			c.log.WarnContext(withEvent(ctx, &f.msg), "poison message to dlq", "topic", f.msg.Topic, "partition", f.msg.Partition,
				"offset", f.msg.Offset, "event_id", header(&f.msg, events.HeaderEventID), "err", f.err)
			b.DLQ = append(b.DLQ, d)
			continue
		}
		ev := f.ev
		// A legacy payload from before the API stamped one is judged by its publish time, here
		// and by the store's check in the batch's transaction (featurestore.ErasedError), which
		// reads the event's: the two must agree, or the batch would fail at every attempt.
		ev.ServerReceivedTsMs = cmp.Or(ev.ServerReceivedTsMs, f.msg.Time.UnixMilli())
		if c.forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) {
			// Received before the user's data was erased: applying it would bring the data back.
			c.m.processed(f.msg.Topic, "ignored", 1)
			continue
		}
		b.Events = append(b.Events, ev)
		msgs = append(msgs, &f.msg)
	}
	// Before each retry the batch loses the events of users erased meanwhile (those the
	// transaction found, featurestore.ErasedError, are in the list by then): their events
	// must not be applied.
	again := func() ([]*kafkago.Message, bool) {
		if !c.awaitForgotten(ctx) {
			return nil, false
		}
		msgs = c.dropErased(b, msgs)
		return msgs, true
	}
	a, ok := c.applyWithRetry(ctx, b, msgs, again)
	if !ok {
		return false // only a shutdown ends the retries
	}
	if a != nil {
		topics := make([]string, len(msgs))
		for i, m := range msgs {
			topics[i] = m.Topic
		}
		// To the mirror first: a lane whose batch shares co-visitation lists with this one
		// commits after it, and its Redis write should follow this one's (a neighbour cut and
		// incremented again is the one merge that depends on order, see featurestore).
		c.mirror <- mirrorJob{b: b, a: a}
		c.account(ctx, b, topics, a)
	}
	return true
}

// dropErased takes out of b the events and dead letters that the erased users as now read
// skip (as process judges them), with their messages, counting them as ignored; it returns
// what is left of msgs (b.Events' messages).
func (c *Consumer) dropErased(b *featurestore.Batch, msgs []*kafkago.Message) []*kafkago.Message {
	n := 0
	for i, ev := range b.Events {
		if c.forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) { // stamped by process when unknown
			c.m.processed(msgs[i].Topic, "ignored", 1)
			continue
		}
		b.Events[n], msgs[n] = ev, msgs[i]
		n++
	}
	b.Events, msgs = b.Events[:n], msgs[:n]
	n = 0
	for _, d := range b.DLQ {
		if c.forgotten.Skip(string(d.Key), d.ReceivedMs) {
			c.m.processed(d.Topic, "ignored", 1)
			c.m.dlqErased.Inc()
			continue
		}
		b.DLQ[n] = d
		n++
	}
	b.DLQ = b.DLQ[:n]
	return msgs
}

// attemptCtx detaches an attempt from shutdown (a batch in flight finishes) but bounds it.
func (c *Consumer) attemptCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.DrainTimeout)
}

// applyWithRetry applies b (the events of msgs, and its dead letters) until it
// succeeds, calling again before each retry: it may shorten b and returns the messages of
// what is left (false: ctx ended).
func (c *Consumer) applyWithRetry(ctx context.Context, b *featurestore.Batch, msgs []*kafkago.Message,
	again func() ([]*kafkago.Message, bool)) (*featurestore.Applied, bool) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			var ok bool
			if msgs, ok = again(); !ok {
				return nil, false
			}
		}
		actx, cancel := c.attemptCtx(ctx)
		t0 := time.Now()
		a, err := c.store.Apply(actx, b)
		cancel()
		if err == nil {
			c.m.applySeconds.Update(time.Since(t0).Seconds())
			c.m.applied(a)
			c.failures.Store(0)
			return a, true
		}
		if erased := new(featurestore.ErasedError); errors.As(err, &erased) {
			// Not a failure: the next attempt, at once, goes without the events (again).
			c.forgotten.Note(erased.Users)
			continue
		}
		if permanent(err) {
			c.log.WarnContext(ctx, "batch hit a data error, applying event by event", "err", err, "batch_size", len(b.Events))
			return nil, c.applyIsolated(ctx, b, msgs)
		}
		c.failed(ctx, "process", err, len(b.Events))
		for _, m := range msgs {
			c.m.processed(m.Topic, "error", 1)
		}
		if ctx.Err() != nil || !c.sleep(ctx, attempt) {
			return nil, false
		}
		c.m.retries.Inc()
	}
}

// applyIsolated applies a batch one event at a time after a data error, dead-lettering only
// the events PostgreSQL refuses; transient errors still retry.
// It accounts for what it applies and reports false when ctx ended first.
func (c *Consumer) applyIsolated(ctx context.Context, b *featurestore.Batch, msgs []*kafkago.Message) bool {
	dlq := slices.Clone(b.DLQ)
	// apply reports false when ctx ended, and the error that ends the retries otherwise:
	// permanent, or ErasedError (one's events are then of a user erased since the list was
	// read, and are dropped).
	apply := func(one *featurestore.Batch, topics []string) (bool, error) {
		for attempt := 0; ; attempt++ {
			if attempt > 0 && !c.awaitForgotten(ctx) {
				return false, nil
			}
			actx, cancel := c.attemptCtx(ctx)
			a, err := c.store.Apply(actx, one)
			cancel()
			if erased := new(featurestore.ErasedError); errors.As(err, &erased) {
				c.forgotten.Note(erased.Users)
				return true, err
			}
			if err == nil {
				c.failures.Store(0)
				c.m.applied(a)
				c.account(ctx, one, topics, a)
				c.writeRedis(ctx, one, a)
				return true, nil
			}
			if permanent(err) {
				return true, err
			}
			c.failed(ctx, "process", err, len(one.Events))
			// As applyWithRetry counts a failed attempt's events; a DLQ-only apply has none
			// (its entries were counted as poison or are counted as dlq once stored).
			for _, t := range topics {
				c.m.processed(t, "error", 1)
			}
			if ctx.Err() != nil || !c.sleep(ctx, attempt) {
				return false, nil
			}
			c.m.retries.Inc()
		}
	}
	for i := range b.Events {
		if ev := &b.Events[i]; c.forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) {
			// Erased since the batch was judged (by a list a failed attempt's ErasedError, or
			// a refresh during the retries, added to).
			c.m.processed(msgs[i].Topic, "ignored", 1)
			continue
		}
		one := &featurestore.Batch{Events: b.Events[i : i+1]}
		ok, perr := apply(one, []string{msgs[i].Topic})
		if !ok {
			return false
		}
		if errors.As(perr, new(*featurestore.ErasedError)) {
			c.m.processed(msgs[i].Topic, "ignored", 1)
			continue
		}
		if perr != nil {
			c.m.errors("poison_message")
			c.log.WarnContext(withEvent(ctx, msgs[i]), "event refused by postgres, to dlq", "topic", msgs[i].Topic, "partition", msgs[i].Partition,
				"offset", msgs[i].Offset, "event_id", b.Events[i].EventID, "err", perr)
			d := dlqEntry(msgs[i], perr)
			d.ReceivedMs = b.Events[i].ServerReceivedTsMs
			dlq = append(dlq, d)
		}
	}
	// The users erased while the events went one by one (an ErasedError, a refresh during the
	// retries): their dead letters must not be stored after the erasure cleared the DLQ.
	if len(dlq) > 0 && !c.awaitForgotten(ctx) {
		return false
	}
	n := 0
	for _, d := range dlq {
		if c.forgotten.Skip(string(d.Key), d.ReceivedMs) {
			c.m.processed(d.Topic, "ignored", 1)
			c.m.dlqErased.Inc()
			continue
		}
		dlq[n] = d
		n++
	}
	dlq = dlq[:n]
	if len(dlq) == 0 {
		return true
	}
	ok, perr := apply(&featurestore.Batch{DLQ: dlq}, nil)
	if !ok || perr == nil {
		return ok
	}
	// The offsets of these messages are committed only once they are stored: an entry
	// refused whole goes in again as its coordinates, payload and error alone, and that is
	// retried until it is stored or the consumer stops.
	c.m.errors("dlq_store")
	c.log.ErrorContext(ctx, "store dlq entries; storing them without their headers and key", "err", perr, "entries", len(dlq))
	minimal := make([]featurestore.DLQEntry, len(dlq))
	for i, d := range dlq {
		// Its receive time still judges it against erasures (by the ids in its payload, the
		// key gone): without it, a returning user's entry counted as before their erasure.
		minimal[i] = featurestore.DLQEntry{Topic: d.Topic, Partition: d.Partition, Offset: d.Offset, Payload: d.Payload,
			Headers: map[string]string{}, Error: d.Error + " (headers and key dropped: " + perr.Error() + ")", ReceivedMs: d.ReceivedMs}
		for _, k := range []string{events.HeaderEventType, events.HeaderSchemaVersion} { // what replay-dlq decodes with
			if v, ok := d.Headers[k]; ok {
				minimal[i].Headers[k] = v
			}
		}
	}
	for attempt := 0; ; attempt++ {
		ok, perr := apply(&featurestore.Batch{DLQ: minimal}, nil)
		if !ok || perr == nil {
			return ok
		}
		c.failed(ctx, "dlq_store", perr, len(minimal))
		if !c.sleep(ctx, attempt) {
			return false
		}
	}
}

func (c *Consumer) failed(ctx context.Context, stage string, err error, events int) {
	n := c.failures.Add(1)
	s := err.Error()
	c.lastErr.Store(&s)
	c.m.errors(stage)
	c.log.WarnContext(ctx, "apply batch failed, retrying with backoff", "err", err, "attempt", n, "batch_size", events)
}

// permanent reports errors that send events to the DLQ instead of retrying them.
func permanent(err error) bool { return featurestore.Refused(err) }

func dlqEntry(m *kafkago.Message, err error) featurestore.DLQEntry {
	h := make(map[string]string, len(m.Headers))
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value) // made storable by featurestore
	}
	return featurestore.DLQEntry{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.Key, Headers: h,
		Payload: m.Value, Error: err.Error(), ReceivedMs: featurestore.PoisonReceivedMs(m.Value, m.Time.UnixMilli())}
}

// account updates the counters of an applied batch.
func (c *Consumer) account(ctx context.Context, b *featurestore.Batch, topics []string, a *featurestore.Applied) {
	counts := map[[2]string]int{}
	for i, isNew := range a.New {
		st := "processed"
		if !isNew {
			st = "duplicate"
		}
		counts[[2]string{topics[i], st}]++
	}
	for k, n := range counts {
		c.m.processed(k[0], k[1], n)
	}
	if n := len(b.DLQ); n > 0 {
		// An entry the insert left out (its user was erased after its receive time, since
		// the list it was judged by was read) is not in the DLQ: counted as the consumer
		// counts one it skips itself, not as stored (an alert fires on stored entries). A
		// redelivered one is there already: stored once, when it was first delivered.
		c.m.dlqStored.Add(n - len(a.DLQErased) - a.DLQRedelivered)
		c.m.dlqErased.Add(len(a.DLQErased))
		c.m.dlqRedelivered.Add(a.DLQRedelivered)
		for i, d := range b.DLQ {
			if slices.Contains(a.DLQErased, i) {
				c.m.processed(d.Topic, "ignored", 1)
				continue
			}
			c.m.processed(d.Topic, "dlq", 1)
		}
	}
}

// writeRedis mirrors an applied batch into Redis and observes freshness.
func (c *Consumer) writeRedis(ctx context.Context, b *featurestore.Batch, a *featurestore.Applied) {
	wctx, cancel := c.attemptCtx(ctx)
	defer cancel()
	t0 := time.Now()
	err := c.store.WriteRedis(wctx, a)
	switch {
	case errors.Is(err, featurestore.ErrRedisBehind):
		c.redisNotReady(copyUnready(nil, nil))
		c.log.InfoContext(ctx, "redis copy behind, repopulation pending", "err", err)
		return
	case err != nil:
		c.m.errors("redis")
		c.log.WarnContext(ctx, "write redis failed, journal keeps the batch for the heal loop", "err", err)
		return
	}
	now := time.Now()
	c.m.redisSeconds.Update(now.Sub(t0).Seconds())
	nowMs := now.UnixMilli()
	for i, isNew := range a.New {
		ev := &b.Events[i]
		if !isNew || ev.Kind != features.KindWatch {
			continue
		}
		c.m.watchToFeature.Update(float64(nowMs - ev.TsMs))
		if ev.ServerReceivedTsMs > 0 {
			c.m.acceptedToVisible.Update(float64(nowMs-ev.ServerReceivedTsMs) / 1000)
		}
	}
}

// commit commits the last applied offset of each partition (msgs) and updates the lag
// gauges; false when the commit failed. A failed commit only means redelivery, which the
// dedup record absorbs.
func (c *Consumer) commit(ctx context.Context, r *kafka.GroupReader, msgs []kafkago.Message) bool {
	if len(msgs) == 0 {
		return true
	}
	cctx, cancel := c.attemptCtx(ctx)
	defer cancel()
	c.m.commits.Inc()
	if err := r.CommitMessages(cctx, msgs...); err != nil {
		c.m.errors("commit")
		c.log.WarnContext(ctx, "commit offsets failed; retried with the next commit, or redelivered and deduplicated", "err", err)
		return false
	}
	c.m.lagCommitted(ownedOnly(msgs, r.Assigned()))
	return true
}

// ownedOnly is msgs without those of partitions not in owned (topic -> partitions): a batch
// fetched before a rebalance can still arrive, and CommitMessages skips the partitions gone
// to another member; their lag gauges, set again here, would be reported by two members
// until the next refresh.
func ownedOnly(msgs []kafkago.Message, owned map[string][]int) []kafkago.Message {
	var out []kafkago.Message // nil while every message so far is owned: msgs is returned
	for i := range msgs {
		switch own := slices.Contains(owned[msgs[i].Topic], msgs[i].Partition); {
		case !own && out == nil:
			out = append(make([]kafkago.Message, 0, len(msgs)), msgs[:i]...)
		case own && out != nil:
			out = append(out, msgs[i])
		}
	}
	if out == nil {
		return msgs
	}
	return out
}

// heal keeps the Redis copy complete and the housekeeping going.
func (c *Consumer) heal(ctx context.Context) {
	t := time.NewTicker(c.cfg.HealInterval)
	defer t.Stop()
	var lastSlow time.Time
	for {
		c.healRedis(ctx)
		if time.Since(lastSlow) >= 30*time.Second {
			lastSlow = time.Now()
			c.housekeeping(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// lagLoop reads the high-water marks and the reader's counters every --consumer.heal-interval.
// Not on heal's loop: a repopulation, or a purge waiting on PostgreSQL, holds a heal pass for
// as long as it lasts, and the lag must grow (and follow the assignment) meanwhile.
func (c *Consumer) lagLoop(ctx context.Context, r *kafka.GroupReader) {
	t := time.NewTicker(c.cfg.HealInterval)
	defer t.Stop()
	for {
		c.m.reader(r.Stats()) // the counters restart at every call: this is the only one
		c.refreshLag(ctx, r)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Consumer) forgottenLoop(ctx context.Context) {
	t := time.NewTicker(featurestore.ForgottenRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = c.refreshForgotten(ctx) // logged and counted; awaitForgotten holds the batches
		}
	}
}

func (c *Consumer) refreshForgotten(ctx context.Context) error {
	start := time.Now()
	// Bounded by the store: a whole read (at start, after a failover) takes longer.
	if err := c.store.RefreshForgotten(ctx, &c.forgotten); err != nil {
		c.m.errors("forgotten_users")
		c.log.WarnContext(ctx, "read erased users failed; no batch is applied with a list older than "+forgottenMaxAge.String(), "err", err)
		return fmt.Errorf("read erased users: %w", err)
	}
	c.forgottenAt.Store(start.UnixNano())
	return nil
}

// forgottenMaxAge is the oldest list of erased users a batch is applied with. `users forget`
// deletes a user --settle (at least 2 × ForgottenRefresh) after recording the erasure,
// counting on every consumer to have read it by then for the poison messages it
// dead-letters: forgottenLoop rereads it every ForgottenRefresh, and when those reads fail
// (PostgreSQL unreachable for that query, or at start) the batches wait rather than store
// what the erasure will not find to delete. The events need no such timing: a batch's
// transaction checks its users itself (featurestore.ErasedError); the list only keeps most
// erased events from costing an attempt.
const forgottenMaxAge = featurestore.ForgottenRefresh + time.Second

// awaitForgotten returns once the list of erased users is at most forgottenMaxAge old,
// reading it itself (with backoff, counted as failures: the consumer turns unready) when
// the loop's reads have not kept it so; false when ctx ended first.
func (c *Consumer) awaitForgotten(ctx context.Context) bool {
	for attempt := 0; time.Since(time.Unix(0, c.forgottenAt.Load())) > forgottenMaxAge; attempt++ {
		err := c.refreshForgotten(ctx)
		if err == nil {
			return true
		}
		// Counted and logged by refreshForgotten; a failure for readiness, as a failed apply.
		c.failures.Add(1)
		msg := err.Error()
		c.lastErr.Store(&msg)
		if ctx.Err() != nil || !c.sleep(ctx, attempt) {
			return false
		}
	}
	return true
}

// refreshLag reads the high-water marks of the partitions this member owns, so their lag
// grows while nothing is fetched or applied, and drops the lag of those it no longer owns.
func (c *Consumer) refreshLag(ctx context.Context, r *kafka.GroupReader) {
	owned := r.Assigned()
	if owned == nil {
		return // not a member yet
	}
	c.m.lagRefresh(owned, c.highWaterMarks(ctx, owned, c.kafka.Admin().ListOffsets), r.Committed)
}

// highWaterMarks reads the high-water marks of owned with list (the admin client's
// ListOffsets). A partition whose read failed (the whole request, its error in the answer, or
// no answer for it) is left out: its gauge keeps the last high-water mark read, which
// lagRefresh only raises, so its lag is a lower bound (docs/runbook.md,
// FeatureConsumerLagHigh). Such a refresh is counted (stage lag_metrics) and logged with the
// partitions and their errors: a stuck partition, the one whose lag matters, is also the
// one whose leader is likely unreachable, and its gauge would otherwise freeze unexplained.
func (c *Consumer) highWaterMarks(ctx context.Context, owned map[string][]int,
	list func(context.Context, *kafkago.ListOffsetsRequest) (*kafkago.ListOffsetsResponse, error)) map[partitionKey]int64 {
	req := &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{}}
	for topic, ps := range owned {
		for _, p := range ps {
			req.Topics[topic] = append(req.Topics[topic], kafkago.LastOffsetOf(p))
		}
	}
	hwm := map[partitionKey]int64{}
	if len(req.Topics) == 0 {
		return hwm
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := list(lctx, req)
	cancel()
	var failed []string
	if err != nil {
		failed = append(failed, fmt.Sprintf("all %d owned partitions: %v", len(ownedKeys(owned)), err))
	} else {
		errs := map[partitionKey]error{}
		for topic, pos := range res.Topics {
			for _, po := range pos {
				if k := (partitionKey{topic, po.Partition}); po.Error != nil {
					errs[k] = po.Error
				} else {
					hwm[k] = po.LastOffset
				}
			}
		}
		for _, k := range ownedKeys(owned) {
			if _, ok := hwm[k]; ok {
				continue
			}
			why := "no answer for it"
			if e := errs[k]; e != nil {
				why = e.Error()
			}
			failed = append(failed, fmt.Sprintf("%s/%d: %s", k.topic, k.partition, why))
		}
	}
	if len(failed) > 0 && ctx.Err() == nil {
		c.m.errors("lag_metrics")
		c.warnLag.Do(func(n int64) {
			c.log.WarnContext(ctx, "read partition high-water marks failed; their lag shows the last one read (a lower bound)",
				"partitions", failed, "failures", n)
		})
	}
	return hwm
}

// ownedKeys lists owned (topic -> partitions) in order.
func ownedKeys(owned map[string][]int) []partitionKey {
	var out []partitionKey
	for topic, ps := range owned {
		for _, p := range ps {
			out = append(out, partitionKey{topic, p})
		}
	}
	slices.SortFunc(out, func(a, b partitionKey) int {
		return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition))
	})
	return out
}

func (c *Consumer) healRedis(ctx context.Context) {
	ready, err := c.store.RedisReady(ctx)
	if err != nil {
		c.redisNotReady(copyUnready(err, nil))
		if ctx.Err() == nil {
			c.m.errors("heal")
			c.log.WarnContext(ctx, "check redis copy", "err", err)
		}
		return
	}
	if !ready {
		c.redisNotReady(copyUnready(nil, nil))
		switch err := c.store.Repopulate(ctx, false); {
		case err == nil:
			c.m.repopulations.Inc()
			ready = true
		case errors.Is(err, featurestore.ErrRepopulating):
			c.redisNotReady(copyUnready(nil, err))
		case errors.Is(err, featurestore.ErrGenerationMoved):
			// A rebase (or a forced rebuild) committed meanwhile: not a failure, the next
			// pass copies the new generation.
			c.log.InfoContext(ctx, "redis copy repopulation overtaken by a new feature generation, starting over", "err", err)
			return
		default:
			c.redisNotReady(copyUnready(nil, err))
			if ctx.Err() == nil {
				c.m.errors("heal")
				c.log.WarnContext(ctx, "repopulate redis copy", "err", err)
			}
			return
		}
	}
	c.redisReady.Store(ready)
	if !ready {
		return
	}
	// Small passes (each a bounded Redis write), repeated while there is a backlog.
	const pass = 20
	for range 50 {
		n, err := c.store.HealPending(ctx, 2*c.cfg.HealInterval+time.Second, pass)
		if err != nil {
			if ctx.Err() == nil {
				c.m.errors("heal")
				c.log.WarnContext(ctx, "heal redis journal", "err", err)
			}
			return
		}
		if n > 0 {
			c.m.healed.Add(n)
			c.log.InfoContext(ctx, "redis journal healed", "rows", n)
		}
		if n < pass {
			return
		}
	}
}

func (c *Consumer) redisNotReady(why string) {
	c.redisWhy.Store(&why)
	c.redisReady.Store(false)
}

// copyUnready says why the Redis copy is not ready: its check failed (checkErr: Redis
// unreachable or slow, nothing is repopulated), or it is incomplete and being repopulated,
// by another process (ErrRepopulating) or by this one, whose last attempt failed (repopErr).
func copyUnready(checkErr, repopErr error) string {
	switch {
	case checkErr != nil:
		return fmt.Sprintf("redis feature copy not checked (redis unreachable or slow): %v", checkErr)
	case repopErr == nil:
		return "redis feature copy incomplete (repopulating from postgres)"
	case errors.Is(repopErr, featurestore.ErrRepopulating):
		return "redis feature copy incomplete (another process is repopulating it from postgres)"
	case featurestore.RefusesWrites(repopErr):
		return fmt.Sprintf("redis feature copy incomplete: redis refuses writes, repopulation retried every heal interval: %v", repopErr)
	}
	return fmt.Sprintf("redis feature copy incomplete: repopulation from postgres failed, retried every heal interval: %v", repopErr)
}

func (c *Consumer) housekeeping(ctx context.Context) {
	st, err := c.store.DLQStats(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.m.errors("dlq_metrics")
		}
	} else {
		c.m.dlqPending.Set(float64(st.Pending))
		c.m.dlqReplayed.Set(float64(st.Replayed))
		c.m.dlqOldestPending.Set(float64(st.OldestPendingMs))
	}
	if _, err := c.store.PurgeReplayedDLQ(ctx, c.cfg.DedupRetention); err != nil && ctx.Err() == nil {
		c.m.errors("retention")
		c.log.WarnContext(ctx, "purge replayed dlq entries", "err", err)
	}
	// With a retention of 0 the trims delete nothing but still finish the second passes of
	// what was trimmed before the retention was turned off.
	{
		n, err := c.store.TrimItems(ctx, c.cfg.ItemRetention, itemTrimPage)
		c.m.itemsTrimmed.Add(n)
		if err != nil && ctx.Err() == nil {
			c.m.errors("item_retention")
			c.log.WarnContext(ctx, "trim inactive items", "err", err)
		}
	}
	{
		// Passes back to back while each finds a backlog (half a page or more inactive: a
		// deployment of one-off visitors, or the first retention after the upgrade), within
		// a budget, as the heal loop waits meanwhile. One page per 30 s deletes at most 14
		// million users a day: with more one-off visitors than that the table never stopped
		// growing.
		for start := time.Now(); ; {
			n, err := c.store.TrimUsers(ctx, c.cfg.UserRetention, userTrimPage)
			c.m.usersTrimmed.Add(n)
			if err != nil {
				if ctx.Err() == nil {
					c.m.errors("user_retention")
					c.log.WarnContext(ctx, "trim inactive users", "err", err)
				}
				break
			}
			if n < userTrimPage/2 || time.Since(start) >= userTrimBudget {
				break
			}
		}
	}
	n, err := c.store.PurgeApplied(ctx, c.cfg.DedupRetention, 10000)
	if err != nil {
		if ctx.Err() == nil {
			c.m.errors("retention")
			c.log.WarnContext(ctx, "purge applied event ids", "err", err)
		}
		return
	}
	c.m.dedupPurged.Add(int(n))
}

// itemTrimPage is how many items a housekeeping pass examines for --consumer.item-retention
// (the most it deletes): every 30 s, a cycle over 10 million items takes about 17 hours.
const itemTrimPage = 5000

// userTrimPage is the same for --consumer.user-retention (a cycle over 100 million users takes
// about 7 days), and userTrimBudget bounds the passes a housekeeping run chains while they
// find a backlog. A variable for tests.
var userTrimPage = 5000

const userTrimBudget = 2 * time.Second

// Ready implements module.Readier.
func (c *Consumer) Ready(context.Context) error {
	var errs []error
	if r := c.reader.Load(); r == nil || !r.Joined() {
		errs = append(errs, errors.New("not joined the consumer group yet"))
	}
	if !c.redisReady.Load() {
		why := "redis feature copy not checked yet"
		if p := c.redisWhy.Load(); p != nil {
			why = *p
		}
		errs = append(errs, errors.New(why))
	}
	if n := c.failures.Load(); n >= int64(c.cfg.UnreadyAfter) {
		last := ""
		if p := c.lastErr.Load(); p != nil {
			last = *p
		}
		errs = append(errs, fmt.Errorf("last %d attempts to apply a batch failed: %s", n, last))
	}
	return errors.Join(errs...)
}
