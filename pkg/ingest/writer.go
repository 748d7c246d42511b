// Package ingest is the durable write path of events: a group-commit Writer that stores
// impressions, watches and legacy events with their event_outbox rows in one PostgreSQL
// transaction, idempotently by (user_id, event_id).
//
// Group commit: Write hands the caller's events to a queue; each of a few worker goroutines
// takes the first waiting request, gathers more for at most MaxWait (or until MaxEvents), and
// commits them all together. A small group is ONE statement (data-modifying CTEs over unnest
// arrays: one round trip, atomic as an implicit transaction, pipelined after a statement that
// asks for its transaction id: see exec). A group of at least
// CopyMinEvents events is one explicit transaction instead: COPY of the new ids' dedup keys,
// raw rows and outbox rows (after a probe of the stored ids only for a while after a
// duplicate was met: otherwise every id is taken as new and the dedup COPY checks it). COPY
// fills heap pages with multi-row inserts (one WAL record per page instead of one per row)
// and skips the unnest/join/speculative-insert work, which costs far more than its extra
// round trips once a group holds hundreds of events. Callers wait for the commit, so a 200 is only ever sent
// for committed data; and an error only once the server has stopped: a statement still
// running near the timeout is cancelled on the server and its answer awaited
// (boundOnServer), and a commit that still went unanswered (the server ignores a cancel
// that arrives while it reads a command or commits; a network loses answers) is looked up
// on another connection once its session was ended (resolve), so an error never hides a
// commit; when even that fails in time the error wraps ErrOutcomeUnknown instead. A request's events are never split across transactions, which keeps
// /log/batch all-or-nothing; if a merged transaction fails with an error that may belong to
// one request (a data or constraint error), the worker retries each request in its own
// transaction so one bad request cannot fail the others. Connection errors and timeouts fail
// the whole group at once: retrying them request by request would only multiply the wait.
//
// Outbox rows: a group writes ONE event_outbox row per (topic, lane) holding the frames
// (pkg/outbox.AppendFrame) of the group's new events of that topic and lane in arrival order
// (payload_format 2). The lane is a hash of the user id, so a user's events always share a
// lane's order unit; the outbox's per-row cost (a heap row and four index entries, most of
// ingestion's database work when it was per event) is paid per lane instead of per event.
// The row's event_id is "batch:" + its first event's id and user + the group's creation time
// in nanoseconds (batchIDPrefix): unique in practice, since two groups would need first
// events whose id and user join to the same string ("a/b"+"c" and "a"+"b/c") in the same
// nanosecond.
//
// Idempotency: an event is its user's event_id. Clients may number events per user or per
// device, so two users' events can share an id and are two events; a resend by the same user
// is a duplicate (api-contract §16.10). event_dedup(event_id, user_id) is inserted first (the
// statement: ON CONFLICT DO NOTHING; COPY: every key, or the keys a probe did not find, and a
// unique violation sends the group to the statement); raw rows and outbox frames are written
// only for keys that were new. Concurrent transactions with the same key serialise on the
// unique index, so exactly one gets "ok". Keys are inserted in sorted order so two groups
// never deadlock on each other.
//
// When a transaction wrote outbox rows it also notifies channel recsys_outbox (delivered
// on commit), so the relay wakes without polling.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
)

// NotifyChannel is the LISTEN/NOTIFY channel the writer notifies after writing outbox rows.
const NotifyChannel = "recsys_outbox"

// Config tunes a Writer.
type Config struct {
	TopicImpressions string // outbox topic of impressions
	TopicWatches     string // outbox topic of watches and legacy events
	MaxAttempts      int    // event_outbox.max_attempts of new rows
	// OutboxLanes is the number of lanes (outbox.Lane) a group's events are spread over: at
	// most this many outbox rows per topic per group. Every writer of one database must use
	// the same count, or a user's events could sit in two order units; change it only with a
	// drained outbox.
	OutboxLanes int
	// MaxEventBytes bounds one event's outbox frame (its Kafka message but for the
	// headers); a larger event is refused with *EventTooLargeError. The relay's
	// --relay.max-batch-bytes must stay above it, or an accepted event could never be
	// published. 0 means DefaultMaxEventBytes.
	MaxEventBytes int

	MaxWait   time.Duration // longest a worker waits to gather more requests into a transaction
	MaxEvents int           // events per merged transaction (a larger single request still goes alone)
	// CopyMinEvents is the group size (events) from which a group is written with COPY
	// instead of the single unnest statement.
	CopyMinEvents int
	Workers       int // transactions in flight at once
	QueueSize     int // requests waiting for a worker before Write blocks
	// Timeout bounds one transaction, pool wait included, so an outage fails fast instead of
	// hanging; callers bound their own wait with their context as well.
	Timeout time.Duration
	// AcquireTimeout bounds the wait for a pooled connection within Timeout
	// (--pg.acquire-timeout): a pool that every other path holds answers the group's
	// requests unavailable then, instead of after the whole Timeout. 0: Timeout alone.
	AcquireTimeout time.Duration

	Name    string       // value of the "writer" metric label
	Metrics *metrics.Set // optional
	Log     *slog.Logger // optional
}

// DefaultConfig returns the defaults (topics from pkg/kafka's defaults).
func DefaultConfig() Config {
	return Config{TopicImpressions: "recsys.impressions.v1", TopicWatches: "recsys.watches.v1", MaxAttempts: 25, OutboxLanes: 8, MaxEventBytes: DefaultMaxEventBytes,
		MaxWait: time.Millisecond, MaxEvents: 2000, CopyMinEvents: 256, Workers: 2, QueueSize: 4096, Timeout: time.Second, Name: "ingest"}
}

// Status is the outcome of one event.
type Status string

// The outcomes.
const (
	StatusOK        Status = "ok"        // stored now
	StatusDuplicate Status = "duplicate" // its user's event_id was stored before; nothing changed
)

