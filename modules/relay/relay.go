package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/infra"
	"recsys/pkg/kafka"
	"recsys/pkg/logging"
	"recsys/pkg/module"
	"recsys/pkg/outbox"
)

// Publisher sends a batch's messages to Kafka (kafka.Producer; tests wrap it).
type Publisher interface {
	WriteMessages(ctx context.Context, msgs ...kafkago.Message) error
	Close() error
}

// Broker provisions topics and probes reachability.
type Broker interface {
	EnsureTopics(ctx context.Context, topics ...string) error
	// Probe makes a real round trip to a broker. (kafka-go serves metadata requests from its
	// transport's cache once the cluster was seen, so a metadata "ping" keeps succeeding
	// while every broker is down.)
	Probe(ctx context.Context) error
	// MaxMessageBytes returns the topics' max.message.bytes (kafka.Client.MaxMessageBytes).
	MaxMessageBytes(ctx context.Context, topics ...string) (map[string]int64, error)
}

// kafkaBroker is the Broker of the process' Kafka client.
type kafkaBroker struct{ c *kafka.Client }

// EnsureTopics creates the missing topics and waits until their partitions' leaders serve.
func (b kafkaBroker) EnsureTopics(ctx context.Context, topics ...string) error {
	return b.c.EnsureTopics(ctx, topics...)
}

// MaxMessageBytes reads the topics' max.message.bytes.
func (b kafkaBroker) MaxMessageBytes(ctx context.Context, topics ...string) (map[string]int64, error) {
	return b.c.MaxMessageBytes(ctx, topics...)
}

// Probe opens a new connection to each broker in turn until one answers an ApiVersions
// request.
func (b kafkaBroker) Probe(ctx context.Context) error {
	d := b.c.Dialer(time.Second)
	var errs []error
	for _, addr := range b.c.Brokers {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			_, err = conn.ApiVersions()
			conn.Close()
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("probe kafka broker %s: %w", addr, err))
	}
	return errors.Join(errs...)
}

// Options replace the relay's Kafka side (tests wrap the real writer to stop at a chosen
// moment) and name its lease owner. Zero fields use deps.
type Options struct {
	Publisher Publisher
	Broker    Broker
	Owner     string
}

// Relay moves event_outbox rows to Kafka. See the package doc.
type Relay struct {
	cfg     *Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	store   *outbox.Store
	pub     Publisher
	broker  Broker
	topics  []string
	owner   string
	backoff outbox.Backoff
	m       *relayMetrics

	// kick wakes one idle worker: a NOTIFY, or a worker that found a backlog.
	kick chan struct{}
	// startupErr is the last topic provisioning error; nil once topics are provisioned.
	startupErr  atomic.Pointer[error]
	provisioned atomic.Bool
	// down is set while Kafka looks unreachable (a whole batch failed); workers probe before
	// claiming again, so an outage does not spend the rows' attempts.
	down atomic.Pointer[error]
	// claimFailures counts the claims failed in a row across the workers (a claim that
	// succeeds resets it) and claimErr is the last one's error: a relay that cannot claim
	// (a full disk, a revoked permission) relays nothing while Kafka is fine.
	claimFailures atomic.Int64
	claimErr      atomic.Pointer[error]
	// recordFailures and recordErr are the same for attempts to record batch outcomes (a
	// recording that succeeds resets it), and recordFailedAt (unix ns) is when the last one
	// failed: a relay whose recordings keep failing (a slow or refusing database, a revoked
	// DELETE) claims and publishes fine, but every batch is reaped and published again after
	// its lease: it makes no progress.
	recordFailures atomic.Int64
	recordErr      atomic.Pointer[error]
	recordFailedAt atomic.Int64

	snap atomic.Pointer[snapState]
	// blocked is set when a claim left pending rows behind (their unit in flight, say): the
	// next recorded outcome may free them, so it wakes an idle worker.
	blocked atomic.Bool
	// recorded counts recorded batches, so a worker can tell that one was recorded while its
	// claim ran.
	recorded atomic.Uint64
	// nextClaim (unix ns) is the earliest start of the next claim while there is no backlog
	// (--relay.linger, or --relay.impression-linger until a commit with anything else is
	// announced); 0 lets the next claim go at once. lastClaim is the start of the last one.
	nextClaim, lastClaim atomic.Int64
	// paced wakes a worker waiting in pace when hurry brought the next claim forward.
	paced chan struct{}
}

type snapState struct {
	b   outbox.Backlog
	err error
	at  time.Time
}

var (
	_ module.Readier        = (*Relay)(nil)
	_ module.HealthReporter = (*Relay)(nil)
)