// Result is the outcome of one event of a Write.
type Result struct {
	Status Status
	// Rows is the number of raw rows written, as the readers see them: the item count of an
	// impression (its rows in the impressions view; it is one impression_events row), 1 for
	// a watch or legacy event, 0 for a duplicate.
	Rows int
	// OutboxEnqueued is true when an event_outbox row was really written for the event.
	OutboxEnqueued bool
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("ingest writer closed")

// ErrUnavailable wraps errors that mean PostgreSQL could not be reached or did not answer in
// time (as opposed to a statement rejected by the server).
var ErrUnavailable = errors.New("database unavailable")

// Writer is the group-commit event writer. It is safe for concurrent use.
type Writer struct {
	pool *pgxpool.Pool
	cfg  Config
	log  *slog.Logger
	m    writerMetrics
	// laneKeys[lane] is outbox.LaneKey(lane), the msg_key of the lane's rows.
	laneKeys []string
	encoders sync.Pool // *copyEncoder, buffers reused across COPY groups
	builders sync.Pool // *pgx.ExtendedQueryBuilder, the statement's parameter buffers
	// prepared: the pool's connections use prepared statements (pgx's default
	// QueryExecModeCacheStatement), and so does exec.
	prepared bool
	// probeGroups > 0: that many more COPY groups probe the stored ids before their dedup
	// COPY (set after a duplicate was met; see copyGroup).
	probeGroups atomic.Int64

	mu      sync.RWMutex
	closed  bool
	queue   chan *request
	started sync.Once
	wg      sync.WaitGroup
}

type request struct {
	ctx context.Context
	// state is reqQueued until a worker takes the request for a commit (reqStarted) or its
	// caller gives up waiting first (reqAbandoned); whichever moves it first decides, so a
	// caller answered "unavailable" knows nothing of its request was written.
	state atomic.Int32
	// expires, when set, is when a request still queued is answered ErrUnavailable
	// instead of written (Submit's maxWait): the caller stamped its events before queueing.
	expires time.Time
	rows    []row
	done    chan struct{}         // closed when answered (Write, WritePrepared)
	then    func([]Result, error) // called instead when answered (Submit)
	results []Result
	err     error
}

// Request states (request.state).
const (
	reqQueued int32 = iota
	reqStarted
	reqAbandoned
)

// answer hands the outcome to the caller.
func (r *request) answer() {
	if r.then != nil {
		r.then(r.results, r.err)
		return
	}
	close(r.done)
}

// row is one prepared event; its outbox frame, lane and context JSON are built by the
// caller's goroutine so the workers only assemble arrays.
type row struct {
	ev      events.Any
	frame   []byte // outbox.AppendFrame of the event
	lane    int    // outbox.Lane of its user id
	context *string
}

// New returns a writer; call Start before Write and Close when done. It does no I/O.
func New(pool *pgxpool.Pool, cfg Config) *Writer {
	def := DefaultConfig()
	if cfg.TopicImpressions == "" {
		cfg.TopicImpressions = def.TopicImpressions
	}
	if cfg.TopicWatches == "" {
		cfg.TopicWatches = def.TopicWatches
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = def.MaxEvents
	}
	if cfg.CopyMinEvents <= 0 {
		cfg.CopyMinEvents = def.CopyMinEvents
	}
	if cfg.Workers <= 0 {
		cfg.Workers = def.Workers
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = def.QueueSize
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = def.MaxAttempts
	}
	if cfg.Name == "" {
		cfg.Name = def.Name
	}
	if cfg.OutboxLanes <= 0 {
		cfg.OutboxLanes = def.OutboxLanes
	}
	if cfg.MaxEventBytes <= 0 {
		cfg.MaxEventBytes = def.MaxEventBytes
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	laneKeys := make([]string, cfg.OutboxLanes)
	for i := range laneKeys {
		laneKeys[i] = outbox.LaneKey(i)
	}
	w := &Writer{pool: pool, cfg: cfg, log: log, m: newWriterMetrics(cfg.Metrics, cfg.Name), queue: make(chan *request, cfg.QueueSize), laneKeys: laneKeys}
	w.encoders.New = func() any { return new(copyEncoder) }
	w.builders.New = func() any { return new(pgx.ExtendedQueryBuilder) }
	w.prepared = pool == nil || pool.Config().ConnConfig.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement
	return w
}

// Start launches the workers. It is idempotent.
func (w *Writer) Start() {
	w.started.Do(func() {
		for range w.cfg.Workers {
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				w.work()
			}()
		}
	})
}

// Close stops accepting writes, commits what is queued and waits for the workers.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	w.Start() // a writer closed before it started still drains its queue
	w.wg.Wait()
}

// Write stores evs atomically (all or none) and returns one Result per event, in order.
// correlationID is stored in the events' outbox frames ("" for none). An error means nothing of this
// call was committed, but for one wrapping ErrOutcomeUnknown (with ErrUnavailable): its
// commit was sent and its outcome could not be learnt, so the events may be stored.
// errors.Is(err, ErrUnavailable) tells an outage or timeout from a rejected statement. ctx
// bounds the wait in the queue only: once a worker has taken the request, Write waits for
// its transaction (bounded by Config.Timeout) even past ctx's end, so an error never hides
// a commit.
// Every event is checked with events.Validate first (a *events.ValidationError is returned
// and nothing is written when one fails), and an event whose outbox frame is larger than
// Config.MaxEventBytes fails the call with *EventTooLargeError.
func (w *Writer) Write(ctx context.Context, evs []events.Any, correlationID string) ([]Result, error) {
	return w.write(ctx, evs, correlationID, true)
}

// WriteValidated is Write for events that come unchanged from the request decoders
// (events.DecodeImpression, DecodeWatch, DecodeLegacy, DecodeBatch), which apply every rule of
// events.Validate and more: checking them a second time was about a tenth of the API's CPU
// per batched event. Events built or modified by the caller must go through Write.
func (w *Writer) WriteValidated(ctx context.Context, evs []events.Any, correlationID string) ([]Result, error) {
	return w.write(ctx, evs, correlationID, false)
}

func (w *Writer) write(ctx context.Context, evs []events.Any, correlationID string, validate bool) ([]Result, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	start := time.Now()
	rows := make([]row, len(evs))
	frames := frameBufs.Get().(*[]byte)
	var err error
	if *frames, err = prepare(rows, evs, correlationID, w.cfg.OutboxLanes, w.cfg.MaxEventBytes, validate, (*frames)[:0]); err != nil {
		putFrameBuf(frames)
		return nil, err
	}
	res, finished, err := w.submit(ctx, rows, start)
	if finished {
		// No worker holds the request: its frames were copied into COPY buffers or statement
		// parameters. Otherwise the buffer is left to the collector.
		putFrameBuf(frames)
	}
	return res, err
}

// Prepared is a request's events validated and encoded by Prepare, for WritePrepared.
type Prepared struct{ rows []row }

// Prepare does the part of Write that needs no database (validation, the outbox frames) on
// the caller's goroutine, for Submit or WritePrepared: a caller that retries on a goroutine of
// its own, as /reco's autolog does after a failed commit, spares that fresh goroutine growing
// its stack inside the encoder. The result is only read by the writes, so it can be written
// again after a failure.
func (w *Writer) Prepare(evs []events.Any, correlationID string) (*Prepared, error) {
	rows := make([]row, len(evs))
	if _, err := prepare(rows, evs, correlationID, w.cfg.OutboxLanes, w.cfg.MaxEventBytes, true, nil); err != nil {
		return nil, err
	}
	return &Prepared{rows: rows}, nil
}

// WritePrepared is Write for events Prepare returned.
func (w *Writer) WritePrepared(ctx context.Context, p *Prepared) ([]Result, error) {
	if len(p.rows) == 0 {
		return nil, nil
	}
	res, _, err := w.submit(ctx, p.rows, time.Now())
	return res, err
}

// ErrQueueFull is returned by Submit when the queue has no room (see Config.QueueSize).
var ErrQueueFull = fmt.Errorf("%w: ingest queue full", ErrUnavailable)

// Submit is WritePrepared without the wait: the request is queued and done is called once, on
// a writer goroutine, with what WritePrepared would have returned. A caller that persists in
// the background, as /reco's autolog does per served list, needs no goroutine parked on each
// commit. done must not block: it runs between two group commits. Submit does not wait for
// room either: it returns ErrQueueFull when the queue is full and ErrClosed after Close, and
// done is then never called.
//
// maxWait > 0 bounds the time the request may wait in the queue: a request no worker took
// by then is answered ErrUnavailable with nothing written, as WritePrepared answers when its
// context ends first. Once taken, the commit's outcome comes within Config.Timeout. The
// caller's events carry a receive time from before the queue, and readers that trust it
// (the KPI roll-ups' commit margin) need that time bounded; the caller can write them again
// stamped anew.
func (w *Writer) Submit(p *Prepared, maxWait time.Duration, done func([]Result, error)) error {
	if len(p.rows) == 0 {
		go done(nil, nil) // never on the caller's goroutine, as for any request
		return nil
	}
	start := time.Now()
	req := &request{ctx: context.Background(), rows: p.rows, then: func(res []Result, err error) {
		w.m.writeDuration.UpdateDuration(start)
		done(res, err)
	}}
	if maxWait > 0 {
		req.expires = start.Add(maxWait)
	}
	return w.enqueue(req.ctx, req, false)
}

// submit queues rows as one request and waits for its commit, timed from start. finished
// reports that no worker holds the rows any more (false when ctx ended first).
func (w *Writer) submit(ctx context.Context, rows []row, start time.Time) (res []Result, finished bool, err error) {
	req := &request{ctx: ctx, rows: rows, done: make(chan struct{})}
	if err := w.enqueue(ctx, req, true); err != nil {
		return nil, true, err
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		if req.state.CompareAndSwap(reqQueued, reqAbandoned) {
			return nil, false, fmt.Errorf("wait for commit: %w: %w", ErrUnavailable, ctx.Err())
		}
		// A worker is committing it: its outcome, known within Config.Timeout, is the only
		// true answer. Giving up now would answer 503 for events that may still commit, and
		// a client's retry without event_id would store them twice.
		<-req.done
	}
	w.m.writeDuration.UpdateDuration(start)
	return req.results, true, req.err
}

// enqueue queues req, waiting for room until ctx ends if wait.
func (w *Writer) enqueue(ctx context.Context, req *request, wait bool) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return ErrClosed
	}
	if !wait {
		select {
		case w.queue <- req:
			return nil
		default:
			return ErrQueueFull
		}
	}
	select {
	case w.queue <- req:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("queue write: %w: %w", ErrUnavailable, ctx.Err())
	}
}

// frameEstimate is the initial room per event of a request's frame buffer: a watch's frame
// is ~300 bytes; the buffer grows (amortised) for larger events.
const frameEstimate = 384

// frameBufs holds the frame buffers of finished requests (*[]byte): a 500-event request's
// frames are ~190 KB, the largest allocation of the write path once the request parser
// reused its memory.
var frameBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledFrames is the largest frame buffer kept for reuse.
const maxPooledFrames = 1 << 20

func putFrameBuf(b *[]byte) {
	if cap(*b) <= maxPooledFrames {
		*b = (*b)[:0]
		frameBufs.Put(b)
	}
}

// prepare fills rows from evs. The frames of one request share one buffer (buf, returned
// grown; each row's frame is a full slice of it) and the payload is encoded into one scratch
// buffer reused for every event: two allocations per request instead of two per event, none
// for the frames when buf is reused.
func prepare(rows []row, evs []events.Any, correlationID string, lanes, maxBytes int, validate bool, buf []byte) ([]byte, error) {
	if need := len(evs) * (frameEstimate + len(correlationID)); cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	var payload, ctxBuf []byte
	var ctxRows, ctxEnds []int32 // rows with a context, and the end of each in ctxBuf
	for i, ev := range evs {
		r := &rows[i]
		if validate {
			if err := events.Validate(ev); err != nil {
				return buf, err
			}
		}
		var err error
		if payload, err = events.AppendEncode(payload[:0], ev); err != nil {
			return buf, err
		}
		id, kind, user := ev.ID(), string(ev.Kind()), ev.User()
		at := len(buf)
		buf = outbox.AppendFrame(buf, outbox.Message{EventID: id, EventType: kind, Key: user,
			CorrelationID: correlationID, SchemaVersion: int16(events.SchemaVersion), Payload: payload})
		if n := len(buf) - at; n > maxBytes {
			return buf, tooLarge(ev, i, n, maxBytes)
		}
		r.ev = ev
		// Capped, so a later append to buf can never write into this frame.
		r.frame = buf[at:len(buf):len(buf)]
		r.lane = outbox.Lane(user, lanes)
		var ctx *events.Context
		switch e := ev.(type) {
		case *events.Impression:
			ctx = e.Context
		case *events.Watch:
			ctx = e.Context
		}
		if ctx != nil {
			if ctxBuf, err = events.AppendContext(ctxBuf, ctx); err != nil {
				return buf, err
			}
			ctxRows = append(ctxRows, int32(i))
			ctxEnds = append(ctxEnds, int32(len(ctxBuf)))
		}
	}
	if len(ctxRows) > 0 {
		// One string for the request's contexts and one slice of their views, instead of a
		// buffer and a string per event.
		all := string(ctxBuf)
		views := make([]string, len(ctxRows))
		at := int32(0)
		for j, i := range ctxRows {
			views[j] = all[at:ctxEnds[j]]
			at = ctxEnds[j]
			rows[i].context = &views[j]
		}
	}
	return buf, nil
}

// work gathers requests into groups and commits them until the queue is closed and empty.
func (w *Writer) work() {
	var carry *request
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		first := carry
		carry = nil
		if first == nil {
			var ok bool
			if first, ok = <-w.queue; !ok {
				return
			}
		}
		group := []*request{first}
		n := len(first.rows)
		waiting := false
		if w.cfg.MaxWait > 0 {
			timer.Reset(w.cfg.MaxWait)
			waiting = true
		}
	gather:
		for n < w.cfg.MaxEvents {
			var r *request
			var ok bool
			select {
			case r, ok = <-w.queue:
			default:
				if !waiting {
					break gather
				}
				select {
				case r, ok = <-w.queue:
				case <-timer.C:
					waiting = false
					break gather
				}
			}
			if !ok {
				break gather
			}
			if n+len(r.rows) > w.cfg.MaxEvents {
				carry = r
				break gather
			}
			group = append(group, r)
			n += len(r.rows)
		}
		// Since Go 1.23 a stopped timer never delivers a stale tick, so no drain is needed.
		timer.Stop()
		w.commitGroup(group)
	}
}