// NewRelay wires a relay. It starts nothing and opens no connection.
func NewRelay(cfg *Config, d infra.Deps, o Options) (*Relay, error) {
	if d.PG == nil {
		return nil, errors.New("relay needs PostgreSQL")
	}
	if d.Kafka == nil && (o.Publisher == nil || o.Broker == nil) {
		return nil, errors.New("relay needs Kafka")
	}
	var storeOpts []outbox.StoreOption
	if cfg.Retention == 0 {
		storeOpts = append(storeOpts, outbox.DeleteOnAck())
	}
	r := &Relay{
		cfg: cfg, log: d.Log, pool: d.PG, store: outbox.NewStore(d.PG, storeOpts...),
		pub: o.Publisher, broker: o.Broker, owner: o.Owner,
		backoff: outbox.Backoff{Base: cfg.RetryBase, Max: cfg.RetryMax},
		m:       newMetrics(d.Metrics),
		kick:    make(chan struct{}, 1),
		paced:   make(chan struct{}, 1),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if d.Kafka != nil {
		r.topics = []string{d.Kafka.TopicImpressions, d.Kafka.TopicWatches}
		for _, t := range r.topics {
			// Exported at 0 from the start: rate() and increase() see an increment only
			// against an earlier sample, so a counter born at its first failure hides that
			// failure, and an outage's one failed batch before the relay pauses on Kafka.
			r.m.published(t, 0)
			r.m.failed(t, 0)
		}
		if r.pub == nil {
			r.pub = NewPublisher(d.Kafka, cfg)
		}
		if r.broker == nil {
			r.broker = kafkaBroker{c: d.Kafka}
		}
	}
	// After one failed batch the relay stops publishing until Kafka answers, so the failed
	// counter stops growing: this gauge is what shows the outage while it lasts.
	r.m.set.NewGauge("recsys_relay_kafka_unreachable", func() float64 {
		if r.kafkaUnreachable() {
			return 1
		}
		return 0
	})
	if r.owner == "" {
		host, _ := os.Hostname()
		var b [3]byte
		_, _ = rand.Read(b[:])
		r.owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	return r, nil
}

// Owner is the lease owner name this relay writes into claimed rows.
func (r *Relay) Owner() string { return r.owner }

// Run provisions the topics, then claims and publishes until ctx is cancelled; batches in
// flight at that moment, claims in flight included, are finished (acked and recorded) within
// --relay.shutdown-timeout.
func (r *Relay) Run(ctx context.Context) error {
	r.log.InfoContext(ctx, "relay starting", "owner", r.owner, "workers", r.cfg.Workers, "batch_size", r.cfg.BatchSize, "batch_events", r.cfg.BatchEvents,
		"topics", r.topics, "listen", r.cfg.Listen)
	var bg sync.WaitGroup
	defer bg.Wait()
	bgCtx, stopBg := context.WithCancel(ctx)
	defer stopBg()
	if r.cfg.Listen {
		bg.Go(func() { r.listen(bgCtx) })
	}
	bg.Go(func() { r.every(bgCtx, r.cfg.SnapshotInterval, func(ctx context.Context) { r.refreshSnapshot(ctx) }) })
	if err := r.provision(ctx); err != nil {
		r.closePublisher(ctx)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	bg.Go(func() { r.every(bgCtx, r.cfg.ReapInterval, r.reap) })
	// Also with --relay.retention 0 (rows deleted on ack): it removes rows left 'published'
	// by an earlier setting, through the partial index of published rows, which is empty
	// otherwise.
	bg.Go(func() { r.every(bgCtx, r.cfg.RetentionInterval, r.retain) })
	var workers sync.WaitGroup
	for i := range r.cfg.Workers {
		workers.Go(func() { r.work(ctx, i) })
	}
	<-ctx.Done()
	drained := make(chan struct{})
	go func() { workers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(r.cfg.ShutdownTimeout):
		r.m.errors("stop_timeout").Inc()
		r.log.Warn("relay stop timed out, leaving batches in flight to lease expiry", "timeout_s", r.cfg.ShutdownTimeout.Seconds())
	}
	r.closePublisher(ctx)
	r.log.Info("relay stopped", "owner", r.owner)
	return nil
}

func (r *Relay) closePublisher(ctx context.Context) {
	if err := r.pub.Close(); err != nil {
		r.m.errors("stop").Inc()
		r.log.WarnContext(ctx, "close kafka writer", "err", err)
	}
}

// kafkaUnreachable reports that the relay publishes nothing because Kafka does not answer: a
// whole batch failed and no probe has succeeded since, or the topics could not be provisioned
// yet.
func (r *Relay) kafkaUnreachable() bool {
	return r.down.Load() != nil || (!r.provisioned.Load() && r.startupErr.Load() != nil)
}

// Ready fails until the topics are provisioned, while Kafka looks unreachable, and while the
// last --relay.unready-after-failures claims, or attempts to record batch outcomes, failed.
func (r *Relay) Ready(context.Context) error {
	if !r.provisioned.Load() {
		if p := r.startupErr.Load(); p != nil {
			return fmt.Errorf("kafka topics not provisioned: %w", *p)
		}
		return errors.New("kafka topics not provisioned yet")
	}
	if p := r.down.Load(); p != nil {
		return fmt.Errorf("kafka unreachable: %w", *p)
	}
	if n := r.claimFailures.Load(); n >= int64(r.cfg.UnreadyAfter) {
		if p := r.claimErr.Load(); p != nil {
			return fmt.Errorf("last %d claims of outbox rows failed: %w", n, *p)
		}
	}
	if n := r.recordFailures.Load(); n >= int64(r.cfg.UnreadyAfter) && time.Since(time.Unix(0, r.recordFailedAt.Load())) < r.recordFailureWindow() {
		if p := r.recordErr.Load(); p != nil {
			return fmt.Errorf("last %d attempts to record outbox batch outcomes failed (acked batches are published again after their lease): %w", n, *p)
		}
	}
	return nil
}

// recordFailureWindow is how long failed recordings keep the relay unready without a new
// failure. Only a recording that succeeds resets their count, and a relay may have nothing
// left to record: its failed batches reaped meanwhile to dead, or recorded by another relay,
// and no new event, as when the failures turned every API pod embedding a relay unready. While
// recordings keep failing a new failure comes sooner: attempts are at most maxRecordTimeout
// apart, and a batch given up is reaped after its lease and published again after at most
// --relay.retry-max.
func (r *Relay) recordFailureWindow() time.Duration {
	return r.cfg.Lease + r.cfg.RetryMax + maxRecordTimeout
}

// HealthDetails adds the outbox snapshot to /healthz and /readyz in the contract's shape.
func (r *Relay) HealthDetails(ctx context.Context) map[string]any {
	s := r.snap.Load()
	if s == nil || time.Since(s.at) > 2*r.cfg.SnapshotInterval+time.Second {
		s = r.refreshSnapshot(ctx)
	}
	var ob any = s.b
	if s.err != nil {
		ob = map[string]string{"error": s.err.Error()}
	}
	return map[string]any{"event_backbone": map[string]any{"mode": "transactional_outbox", "outbox": ob}}
}

// provision creates the topics and checks their size limit, retrying until Kafka answers (or
// the retries are used up); a limit below --relay.max-batch-bytes fails at once.
func (r *Relay) provision(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.broker.EnsureTopics(cctx, r.topics...)
		var mismatch error
		if err == nil {
			mismatch, err = r.checkMessageLimits(cctx)
		}
		cancel()
		if mismatch != nil {
			r.startupErr.Store(&mismatch)
			r.m.errors("startup").Inc()
			return mismatch
		}
		if err == nil {
			r.provisioned.Store(true)
			r.startupErr.Store(nil)
			r.log.InfoContext(ctx, "kafka topics ready", "topics", r.topics)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.startupErr.Store(&err)
		r.m.errors("startup").Inc()
		if r.cfg.StartupMaxRetries > 0 && attempt >= r.cfg.StartupMaxRetries {
			return fmt.Errorf("provision kafka topics (%d attempts): %w", attempt, err)
		}
		wait := min(r.cfg.StartupBackoff*time.Duration(attempt), 30*time.Second)
		r.log.WarnContext(ctx, "provision kafka topics, retrying", "err", err, "attempt", attempt, "retry_in_s", wait.Seconds())
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// checkMessageLimits compares --relay.max-batch-bytes with the topics' max.message.bytes and
// returns mismatch when it is larger than one of them: the broker would refuse the relay's
// full record batches, each then split and sent again down to sizes it takes (many produce
// requests per claim, the publish timeout spent on them), so the limits must agree. Without
// the permission to describe topic configurations it warns and lets the relay start.
func (r *Relay) checkMessageLimits(ctx context.Context) (mismatch, err error) {
	limits, err := r.broker.MaxMessageBytes(ctx, r.topics...)
	if errors.Is(err, kafkago.TopicAuthorizationFailed) || errors.Is(err, kafkago.ClusterAuthorizationFailed) {
		r.log.WarnContext(ctx, "cannot read the topics' max.message.bytes, not checking --relay.max-batch-bytes against it",
			"err", err, "topics", r.topics, "max_batch_bytes", r.cfg.MaxBatchBytes,
			"mitigation", "grant the relay DescribeConfigs on its topics, or make sure their max.message.bytes is at least --relay.max-batch-bytes")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("check topics' max.message.bytes: %w", err)
	}
	var errs []error
	for _, t := range r.topics {
		if l, ok := limits[t]; ok && r.cfg.MaxBatchBytes > l {
			errs = append(errs, fmt.Errorf("--relay.max-batch-bytes (%d) is larger than topic %s's max.message.bytes (%d): lower --relay.max-batch-bytes to at most %d or raise the topic's max.message.bytes",
				r.cfg.MaxBatchBytes, t, l, l))
		}
	}
	return errors.Join(errs...), nil
}

// maxEmptyWindows bounds how many windows a worker looks through, while the front of the
// queue is blocked, before it waits for a wake-up.
const maxEmptyWindows = 8

// work claims and publishes batches one after the other. Recording a batch's outcome
// (Complete) runs in the background while the worker claims and publishes its next batch, at
// most one such recording per worker, so a database round trip per batch leaves the critical
// path. Per-key order is unaffected: the rows being recorded are still 'publishing', so their
// units are not claimed again until the outcome is in.
func (r *Relay) work(ctx context.Context, id int) {
	var recording sync.WaitGroup
	defer recording.Wait()
	var after int64
	empty := 0
	for ctx.Err() == nil {
		if !r.awaitBroker(ctx) || !r.pace(ctx) {
			return
		}
		start := time.Now()
		gen := r.recorded.Load()
		// Not cancelled by a stop: the lease and its COMMIT go in one round trip, so a claim
		// cut off mid-way may have leased rows this worker never sees, left 'publishing' until
		// the lease expires (the reap then counts an attempt, and their units stay blocked).
		// A claim that returns is processed like any batch in flight at a stop. The timeout
		// keeps a dead database from holding the stop up.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.claimTimeout())
		c, err := r.store.Claim(cctx, outbox.ClaimRequest{Owner: r.owner, Limit: r.cfg.BatchSize,
			MaxEvents: r.cfg.BatchEvents, Lease: r.cfg.Lease, After: after})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.m.errors("claim").Inc()
			r.claimErr.Store(&err)
			n := r.claimFailures.Add(1)
			r.log.WarnContext(ctx, "claim outbox batch, retrying after the poll interval", "err", err, "worker", id, "failed_in_a_row", n)
			sleep(ctx, r.cfg.PollInterval)
			continue
		}
		r.m.claimDur.UpdateDuration(start)
		r.claimFailures.Store(0)
		if c.Blocked {
			r.blocked.Store(true)
		}
		after = c.NextAfter(r.cfg.BatchSize)
		if c.Full || after != 0 {
			r.nextClaim.Store(0) // a backlog: claim without lingering
		}
		if len(c.Rows) == 0 {
			// A batch recorded while this claim ran may have freed the rows it found blocked,
			// and its wake-up may have gone before the claim set r.blocked: claim again.
			freed := c.Blocked && r.recorded.Load() != gen
			if empty++; (after != 0 || freed) && empty < maxEmptyWindows {
				continue
			}
			empty = 0
			r.idle(ctx)
			continue
		}
		empty = 0
		if c.Full || after != 0 {
			r.wake() // there is a backlog: get another worker going
		}
		record := r.process(ctx, c)
		recording.Wait()
		recording.Go(func() {
			record()
			r.recorded.Add(1)
			// The batch's units are free again: rows left behind them, with no commit of
			// their own to announce them, can go now.
			if r.blocked.Swap(false) {
				r.wake()
			}
		})
		// Claim again (after pace) without waiting for a NOTIFY, even when none came during
		// the batch: under load a commit's notification reaches the relay milliseconds after
		// the commit is visible (the listening backend and the listener goroutine must both
		// be scheduled), and this claim finds it first. Tried in session 7: waiting for an
		// announcement no claim had covered yet saved 10 % of the claims in EndToEndFreshness,
		// but BenchmarkRelayCommitToAck's p99 rose from 21.8 to 29.9 ms (medians of 8
		// alternated runs).
	}
}

// maxClaimTimeout bounds a claim: one takes milliseconds, so a claim still running after it
// waits on a database that does not answer.
const maxClaimTimeout = 10 * time.Second

// claimTimeout is half the lease (a claim that outlasts its lease leases nothing usable), at
// most maxClaimTimeout.
func (r *Relay) claimTimeout() time.Duration { return min(r.cfg.Lease/2, maxClaimTimeout) }

// pace waits until the next claim may start and reserves that start: claims start at most
// every --relay.impression-linger across the process' workers while there is no backlog, and
// every --relay.linger once a commit with anything but impressions was announced (hurry). At
// low volume every NOTIFY would otherwise start a claim of one or two rows, and claims, not
// rows, are what the relay's PostgreSQL and Kafka work grows with (a claim and its publish
// cost about the same for 2 rows as for 20), and each publish wakes the consumer's fetches;
// the CPU they burn on a small machine is what delays the pipeline's tail. It reports false
// when ctx is done.
func (r *Relay) pace(ctx context.Context) bool {
	lazy := r.lazyLinger()
	if lazy <= 0 {
		return true
	}
	for {
		next, now := r.nextClaim.Load(), time.Now().UnixNano()
		if now >= next {
			if r.nextClaim.CompareAndSwap(next, now+int64(lazy)) {
				r.lastClaim.Store(now)
				return true
			}
			continue
		}
		t := time.NewTimer(time.Duration(next - now))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		case <-r.paced:
			t.Stop()
		}
	}
}

// lazyLinger is the pace of claims while only impressions were announced: the longer of the
// two lingers, and --relay.linger when the relay does not listen (nothing says what a commit
// carries then).
func (r *Relay) lazyLinger() time.Duration {
	if !r.cfg.Listen {
		return r.cfg.Linger
	}
	return max(r.cfg.Linger, r.cfg.ImpressionLinger)
}

// hurry brings the next claim forward to --relay.linger after the last one: a commit that is
// not impressions only was announced (a watch, whose freshness is the product's promise).
func (r *Relay) hurry() {
	for {
		next := r.nextClaim.Load()
		soon := r.lastClaim.Load() + int64(r.cfg.Linger)
		if next <= soon || r.nextClaim.CompareAndSwap(next, soon) {
			break
		}
	}
	select {
	case r.paced <- struct{}{}:
	default:
	}
}

// idle waits for a NOTIFY (or a busy worker's kick) or the poll interval.
func (r *Relay) idle(ctx context.Context) {
	t := time.NewTimer(r.cfg.PollInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-r.kick:
	case <-t.C:
	}
}

func (r *Relay) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// awaitBroker returns at once while Kafka is reachable; after a batch failed as a whole it
// probes Kafka until it answers, so an outage costs no attempts beyond the first batch.
func (r *Relay) awaitBroker(ctx context.Context) bool {
	for {
		p := r.down.Load()
		if p == nil {
			return true
		}
		err := r.broker.Probe(ctx)
		if err == nil {
			if r.down.CompareAndSwap(p, nil) {
				r.log.InfoContext(ctx, "kafka reachable again, resuming")
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if !sleep(ctx, r.cfg.ProbeInterval) {
			return false
		}
	}
}

// process publishes one claimed batch and returns the function that records its outcome. Both
// run to the end even when ctx is cancelled (shutdown), so rows Kafka acked are marked instead
// of being published again by another relay after the lease.
func (r *Relay) process(ctx context.Context, c *outbox.Claim) (record func()) {
	bctx := context.WithoutCancel(ctx)
	items, results := r.decode(ctx, c.Rows)
	r.m.batchSize.Update(float64(c.Events()))
	lease := r.keepLease(bctx, c)
	for id, res := range r.publish(bctx, c, items) {
		results[id] = res
	}
	ackAt := time.Since(c.ClaimedAt)

	outcomes := outbox.Settle(c.Rows, results, r.backoff)
	failedByTopic := map[string]int{}
	ackedByTopic := map[string]int{}
	// allFailed: nothing in the batch got an answer from Kafka, which then looks unreachable.
	allFailed, anyFailed := true, false
	var firstErr error
	for i, o := range outcomes {
		row, res := c.Rows[i], results[c.Rows[i].ID]
		if res.Err != nil {
			failedByTopic[row.Topic] += row.Events()
			anyFailed = true
			if firstErr == nil {
				firstErr = res.Err
			}
			if res.Permanent || brokerAnswered(res.Err) {
				allFailed = false
			}
		} else if !res.NotSent {
			allFailed = false
			acked := row.Events() - len(res.DeadLetters)
			ackedByTopic[row.Topic] += acked
			lat := (row.AgeAtClaim + ackAt).Seconds()
			for range acked {
				r.m.commitToAck.Update(lat)
			}
			failedByTopic[row.Topic] += len(res.DeadLetters)
			// Logged when the dead rows are stored: a row held back behind an earlier failure
			// of its unit stores none on this attempt (Settle), but on the one that publishes it.
			if n := len(o.DeadLetters); n > 0 {
				r.log.ErrorContext(withCorrelation(ctx, o.DeadLetters[0].CorrelationID), "outbox events no retry can publish, moving them to dead rows of their own", "outbox_id", row.ID,
					"events", n, "first_event_id", o.DeadLetters[0].EventID, "err", o.DeadLetters[0].Err,
					"mitigation", "the row's other events were published; see the runbook on dead outbox rows")
			}
		}
		if o.Refund {
			r.m.heldBack.Inc()
		}
	}
	for t, n := range ackedByTopic {
		r.m.published(t, n)
	}
	for t, n := range failedByTopic {
		r.m.failed(t, n)
	}
	if anyFailed {
		retrying, dead := 0, 0
		for _, o := range outcomes {
			switch {
			case o.Status == outbox.StatusDead:
				dead++
			case o.Status == outbox.StatusPending && !o.Refund:
				retrying++
			}
		}
		r.m.errors("publish").Inc()
		r.log.WarnContext(ctx, "publish outbox batch", "err", firstErr, "batch_rows", len(c.Rows),
			"failed_events", sum(failedByTopic), "retry_rows", retrying, "dead_rows", dead, "mitigation", publishMitigation(retrying, dead))
		if allFailed {
			r.markDown(ctx, firstErr)
		}
	} else {
		r.down.Store(nil)
	}
	return func() {
		lease.recording.Store(true)
		r.complete(bctx, c, lease.from, outcomes, anyFailed)
		lease.stop()
	}
}

// publishMitigation is the advice of a failed publish with retrying rows that will be tried
// again and dead rows that no retry can publish (or that used up their attempts).
func publishMitigation(retrying, dead int) string {
	const retry = "failed rows retry with backoff, later rows of their keys wait"
	const gone = "rows no retry can publish (or out of attempts) go dead and later rows of their keys go on; see the runbook on dead outbox rows"
	switch {
	case dead == 0:
		return retry
	case retrying == 0:
		return gone
	default:
		return retry + "; " + gone
	}
}

// item is a claimed row with the messages it carries.
type item struct {
	row  *outbox.Row
	msgs []outbox.Message
	// dead marks messages (by index) taken out of the row's publish: no retry can publish
	// them, and they go dead on their own (outbox.DeadLetter) instead of with the row.
	dead []bool
	live int // messages not marked dead
	// sent marks messages (by index) Kafka acked in an earlier round of the publish: a round
	// that sends the rest again leaves them out.
	sent []bool
}

// pending reports whether message seq is still to be sent.
func (it *item) pending(seq int) bool {
	return (it.dead == nil || !it.dead[seq]) && (it.sent == nil || !it.sent[seq])
}

func (it *item) markSent(seq int) {
	if it.sent == nil {
		it.sent = make([]bool, len(it.msgs))
	}
	it.sent[seq] = true
}

// deadLetter takes message seq out of the row's publish. It reports false when seq is the
// row's only message left: the row itself then goes dead, as it holds nothing else.
func (it *item) deadLetter(seq int) bool {
	if it.row.PayloadFormat != outbox.FormatBatch || seq < 0 || seq >= len(it.msgs) || it.live <= 1 {
		return false
	}
	if it.dead == nil {
		it.dead = make([]bool, len(it.msgs))
	}
	if !it.dead[seq] {
		it.dead[seq] = true
		it.live--
	}
	return true
}

// decode splits the claimed rows into their messages. A row that does not decode is poison:
// its result is a permanent error, so it goes dead at once with the decode error and does not
// hold its lane back.
func (r *Relay) decode(ctx context.Context, rows []outbox.Row) ([]item, map[int64]outbox.Result) {
	items := make([]item, 0, len(rows))
	results := map[int64]outbox.Result{}
	for i := range rows {
		row := &rows[i]
		msgs, err := row.Messages()
		if err != nil {
			r.m.poison.Inc()
			r.log.ErrorContext(withCorrelation(ctx, row.CorrelationID), "undecodable outbox row, moving it to dead", "err", err, "outbox_id", row.ID,
				"event_id", row.EventID, "mitigation", "fix the writer; the row's lane continues without it")
			results[row.ID] = outbox.Result{Err: err, Permanent: true}
			continue
		}
		items = append(items, item{row: row, msgs: msgs, live: len(msgs)})
	}
	return items, results
}

// withCorrelation returns ctx whose log lines carry an event's correlation id (the
// X-Correlation-ID of the request that sent it, "" for none), so a line about one event leads
// back to that request.
func withCorrelation(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return logging.WithIDs(ctx, logging.IDs{CorrelationID: id})
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// brokerAnswered reports an error code sent by a broker (e.g. an unknown topic), as opposed to
// a connection failure or a timeout.
func brokerAnswered(err error) bool {
	var ke kafkago.Error
	return errors.As(err, &ke)
}

func (r *Relay) markDown(ctx context.Context, err error) {
	if r.down.Swap(&err) == nil {
		r.log.WarnContext(ctx, "kafka looks unreachable, pausing claims until it answers", "err", err)
	}
}

// complete records the outcomes, retrying on a database error for as long as one lease (at
// least three attempts): the lease is renewed meanwhile, so a database that refuses writes for
// a few seconds (a failover, a restart) costs no republished batch, where giving up after
// three quick failures left every batch in flight to be reaped and published again. Rows
// whose outcome still cannot be recorded stay leased and are retried after the lease expires
// (acked ones are then published twice: at-least-once). Each attempt may take longer than the
// last (recordTimeout), so a slow database records the batch too. Every failed attempt counts
// toward unreadiness (recordFailures), and any recording that succeeds resets the count.
// leaseFrom tells when the claim's lease was last extended for all its rows (see leaseKeeper).
func (r *Relay) complete(ctx context.Context, c *outbox.Claim, leaseFrom func() time.Time, outcomes []outbox.Outcome, anyFailed bool) {
	first := time.Now()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, recordTimeout(attempt))
		done, err := r.store.Complete(cctx, c, outcomes)
		cancel()
		if err == nil {
			r.recordFailures.Store(0)
			r.m.completeDur.UpdateDuration(start)
			if recordedEarlier(attempt, done, len(outcomes), time.Since(leaseFrom()), c.Lease) {
				done = intended(outcomes)
			}
			// Counted from what was recorded: a fenced row did not go dead here.
			r.m.dead.Add(done.Dead + done.DeadLettered)
			r.erased(ctx, done.Erased)
			if done.Fenced > 0 {
				r.m.fenced.Add(done.Fenced)
				r.log.WarnContext(ctx, "outbox lease lost before recording the outcome", "rows", done.Fenced,
					"mitigation", "the rows' new owner publishes them (duplicates possible)")
			}
			return
		}
		stage := "process"
		if anyFailed {
			stage = "mark_failed"
		}
		r.m.errors(stage).Inc()
		r.recordErr.Store(&err)
		r.recordFailedAt.Store(time.Now().UnixNano())
		r.recordFailures.Add(1)
		if attempt >= 3 && time.Since(first) >= c.Lease {
			r.log.ErrorContext(ctx, "record outbox batch outcome", "err", err, "rows", len(outcomes), "attempts", attempt,
				"mitigation", "rows are retried after their lease expires")
			return
		}
		if attempt == 3 {
			r.log.WarnContext(ctx, "record outbox batch outcome, retrying while the lease lasts", "err", err, "rows", len(outcomes),
				"retry_for_s", (c.Lease - time.Since(first)).Seconds())
		}
		time.Sleep(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second))
	}
}

// recordTimeout bounds attempt number attempt of a recording: 5 s, doubled at each attempt
// up to maxRecordTimeout. A fixed bound never recorded a batch whose recording takes longer
// than it on a slow database (a large batch on saturated disks, lock waits): every attempt
// was cancelled and rolled back, the batch was reaped and published again after the lease,
// then failed to record the same way, until its rows went dead after max_attempts
// publications. An attempt holding the rows' locks past the lease is safe: the reap skips
// locked rows, and Complete fences off the rows a reap took before it reached them.
func recordTimeout(attempt int) time.Duration {
	return min(5*time.Second<<min(attempt-1, 8), maxRecordTimeout)
}

// maxRecordTimeout bounds one recording attempt: past it the database is more likely stuck
// than slow.
const maxRecordTimeout = time.Minute

// recordedEarlier reports that a retried Complete matched none of its rows because an
// earlier attempt committed and only its answer was lost (a client-side timeout), not because
// the lease was lost: sinceLease, taken after the answer came, is shorter than the lease, so
// no reap can have cleared the rows' token, and only Complete clears it otherwise.
func recordedEarlier(attempt int, done outbox.Completed, outcomes int, sinceLease, lease time.Duration) bool {
	return attempt > 1 && outcomes > 0 && done.Fenced == outcomes && sinceLease < lease
}

// intended is what Complete applies when it records outcomes whole (dead letters of an
// event already stored are counted though not stored again).
func intended(outcomes []outbox.Outcome) outbox.Completed {
	var d outbox.Completed
	for _, o := range outcomes {
		switch o.Status {
		case outbox.StatusPublished:
			d.Published++
		case outbox.StatusPending:
			d.Retried++
		case outbox.StatusDead:
			d.Dead++
		}
		d.DeadLettered += len(o.DeadLetters)
	}
	return d
}

// leaseKeeper renews a claim's lease every third of its length from the claim until its
// outcome is recorded (or recording gives up), so no relay takes over a batch while its holder
// still works on it: publishing it, or recording its outcome on a database slow enough that
// the recording outlasts the lease. Stopped only then, it is bounded by complete's retries.
type leaseKeeper struct {
	done chan struct{}
	wg   sync.WaitGroup
	// recording is set when the outcome starts being recorded: from then on a renewal that
	// finds rows without the claim's token cannot tell rows reaped from rows just recorded,
	// so losses are left to Complete, which counts them as fenced.
	recording atomic.Bool
	// leaseFrom is when the lease of all the claim's rows was last extended: the
	// time the claim (or the last renewal that extended every row) was sent, so the lease runs
	// at least Lease from it.
	leaseFrom atomic.Pointer[time.Time]
}

// from returns when the lease of all the claim's rows was last extended.
func (k *leaseKeeper) from() time.Time { return *k.leaseFrom.Load() }

// stop ends the renewals and waits for the one in progress.
func (k *leaseKeeper) stop() { close(k.done); k.wg.Wait() }

// keepLease starts renewing the claim's lease.
func (r *Relay) keepLease(ctx context.Context, c *outbox.Claim) *leaseKeeper {
	k := &leaseKeeper{done: make(chan struct{})}
	k.leaseFrom.Store(&c.ClaimedAt)
	k.wg.Go(func() {
		t := time.NewTicker(c.Lease / 3)
		defer t.Stop()
		lostBefore := 0
		for {
			select {
			case <-k.done:
				return
			case <-t.C:
				sent := time.Now()
				cctx, cancel := context.WithTimeout(ctx, c.Lease/3)
				n, err := r.store.Renew(cctx, c)
				cancel()
				if err != nil {
					r.m.errors("renew").Inc()
					r.log.WarnContext(ctx, "renew outbox lease", "err", err, "rows", len(c.Rows))
					continue
				}
				if n.Renewed == len(c.Rows) {
					k.leaseFrom.Store(&sent)
				}
				if k.recording.Load() {
					continue
				}
				// Rows lost once stay lost: each tick counts only the newly lost ones.
				if lost := len(c.Rows) - n.Held; lost > lostBefore {
					r.m.leaseLost.Add(lost - lostBefore)
					r.log.WarnContext(ctx, "outbox lease lost while publishing", "rows", lost-lostBefore,
						"mitigation", "their outcome will be fenced off; the new owner publishes them")
					lostBefore = lost
				}
			}
		}
	})
	return k
}

// publish sends the batch's messages in one WriteMessages call (one produce request per
// broker for all topics and partitions) and returns the rows that did not succeed: a row
// succeeds only when every one of its messages was acked. A missing topic fails only its own
// rows (per-message errors).
func (r *Relay) publish(ctx context.Context, c *outbox.Claim, items []item) map[int64]outbox.Result {
	sinceClaim := time.Since(c.ClaimedAt)
	for _, it := range items {
		lag := float64((it.row.AgeAtClaim + sinceClaim).Milliseconds())
		for range it.msgs {
			r.m.eventLag.Update(lag)
		}
	}
	start := time.Now()
	defer r.m.publishDur.UpdateDuration(start)
	return r.publishRows(ctx, items)
}

const (
	headerOutboxID  = "outbox_id"
	headerOutboxSeq = "outbox_seq"
)

// schemaVersions caches the schema_version header values in use, saving an allocation per
// message.
var schemaVersions = func() [8][]byte {
	var v [8][]byte
	for i := range v {
		v[i] = []byte(strconv.Itoa(i))
	}
	return v
}()

func schemaVersion(v int16) []byte {
	if v >= 0 && int(v) < len(schemaVersions) {
		return schemaVersions[v]
	}
	return []byte(strconv.Itoa(int(v)))
}

// appendMessages appends the Kafka messages of one row still to be sent. Every message
// carries the row's id (outbox_id, shared by a batch row's messages) and, for a batch row,
// its index in the row (outbox_seq).
func appendMessages(dst []kafkago.Message, it item) []kafkago.Message {
	row := it.row
	oid := []byte(strconv.FormatInt(row.ID, 10))
	batch := row.PayloadFormat == outbox.FormatBatch
	for seq, m := range it.msgs {
		if !it.pending(seq) {
			continue
		}
		n := 4
		if batch {
			n++
		}
		if m.CorrelationID != "" {
			n++
		}
		h := make([]kafkago.Header, 4, n)
		h[0] = kafkago.Header{Key: "event_id", Value: []byte(m.EventID)}
		h[1] = kafkago.Header{Key: "event_type", Value: []byte(m.EventType)}
		h[2] = kafkago.Header{Key: "schema_version", Value: schemaVersion(m.SchemaVersion)}
		h[3] = kafkago.Header{Key: headerOutboxID, Value: oid}
		if batch {
			h = append(h, kafkago.Header{Key: headerOutboxSeq, Value: []byte(strconv.Itoa(seq))})
		}
		if m.CorrelationID != "" {
			h = append(h, kafkago.Header{Key: "correlation_id", Value: []byte(m.CorrelationID)})
		}
		dst = append(dst, kafkago.Message{Topic: row.Topic, Key: []byte(m.Key), Value: m.Payload, Headers: h})
	}
	return dst
}

func outboxID(m kafkago.Message) int64 {
	for _, h := range m.Headers {
		if h.Key == headerOutboxID {
			id, _ := strconv.ParseInt(string(h.Value), 10, 64)
			return id
		}
	}
	return 0
}

// outboxSeq is the message's index in its batch row, -1 for a single row.
func outboxSeq(m kafkago.Message) int {
	for _, h := range m.Headers {
		if h.Key == headerOutboxSeq {
			if seq, err := strconv.Atoi(string(h.Value)); err == nil {
				return seq
			}
		}
	}
	return -1
}

// withDeadLetters adds to the results of the rows Kafka acked the messages they left out.
func withDeadLetters(items []*item, results map[int64]outbox.Result, errs map[int64][]error) map[int64]outbox.Result {
	for _, it := range items {
		if it.dead == nil {
			continue
		}
		if res, ok := results[it.row.ID]; ok && (res.Err != nil || res.NotSent) {
			continue // the row is retried, held back or dead whole: its messages go with it
		}
		var dls []outbox.DeadLetter
		for seq, d := range it.dead {
			if d {
				dls = append(dls, outbox.DeadLetter{Message: it.msgs[seq], Err: errs[it.row.ID][seq].Error()})
			}
		}
		results[it.row.ID] = outbox.Result{DeadLetters: dls}
	}
	return results
}

// publishRows writes the messages of the rows. A message larger than the writer accepts
// fails the whole call before anything is sent. In a batch row it is taken out of the row
// (dead-lettered: it goes dead as a row of its own, see outbox.DeadLetter) so the row's other
// events, other clients' among them, are still published; a row with nothing else is taken
// out whole (dead: retrying cannot fix it) and the later rows of its unit are held back
// unsent. The rest is sent again. A message the broker refuses as too large (the producer
// reports that only for a message refused alone) is dead-lettered the same way, and the
// messages its partition did not send behind it are sent again in the same call (only those:
// what Kafka acked is not sent twice). A row with any other failed message fails as a whole
// (all of it is sent again later).
func (r *Relay) publishRows(ctx context.Context, items []item) map[int64]outbox.Result {
	results := map[int64]outbox.Result{}
	// dlErrs[row id][seq] is why a dead-lettered message was taken out.
	dlErrs := map[int64][]error{}
	markDead := func(it *item, seq int, err error) bool {
		if !it.deadLetter(seq) {
			return false
		}
		if dlErrs[it.row.ID] == nil {
			dlErrs[it.row.ID] = make([]error, len(it.msgs))
		}
		dlErrs[it.row.ID][seq] = err
		return true
	}
	all := make([]*item, len(items))
	for i := range items {
		it := items[i] // the marks stay on the copies
		all[i] = &it
	}
	send := all
	for len(send) > 0 {
		n := 0
		for _, it := range send {
			n += it.live
		}
		msgs := make([]kafkago.Message, 0, n)
		owner := make([]int32, 0, n) // msgs[i] belongs to send[owner[i]]
		seqs := make([]int32, 0, n)  // and is its message seqs[i]
		for i, it := range send {
			msgs = appendMessages(msgs, *it)
			for seq := range it.msgs {
				if it.pending(seq) {
					owner = append(owner, int32(i))
					seqs = append(seqs, int32(seq))
				}
			}
		}
		cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
		err := r.pub.WriteMessages(cctx, msgs...)
		cancel()
		if err == nil {
			return withDeadLetters(all, results, dlErrs)
		}
		var tooLarge kafkago.MessageTooLargeError
		var werrs kafkago.WriteErrors
		switch {
		case errors.As(err, &tooLarge):
			bad := outboxID(tooLarge.Message)
			sizeErr := fmt.Errorf("message of %d bytes is larger than --relay.max-batch-bytes (%d): %w", len(tooLarge.Message.Value), r.cfg.MaxBatchBytes, err)
			var next []*item
			var held *outbox.Unit
			found := false
			for _, it := range send {
				row := it.row
				switch {
				case row.ID == bad && markDead(it, outboxSeq(tooLarge.Message), sizeErr):
					found = true
					next = append(next, it)
				case row.ID == bad:
					found = true
					results[row.ID] = outbox.Result{Permanent: true, Err: sizeErr}
					u := row.Unit()
					held = &u
				case held != nil && row.Unit() == *held:
					results[row.ID] = outbox.Result{NotSent: true}
				default:
					next = append(next, it)
				}
			}
			if !found { // cannot tell which message: fail the call's rows
				for _, it := range send {
					results[it.row.ID] = outbox.Result{Err: err}
				}
				return withDeadLetters(all, results, dlErrs)
			}
			send = next
		case errors.As(err, &werrs):
			// Per row: the messages the broker refused as too large, whether messages were
			// left unsent behind such a refusal, and any other failure.
			tooBig := map[int][]int{}
			behind := map[int]error{}
			for i, e := range werrs {
				if i >= len(owner) {
					continue
				}
				o := int(owner[i])
				it := send[o]
				var ns kafka.NotSentError
				switch {
				case e == nil:
					it.markSent(int(seqs[i]))
				case errors.Is(e, kafkago.MessageSizeTooLarge):
					tooBig[o] = append(tooBig[o], i)
				case errors.As(e, &ns) && errors.Is(ns.Cause, kafkago.MessageSizeTooLarge):
					if behind[o] == nil {
						behind[o] = e
					}
				default:
					if _, ok := results[it.row.ID]; !ok {
						results[it.row.ID] = outbox.Result{Err: e}
					}
				}
			}
			taken := false // a refused message left the publish: what waited behind it can go
			for o, idx := range tooBig {
				it := send[o]
				if _, failed := results[it.row.ID]; failed {
					continue // retried whole: the refused messages are judged again then
				}
				taken = true
				if len(idx) < it.live {
					for _, i := range idx {
						markDead(it, int(seqs[i]), werrs[i])
					}
					continue
				}
				results[it.row.ID] = outbox.Result{Err: werrs[idx[0]], Permanent: true}
			}
			var next []*item
			for o, it := range send {
				e := behind[o]
				if _, done := results[it.row.ID]; done || e == nil {
					continue
				}
				if !taken {
					results[it.row.ID] = outbox.Result{Err: e}
					continue
				}
				next = append(next, it)
			}
			if len(next) == 0 {
				return withDeadLetters(all, results, dlErrs)
			}
			send = next
		default:
			for _, it := range send {
				results[it.row.ID] = outbox.Result{Err: err}
			}
			return withDeadLetters(all, results, dlErrs)
		}
	}
	return withDeadLetters(all, results, dlErrs)
}

// every runs fn now and then every interval until ctx is done.
func (r *Relay) every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	for {
		fn(ctx)
		if !sleep(ctx, interval) {
			return
		}
	}
}

func (r *Relay) refreshSnapshot(ctx context.Context) *snapState {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := outbox.SnapshotLimit(cctx, r.pool, r.cfg.SnapshotCountLimit)
	s := &snapState{b: b, err: err, at: time.Now()}
	if err != nil {
		if ctx.Err() != nil {
			return s
		}
		r.m.errors("metrics").Inc()
		r.log.WarnContext(ctx, "outbox snapshot", "err", err)
	} else {
		r.m.backlog(b)
	}
	r.snap.Store(s)
	return s
}

// reapBatch bounds one reap statement.
const reapBatch = 1000

func (r *Relay) reap(ctx context.Context) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := r.store.Reap(cctx, reapBatch, r.backoff)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.m.errors("reap").Inc()
				r.log.WarnContext(ctx, "reap expired outbox leases", "err", err)
			}
			return
		}
		if got.Requeued+got.Dead > 0 {
			r.m.reqd.Add(got.Requeued)
			r.m.reapDead.Add(got.Dead)
			r.log.WarnContext(ctx, "reclaimed outbox rows whose lease expired", "requeued", got.Requeued, "dead", got.Dead)
			r.erased(ctx, got.Erased)
			r.wake()
		}
		if got.Requeued+got.Dead < reapBatch {
			return
		}
	}
}

// erased accounts for the events of erased users deleted from rows going dead.
func (r *Relay) erased(ctx context.Context, n int) {
	if n == 0 {
		return
	}
	r.m.erased.Add(n)
	r.log.InfoContext(ctx, "deleted erased users' events from outbox rows going dead", "events", n)
}

func (r *Relay) retain(ctx context.Context) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := r.store.DeletePublished(cctx, r.cfg.Retention, r.cfg.RetentionBatch)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.m.errors("retention").Inc()
				r.log.WarnContext(ctx, "delete published outbox rows", "err", err)
			}
			return
		}
		r.m.retention.Add(n)
		if n < r.cfg.RetentionBatch {
			return
		}
	}
}

// listen turns NOTIFY recsys_outbox into wake-ups on a dedicated connection, reconnecting
// with backoff; polling covers the gaps.
func (r *Relay) listen(ctx context.Context) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := r.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			wait = 100 * time.Millisecond
		}
		r.m.errors("listen").Inc()
		r.log.WarnContext(ctx, "listen for outbox notifications", "err", err, "retry_in_s", wait.Seconds(),
			"mitigation", "polling every --relay.poll-interval meanwhile")
		if !sleep(ctx, wait) {
			return
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func (r *Relay) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+outbox.Channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	r.hurry() // rows committed while nobody listened, of any kind
	r.wake()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if n.Payload != outbox.NotifyImpressionsOnly {
			r.hurry()
		}
		r.wake()
	}
}

// sleep waits d or until ctx is done; it reports whether the full wait elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