// commitGroup commits a group and answers every request in it.
func (w *Writer) commitGroup(group []*request) {
	live := group[:0]
	var now time.Time
	for _, r := range group {
		if !r.expires.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			if now.After(r.expires) {
				// Only Submit sets expires, and no caller waits to abandon such a request.
				r.err = fmt.Errorf("%w: queued past its wait bound (%s)", ErrUnavailable, now.Sub(r.expires))
				w.m.expired.Inc()
				r.answer()
				continue
			}
		}
		if err := r.ctx.Err(); err != nil || !r.state.CompareAndSwap(reqQueued, reqStarted) {
			// The caller gave up before its events were sent: nothing was written.
			r.err = fmt.Errorf("%w: %w", ErrUnavailable, context.Cause(r.ctx))
			r.answer()
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	// One budget for the group, its one-by-one fallback included: a caller whose request was
	// taken waits for its outcome past its own deadline, so that outcome must come within
	// Config.Timeout of the start.
	deadline := time.Now().Add(w.cfg.Timeout)
	err := w.commit(live, deadline)
	if err != nil && len(live) > 1 && requestSpecific(err) {
		w.m.fallbacks.Inc()
		w.log.Warn("group commit failed, retrying requests one by one", "err", err, "requests", len(live))
		for _, r := range live {
			if time.Now().Before(deadline) {
				r.err = w.commit([]*request{r}, deadline)
			} else {
				// The group rolled back: nothing of this request was written.
				r.err = fmt.Errorf("insert events: %w: the group failed (%w) and the write timeout ran out before this request's retry", ErrUnavailable, err)
			}
			r.answer()
		}
		return
	}
	for _, r := range live {
		if err != nil {
			r.err = err
		}
		r.answer()
	}
}

// requestSpecific reports whether err may be caused by the data of one request, so retrying
// requests separately can save the others: a data exception (class 22: a value out of
// range, bad encoding), an integrity violation (23) or a program limit (54: a document too
// deep), as featurestore.Refused takes them. The writer's statements are fixed, so nothing
// else a request sends can make the server refuse them: every other error is about the
// server, the connection, the schema or the transaction's circumstances (a read-only standby
// after a failover, 25006; a serialization failure or deadlock, 40; a lock timeout behind a
// migration, 55P03; a permission revoked or a schema behind this binary during a rollout,
// 42; an error that ended the session, FATAL, one raised while connecting included, 28 and
// 3D; a program limit the server applies to every write, postgres.RefusesEveryWrite) and the
// database is unavailable: retried by the client, buffered by /reco's autolog rather than
// dropped as refused.
func requestSpecific(err error) bool {
	var pe *pgconn.PgError
	var ce *pgconn.ConnectError
	if !errors.As(err, &pe) || len(pe.Code) < 2 || errors.As(err, &ce) || pe.Severity == "FATAL" || pe.Severity == "PANIC" {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23":
		return true
	case "54":
		return !postgres.RefusesEveryWrite(pe)
	}
	return false
}

// commit writes group in one transaction that must end by deadline.
func (w *Writer) commit(group []*request, deadline time.Time) error {
	start := time.Now()
	b := newBatch(w.cfg, w.laneKeys, group)
	// The transaction gets the budget but for the last half grace period, which is left to
	// learn the outcome of a commit that went unanswered (resolve).
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-w.cancelGrace()/2))
	defer cancel()
	var isNew, enqueued []bool
	var err error
	if len(b.dedupIDs) >= w.cfg.CopyMinEvents {
		isNew, err = w.copyGroup(ctx, b)
		enqueued = isNew
		if errors.Is(err, errCopyConflict) {
			// A resend raced the group, or an outbox row outlived its first event's dedup
			// key: the statement's ON CONFLICT clauses resolve both, as for any group.
			w.m.copyConflicts.Inc()
			isNew, enqueued, err = w.exec(ctx, b)
		}
	} else {
		isNew, enqueued, err = w.exec(ctx, b)
	}
	var p *pendingOutcome
	if errors.As(err, &p) {
		// An error here would tell the callers that nothing was stored, which the
		// database alone can tell now.
		isNew, enqueued, err = w.resolve(deadline, b, p)
	}
	if err != nil {
		w.m.commitErrors.Inc()
		if requestSpecific(err) {
			return fmt.Errorf("insert events: %w", err)
		}
		return fmt.Errorf("insert events: %w: %w", ErrUnavailable, err)
	}
	w.m.commitDuration.UpdateDuration(start)
	w.m.groupEvents.Update(float64(len(b.dedupIDs)))
	w.m.groupRequests.Update(float64(len(group)))
	b.resolve(group, isNew, enqueued)
	return nil
}

// dedupKey is an event's idempotency key.
type dedupKey struct{ id, user string }

// batch holds the column arrays of one statement.
type batch struct {
	dedupIDs, dedupUsers, dedupKinds []string
	// Parallel to dedupIDs: the row written for each key (its first occurrence in the group).
	// The per-event outcome is kept by this index, so resolving a group needs no sort and
	// no search.
	rows    []*row
	firstOf map[dedupKey]int32 // key -> index into dedupIDs
	// The dedup index of each raw row (parallel to impEventID, watEventID, legEventID).
	impIdx, watIdx, legIdx []int32

	// One impression_events row per impression event; its items are [impLo, impHi) of the
	// per-item arrays below.
	impEventID, impUser, impSession, impRequest []string
	impCtx                                      []*string
	impTs, impSrv                               []int64
	impLo, impHi                                []int32
	impItemID                                   []string
	impFeed, impSlot                            []*string
	impPos                                      []int64

	watEventID, watUser, watSession, watRequest, watItem []string
	watTime                                              []float64
	watPct, watSpeed                                     []*float64
	watEnded                                             []*bool
	watRebuf                                             []*int64
	watTs, watSrv                                        []int64
	watCtx                                               []*string

	legEventID, legUser, legItem, legType []string
	legTs, legTsMs                        []int64

	// Per event, parallel to dedupIDs (arrival order): its outbox group (1-based index into
	// the g* arrays) and its frame.
	obGroup []int32
	obFrame [][]byte
	// Per outbox group (topic, lane), in order of first appearance.
	gTopic, gType, gKey []string
	slotGroup           []int32 // topic index * lanes + lane -> group (1-based), 0 for none

	maxAttempts int
	idSuffix    string // "@" + the group's creation time in ns, base 36: see batchIDPrefix
}

// batchIDPrefix starts the event_id of a batch row: "batch:" + its first event's id + "/" +
// that event's user + the group's idSuffix. The user keeps two groups whose first events are
// two users' events of one id (on two API pods, in the same nanosecond) apart. The suffix keeps
// the name unique even when the first event is a resend whose dedup key was deleted by
// retention while an old row of that name (a dead one) was kept. A clash would hit the unique
// key, and the other new events of its lane would be stored but never published.
const batchIDPrefix = "batch:"

// batchRowName is the event_id of the batch row whose first event is (id, user); insertSQL
// builds the same string.
func (b *batch) batchRowName(i int) string {
	return batchIDPrefix + b.dedupIDs[i] + "/" + b.dedupUsers[i] + b.idSuffix
}

func newBatch(cfg Config, laneKeys []string, group []*request) *batch {
	n, nw := 0, 0
	for _, r := range group {
		n += len(r.rows)
		for i := range r.rows {
			if _, ok := r.rows[i].ev.(*events.Watch); ok {
				nw++
			}
		}
	}
	b := &batch{firstOf: make(map[dedupKey]int32, n), maxAttempts: cfg.MaxAttempts, idSuffix: "@" + strconv.FormatInt(time.Now().UnixNano(), 36),
		dedupIDs: make([]string, 0, n), dedupUsers: make([]string, 0, n), dedupKinds: make([]string, 0, n), rows: make([]*row, 0, n),
		obGroup: make([]int32, 0, n), obFrame: make([][]byte, 0, n), slotGroup: make([]int32, 2*len(laneKeys))}
	b.growWatches(nw)
	for _, r := range group {
		for i := range r.rows {
			rw := &r.rows[i]
			k := dedupKey{rw.ev.ID(), rw.ev.User()}
			if _, dup := b.firstOf[k]; dup {
				// The group carries one user's event_id twice: only the first is written,
				// the other is a duplicate of it.
				continue
			}
			b.firstOf[k] = int32(len(b.dedupIDs))
			b.add(cfg, laneKeys, rw)
		}
	}
	return b
}

// growWatches sizes the watch columns for n watches up front: growing fourteen columns by
// appends was about a twentieth of the Go CPU of a batch of 500 watches.
func (b *batch) growWatches(n int) {
	b.watEventID, b.watUser, b.watSession = make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	b.watRequest, b.watItem = make([]string, 0, n), make([]string, 0, n)
	b.watIdx = make([]int32, 0, n)
	b.watTime = make([]float64, 0, n)
	b.watPct, b.watSpeed = make([]*float64, 0, n), make([]*float64, 0, n)
	b.watEnded = make([]*bool, 0, n)
	b.watRebuf = make([]*int64, 0, n)
	b.watTs, b.watSrv = make([]int64, 0, n), make([]int64, 0, n)
	b.watCtx = make([]*string, 0, n)
}

func (b *batch) add(cfg Config, laneKeys []string, rw *row) {
	id := rw.ev.ID()
	kind := rw.ev.Kind()
	idx := int32(len(b.dedupIDs))
	b.rows = append(b.rows, rw)
	b.dedupIDs = append(b.dedupIDs, id)
	b.dedupUsers = append(b.dedupUsers, rw.ev.User())
	b.dedupKinds = append(b.dedupKinds, string(kind))
	// Legacy events ride in the watches topic's rows; their frames keep their own type.
	topicIdx, topic, rowType := 1, cfg.TopicWatches, string(events.KindWatch)
	switch e := rw.ev.(type) {
	case *events.Impression:
		topicIdx, topic, rowType = 0, cfg.TopicImpressions, string(events.KindImpression)
		b.impEventID = append(b.impEventID, id)
		b.impIdx = append(b.impIdx, idx)
		b.impUser = append(b.impUser, e.UserID)
		b.impSession = append(b.impSession, e.SessionID)
		b.impRequest = append(b.impRequest, e.RequestID)
		b.impTs = append(b.impTs, e.TsMs)
		b.impSrv = append(b.impSrv, e.ServerReceivedTsMs)
		b.impCtx = append(b.impCtx, rw.context)
		b.impLo = append(b.impLo, int32(len(b.impPos)))
		for _, it := range e.Items {
			b.impPos = append(b.impPos, it.Position)
			b.impItemID = append(b.impItemID, it.ItemID)
			b.impFeed = append(b.impFeed, it.FeedID)
			b.impSlot = append(b.impSlot, it.Slot)
		}
		b.impHi = append(b.impHi, int32(len(b.impPos)))
	case *events.Watch:
		b.watEventID = append(b.watEventID, id)
		b.watIdx = append(b.watIdx, idx)
		b.watUser = append(b.watUser, e.UserID)
		b.watSession = append(b.watSession, e.SessionID)
		b.watRequest = append(b.watRequest, e.RequestID)
		b.watItem = append(b.watItem, e.ItemID)
		b.watTime = append(b.watTime, e.WatchTimeSec)
		b.watPct = append(b.watPct, e.PercentWatched)
		b.watEnded = append(b.watEnded, e.Ended)
		b.watSpeed = append(b.watSpeed, e.PlaybackSpeed)
		b.watRebuf = append(b.watRebuf, e.RebufferCount)
		b.watTs = append(b.watTs, e.TsMs)
		b.watSrv = append(b.watSrv, e.ServerReceivedTsMs)
		b.watCtx = append(b.watCtx, rw.context)
	case *events.Legacy:
		b.legEventID = append(b.legEventID, id)
		b.legIdx = append(b.legIdx, idx)
		b.legUser = append(b.legUser, e.UserID)
		b.legItem = append(b.legItem, e.ItemID)
		b.legType = append(b.legType, e.EventType)
		b.legTs = append(b.legTs, e.Ts)
		b.legTsMs = append(b.legTsMs, e.TimeMs())
	}
	slot := topicIdx*len(laneKeys) + rw.lane
	g := b.slotGroup[slot]
	if g == 0 {
		b.gTopic = append(b.gTopic, topic)
		b.gType = append(b.gType, rowType)
		b.gKey = append(b.gKey, laneKeys[rw.lane])
		g = int32(len(b.gTopic))
		b.slotGroup[slot] = g
	}
	b.obGroup = append(b.obGroup, g)
	b.obFrame = append(b.obFrame, rw.frame)
}

// outboxRow is one batch row of event_outbox; its payload is the concatenation of its
// frames, which the COPY encoder writes straight from the batch (no intermediate copy).
type outboxRow struct {
	eventID, eventType, topic, key string
	frames                         []int // indexes into batch.obFrame, arrival order
	size                           int   // payload bytes
}

// outboxRows returns the group's outbox rows for the events that turned out new: one per
// (topic, lane) with their frames in arrival order, rows in order of their first event.
func (b *batch) outboxRows(isNew []bool) []outboxRow {
	at := make([]int, len(b.gTopic)) // group -> 1-based index into rows
	var rows []outboxRow
	for i := range b.dedupIDs {
		if !isNew[i] {
			continue
		}
		g := b.obGroup[i] - 1
		if at[g] == 0 {
			rows = append(rows, outboxRow{eventID: b.batchRowName(i), eventType: b.gType[g], topic: b.gTopic[g], key: b.gKey[g]})
			at[g] = len(rows)
		}
		r := &rows[at[g]-1]
		r.frames = append(r.frames, i)
		r.size += len(b.obFrame[i])
	}
	return rows
}

// enqueued reports, per dedup index, whether the event is new and its frame is in one of the
// outbox rows the statement wrote (rowIDs: their event_ids). A row could be missing only if
// ON CONFLICT skipped it, which the idSuffix of its name rules out in practice.
func (b *batch) enqueued(isNew []bool, rowIDs []string) []bool {
	out := make([]bool, len(b.dedupIDs))
	if len(rowIDs) == 0 {
		return out
	}
	written := make(map[string]struct{}, len(rowIDs))
	for _, id := range rowIDs {
		written[id] = struct{}{}
	}
	// 0 unknown, 1 written, 2 skipped: decided by the group's first new event.
	state := make([]int8, len(b.gTopic))
	for i := range b.dedupIDs {
		if !isNew[i] {
			continue
		}
		g := b.obGroup[i] - 1
		if state[g] == 0 {
			state[g] = 2
			if _, ok := written[b.batchRowName(i)]; ok {
				state[g] = 1
			}
		}
		out[i] = state[g] == 1
	}
	return out
}

// kinds returns the raw tables the group writes to.
func (b *batch) kinds() kinds {
	var k kinds
	if len(b.impEventID) > 0 {
		k |= hasImpressions
	}
	if len(b.watEventID) > 0 {
		k |= hasWatches
	}
	if len(b.legEventID) > 0 {
		k |= hasLegacy
	}
	return k
}

// notifyPayload is the relay's notification payload for a group writing to k: impressions
// alone may wait for the relay's longer linger (outbox.NotifyImpressionsOnly).
func (k kinds) notifyPayload() string {
	if k == hasImpressions {
		return outbox.NotifyImpressionsOnly
	}
	return ""
}

// args returns the parameters of insertSQL(k), in its numbering order.
func (b *batch) args(k kinds) []any {
	a := make([]any, 0, 40)
	a = append(a, b.dedupIDs, b.dedupUsers, b.dedupKinds)
	if k&hasImpressions != 0 {
		pos, items, feeds, slots := b.impressionLiterals()
		a = append(a, b.impEventID, b.impUser, b.impSession, b.impRequest, b.impTs, b.impSrv, b.impCtx, pos, items, feeds, slots)
	}
	if k&hasWatches != 0 {
		a = append(a, b.watEventID, b.watUser, b.watSession, b.watRequest, b.watItem, b.watTime, b.watPct, b.watEnded, b.watSpeed, b.watRebuf, b.watTs, b.watSrv, b.watCtx)
	}
	if k&hasLegacy != 0 {
		a = append(a, b.legEventID, b.legUser, b.legItem, b.legType, b.legTs, b.legTsMs)
	}
	return append(a, b.obGroup, b.obFrame, b.gTopic, b.gType, b.gKey, int16(events.SchemaVersion), int32(b.maxAttempts), b.idSuffix)
}

// impressionLiterals renders each impression event's item arrays as PostgreSQL array
// literals (array_in syntax) for insertSQL: positions, item ids, and feed ids / slots (nil,
// i.e. a NULL column, when no item of the event has one, as the COPY path writes them).
// Every text element is double-quoted with " and \ backslash-escaped, so any id reads back
// as sent (commas, braces, spaces, "NULL"); nil elements are NULL. All literals share one
// buffer.
func (b *batch) impressionLiterals() (pos, items []string, feeds, slots []*string) {
	n := len(b.impEventID)
	pos, items, feeds, slots = make([]string, n), make([]string, n), make([]*string, n), make([]*string, n)
	type span struct{ from, to int }
	spans := make([]span, 0, 4*n)
	buf := make([]byte, 0, 16*len(b.impPos)+4*n)
	quoted := func(s string) {
		buf = append(buf, '"')
		for i := 0; i < len(s); i++ {
			if c := s[i]; c == '"' || c == '\\' {
				buf = append(buf, '\\')
			}
			buf = append(buf, s[i])
		}
		buf = append(buf, '"')
	}
	optTexts := func(v []*string) {
		from := len(buf)
		present := false
		for _, s := range v {
			present = present || s != nil
		}
		if present {
			buf = append(buf, '{')
			for j, s := range v {
				if j > 0 {
					buf = append(buf, ',')
				}
				if s == nil {
					buf = append(buf, "NULL"...)
				} else {
					quoted(*s)
				}
			}
			buf = append(buf, '}')
		}
		spans = append(spans, span{from, len(buf)})
	}
	for i := range n {
		lo, hi := b.impLo[i], b.impHi[i]
		from := len(buf)
		buf = append(buf, '{')
		for j, p := range b.impPos[lo:hi] {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, p, 10)
		}
		buf = append(buf, '}')
		spans = append(spans, span{from, len(buf)})
		from = len(buf)
		buf = append(buf, '{')
		for j, s := range b.impItemID[lo:hi] {
			if j > 0 {
				buf = append(buf, ',')
			}
			quoted(s)
		}
		buf = append(buf, '}')
		spans = append(spans, span{from, len(buf)})
		optTexts(b.impFeed[lo:hi])
		optTexts(b.impSlot[lo:hi])
	}
	all := string(buf)
	for i := range n {
		sp := spans[4*i : 4*i+4]
		pos[i], items[i] = all[sp[0].from:sp[0].to], all[sp[1].from:sp[1].to]
		for k, dst := range [2][]*string{feeds, slots} {
			if s := sp[2+k]; s.to > s.from {
				v := all[s.from:s.to]
				dst[i] = &v
			}
		}
	}
	return pos, items, feeds, slots
}

// acquire takes a pooled connection within AcquireTimeout (and ctx).
func (w *Writer) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	if w.cfg.AcquireTimeout <= 0 {
		return w.pool.Acquire(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, w.cfg.AcquireTimeout)
	defer cancel()
	conn, err := w.pool.Acquire(actx)
	if err != nil && ctx.Err() == nil && actx.Err() != nil {
		return nil, fmt.Errorf("no pooled connection within --pg.acquire-timeout (%s; %d of --pg.max-conns %d in use): %w",
			w.cfg.AcquireTimeout, w.pool.Stat().AcquiredConns(), w.pool.Stat().MaxConns(), err)
	}
	return conn, err
}

// maxCancelGrace bounds the time a statement cancelled at the write timeout is given to
// answer, and its outcome learnt when it does not (see boundOnServer).
const maxCancelGrace = 250 * time.Millisecond

// cancelGrace is the part of the write timeout left when a running statement is asked to
// stop: a quarter of it, at most maxCancelGrace. Its first half waits for the server's
// answer, the second is resolve's.
func (w *Writer) cancelGrace() time.Duration { return min(maxCancelGrace, w.cfg.Timeout/4) }

// boundOnServer makes the server end conn's statements by ctx's deadline where it can, so
// that a write is answered by the server's own outcome. pgx alone ends a statement whose
// context ends by closing the connection at once and sending the server a cancel request on
// the way out: the caller is answered before the server has stopped, and the statement can
// still commit in between (an implicit transaction commits with its statement, e.g. once a
// dedup key it waits on is released; a COMMIT runs to its end). So half a grace period
// before ctx's deadline (cancelGrace: the write timeout's end is half a grace period after
// ctx's) the server is asked to cancel the running statement, and its own answer, cancelled
// and rolled back or done, is waited for until the deadline. The server ignores a cancel
// request that arrives while it reads a command or commits: a statement or COMMIT still
// unanswered at the deadline is a *pendingOutcome, which resolve settles. No statement may
// start once the cancel time has come: start
// ends then, and callers check it before each statement. end must be called once the
// connection's statements are over, before it is released: a connection that was sent a
// cancel request is closed instead of pooled, since a request arriving late would cancel
// another caller's statement.
func (w *Writer) boundOnServer(ctx context.Context, conn *pgxpool.Conn) (start context.Context, end func()) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return ctx, func() {}
	}
	start, cancelStart := context.WithDeadline(ctx, deadline.Add(-w.cancelGrace()/2))
	sent := make(chan struct{})
	stop := context.AfterFunc(start, func() {
		defer close(sent)
		if ctx.Err() == nil {
			_ = conn.Conn().PgConn().CancelRequest(ctx)
		}
	})
	return start, func() {
		if !stop() {
			<-sent
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Conn().Close(cctx)
			cancel()
		}
		cancelStart()
	}
}

// errNoTimeLeft is returned for a statement not started because the write timeout was too
// close (see boundOnServer).
var errNoTimeLeft = fmt.Errorf("write timeout reached before the statement could start: %w", context.DeadlineExceeded)

// serverCancelled adds to err that the server cancelled the statement at the write timeout
// (a bare "canceling statement due to user request" names no cause).
func serverCancelled(start context.Context, err error) error {
	if err != nil && start.Err() != nil {
		return fmt.Errorf("cancelled at the write timeout: %w", err)
	}
	return err
}

// xactIDSQL is the statement path's first statement: the id of its implicit transaction, by
// which resolve learns the outcome of a write whose answer went unheard (see exec).
const xactIDSQL = `SELECT pg_current_xact_id()::text::int8`

// binaryResult asks for xactIDSQL's int8 in binary.
var binaryResult = []int16{pgx.BinaryFormatCode}

// exec writes the group with its single statement. It returns, per dedup index, whether the
// event was new and whether its frame was enqueued.
//
// The statement goes in one pipeline after xactIDSQL, with a Flush between them and one Sync
// after both: they run in one implicit transaction, which commits at the Sync, so the id is
// the write's; and the server sends the id before it runs the write, whose answer (but for
// one that overflows the server's send buffer) leaves with the commit's. A write whose answer goes unheard (the write timeout, a lost
// connection) is then found by its transaction id, as the COPY path's are, behind a pooler
// too: PgBouncer hands out process ids of its own, and in transaction pooling keeps one
// server connection until the Sync's ReadyForQuery, so both statements meet one session.
// It costs no round trip: both statements leave in one write. A group whose events are all
// stored takes an id it would not have taken, and so writes a commit record; PostgreSQL
// commits a transaction that wrote no other WAL without waiting for a flush (one whose reads
// wrote some, a page's pruning or, with data checksums, a hint bit's full-page image, waits).
func (w *Writer) exec(ctx context.Context, b *batch) (isNew, enqueued []bool, err error) {
	k := b.kinds()
	var xid, notified int64
	var inserted, insertedUsers, rowIDs []string
	conn, err := w.acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Release()
	start, end := w.boundOnServer(ctx, conn)
	defer end()
	if start.Err() != nil {
		return nil, nil, errNoTimeLeft
	}
	c := conn.Conn()
	sql := insertSQL(k)
	// Without prepared statements (default_query_exec_mode other than cache_statement, as an
	// old pooler needs), both are sent unnamed, parsed with each use, as pgx would.
	var idStmt, insStmt *pgconn.StatementDescription
	if w.prepared {
		// Once per connection and statement: later calls find it in the connection's map.
		if idStmt, err = c.Prepare(ctx, xactIDSQL, xactIDSQL); err == nil {
			insStmt, err = c.Prepare(ctx, sql, sql)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("prepare: %w", serverCancelled(start, err))
		}
		if start.Err() != nil {
			return nil, nil, errNoTimeLeft
		}
	}
	eqb := w.builders.Get().(*pgx.ExtendedQueryBuilder)
	defer w.builders.Put(eqb)
	if err := eqb.Build(c.TypeMap(), insStmt, postgres.PresizeArgs(c, b.args(k))); err != nil {
		return nil, nil, fmt.Errorf("encode the statement's parameters: %w", err)
	}
	pl := c.PgConn().StartPipeline(ctx)
	if idStmt != nil {
		pl.SendQueryStatement(idStmt, nil, nil, binaryResult)
	} else {
		pl.SendQueryParams(xactIDSQL, nil, nil, nil, nil)
	}
	pl.SendFlushRequest()
	if insStmt != nil {
		pl.SendQueryStatement(insStmt, eqb.ParamValues, eqb.ParamFormats, eqb.ResultFormats)
	} else {
		pl.SendQueryParams(sql, eqb.ParamValues, nil, eqb.ParamFormats, eqb.ResultFormats)
	}
	pl.SendPipelineSync()
	err = pl.Flush()
	if err == nil {
		err = scanResult(pl, c.TypeMap(), &xid)
	}
	if err == nil {
		err = scanResult(pl, c.TypeMap(), &inserted, &insertedUsers, &rowIDs, &notified)
	}
	if err == nil {
		// The Sync's ReadyForQuery: the transaction committed (a large answer may leave the
		// server before its commit, which can still fail).
		_, err = pl.GetResults()
	}
	if cerr := pl.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var pe *pgconn.PgError
		if idStmt != nil && errors.As(err, &pe) && (pe.Code == "26000" || pe.Code == "0A000") {
			// The server no longer has a statement prepared on this connection (a DISCARD ALL
			// or DEALLOCATE), or would return other types (a schema change): pgx's own cache
			// drops such a statement, but Prepare keeps it. A new connection prepares anew.
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.Close(cctx)
			cancel()
		}
		return nil, nil, pending(serverCancelled(start, err), c.PgConn(), xid)
	}
	if len(insertedUsers) != len(inserted) {
		return nil, nil, fmt.Errorf("statement returned %d event_ids and %d users", len(inserted), len(insertedUsers))
	}
	isNew = make([]bool, len(b.dedupIDs))
	for j, id := range inserted {
		i, ok := b.firstOf[dedupKey{id, insertedUsers[j]}]
		if !ok {
			return nil, nil, fmt.Errorf("statement returned event_id %q of user %q, not in the group", id, insertedUsers[j])
		}
		isNew[i] = true
	}
	return isNew, b.enqueued(isNew, rowIDs), nil
}

// scanResult reads the next result of pl, one row, into dst, as pgx's QueryRow scans it.
func scanResult(pl *pgconn.Pipeline, m *pgtype.Map, dst ...any) error {
	res, err := pl.GetResults()
	if err != nil {
		return err
	}
	rr, ok := res.(*pgconn.ResultReader)
	if !ok {
		return fmt.Errorf("pipeline: got %T, want a statement's rows", res)
	}
	rows := pgx.RowsFromResultReader(m, rr)
	if !rows.Next() {
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	_ = rows.Scan(dst...) // an error is kept in rows.Err
	rows.Close()
	return rows.Err()
}

// resolve turns the per-event outcomes (by dedup index) into per-request results. It walks
// the requests in newBatch's order, so the n-th first occurrence is dedup index n.
func (b *batch) resolve(group []*request, isNew, enqueued []bool) {
	next := 0
	for _, r := range group {
		r.results = make([]Result, len(r.rows))
		for i := range r.rows {
			rw := &r.rows[i]
			res := Result{Status: StatusDuplicate}
			if next < len(b.rows) && b.rows[next] == rw {
				if isNew[next] {
					res.Status = StatusOK
					res.Rows = 1
					if imp, isImp := rw.ev.(*events.Impression); isImp {
						res.Rows = len(imp.Items)
					}
					res.OutboxEnqueued = enqueued[next]
				}
				next++
			}
			r.results[i] = res
		}
	}
}

// insertSQL returns the statement that writes a group with the given kinds in one round
// trip. Every CTE sees the same snapshot; raw and outbox rows are inserted only for the keys
// (event_id, user_id) the dedup insert returned (the new ones). The dedup rows are inserted in
// key order so concurrent groups lock index entries in the same order and cannot deadlock.
// The outbox rows are built from the new keys: one per (topic, lane) group, frames concatenated in
// arrival order (WITH ORDINALITY), rows inserted in order of their first event.
//
// A group only names the raw tables it writes to: each table in a statement is opened and
// locked with all its indexes even when it gets no row, and a /log/watch group (watches
// only) then stays within PostgreSQL's 16 fast-path relation locks per transaction.
func insertSQL(k kinds) string {
	if q := insertSQLs[k]; q != "" {
		return q
	}
	panic(fmt.Sprintf("ingest: no statement for kinds %d", k))
}

// kinds is the set of raw tables a group writes to.
type kinds uint8

const (
	hasImpressions kinds = 1 << iota
	hasWatches
	hasLegacy
	allKinds = hasImpressions | hasWatches | hasLegacy
)

var insertSQLs = func() (out [allKinds + 1]string) {
	for k := range allKinds + 1 {
		out[k] = buildInsertSQL(k)
	}
	return out
}()

// buildInsertSQL numbers the parameters in the order batch.args appends them.
func buildInsertSQL(k kinds) string {
	n := 0
	p := func(typ string) string {
		n++
		return fmt.Sprintf("$%d::%s", n, typ)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `
WITH d AS (
	INSERT INTO event_dedup (event_id, user_id, event_type)
	SELECT u.id, u.usr, u.kind FROM unnest(%s, %s, %s) AS u(id, usr, kind)
	ORDER BY u.id COLLATE "C", u.usr COLLATE "C" -- bytewise, as the COPY path sorts (strings.Compare) and the key compares
	ON CONFLICT (event_id, user_id) DO NOTHING
	RETURNING event_id, user_id
)`, p("text[]"), p("text[]"), p("text[]"))
	if k&hasImpressions != 0 {
		// One row per event; its item arrays arrive as array literals, one per event
		// (impressionLiterals), since unnest cannot return an array per row. Slicing flat
		// per-item arrays instead cost ~60 µs per event at 255 events (each slice walks the
		// array from its start); the casts cost ~4 µs per 20-item event.
		fmt.Fprintf(&b, `, imp AS (
	INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, context, positions, item_ids, feed_ids, slots)
	SELECT u.event_id, u.user_id, u.session_id, u.request_id, u.ts_ms, to_timestamp(u.ts_ms / 1000.0), u.srv, u.ctx::jsonb,
	       u.positions::int8[], u.items::text[], u.feeds::text[], u.slots::text[]
	FROM unnest(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
	     AS u(event_id, user_id, session_id, request_id, ts_ms, srv, ctx, positions, items, feeds, slots)
	WHERE (u.event_id, u.user_id) IN (SELECT event_id, user_id FROM d)
)`, p("text[]"), p("text[]"), p("text[]"), p("text[]"), p("int8[]"), p("int8[]"), p("text[]"), p("text[]"), p("text[]"), p("text[]"), p("text[]"))
	}
	if k&hasWatches != 0 {
		fmt.Fprintf(&b, `, wat AS (
	INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, percent_watched, ended, playback_speed, rebuffer_count, ts_ms, ts, server_received_ts_ms, context)
	SELECT u.event_id, u.user_id, u.session_id, u.request_id, u.item_id, u.wt, u.pct, u.ended, u.speed, u.rebuf, u.ts_ms,
	       to_timestamp(u.ts_ms / 1000.0), u.srv, u.ctx::jsonb
	FROM unnest(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
	     AS u(event_id, user_id, session_id, request_id, item_id, wt, pct, ended, speed, rebuf, ts_ms, srv, ctx)
	WHERE (u.event_id, u.user_id) IN (SELECT event_id, user_id FROM d)
)`, p("text[]"), p("text[]"), p("text[]"), p("text[]"), p("text[]"), p("float8[]"), p("float8[]"), p("bool[]"), p("float8[]"), p("int8[]"), p("int8[]"), p("int8[]"), p("text[]"))
	}
	if k&hasLegacy != 0 {
		fmt.Fprintf(&b, `, leg AS (
	INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms)
	SELECT u.event_id, u.user_id, u.item_id, u.event_type, u.ts, u.ts_ms
	FROM unnest(%s, %s, %s, %s, %s, %s)
	     AS u(event_id, user_id, item_id, event_type, ts, ts_ms)
	WHERE (u.event_id, u.user_id) IN (SELECT event_id, user_id FROM d)
)`, p("text[]"), p("text[]"), p("text[]"), p("text[]"), p("int8[]"), p("int8[]"))
	}
	fmt.Fprintf(&b, `, ob AS (
	INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, schema_version, max_attempts, payload_format, event_count)
	SELECT '`+batchIDPrefix+`' || (array_agg(u.event_id || '/' || u.user_id ORDER BY u.ord))[1] || %[9]s, (%[4]s)[u.grp], (%[3]s)[u.grp], (%[5]s)[u.grp],
	       string_agg(u.frame, ''::bytea ORDER BY u.ord), %[6]s, %[7]s, %[8]d, count(*)
	FROM unnest($1::text[], $2::text[], %[1]s, %[2]s) WITH ORDINALITY AS u(event_id, user_id, grp, frame, ord)
	WHERE (u.event_id, u.user_id) IN (SELECT event_id, user_id FROM d)
	GROUP BY u.grp
	ORDER BY min(u.ord)
	ON CONFLICT (event_id, event_type, msg_key) DO NOTHING
	RETURNING event_id
), n AS (
	SELECT pg_notify('`+NotifyChannel+`', '`+k.notifyPayload()+`') FROM (SELECT 1 FROM ob LIMIT 1) AS x
)
SELECT x.ids, x.users, ARRAY(SELECT event_id FROM ob), (SELECT count(*) FROM n)
FROM (SELECT COALESCE(array_agg(event_id), '{}') AS ids, COALESCE(array_agg(user_id), '{}') AS users FROM d) AS x`,
		p("int4[]"), p("bytea[]"), p("text[]"), p("text[]"), p("text[]"), p("int2"), p("int4"), outbox.FormatBatch, p("text"))
	return b.String()
}
