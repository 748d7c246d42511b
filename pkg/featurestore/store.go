// Package featurestore persists the feature Deltas of pkg/features and loads ranking
// Snapshots.
//
// PostgreSQL is the durable truth (migrations 0004_features, 0007_feature_write_path and
// 0009_feature_neighbour_lists): per-user state, per-item statistics with forward-decayed
// popularity, co-visitation as one list per item (feature_neighbours: a blob merged in Go
// and rewritten once per batch that touches it, pruned to the top M), the decay landmarks
// (feature_meta), the dedup record of applied events (event_id, user_id) and the DLQ. A batch of
// events is applied in ONE transaction that records the events it applies, so a redelivery,
// a rebalance or a crash before the Kafka commit changes nothing (exactly-once effects).
//
// Redis is the serving copy, written after the commit with ABSOLUTE values returned by the
// commit (UPSERT ... RETURNING). Every Redis value only moves one way between rebuilds —
// counters and forward-decayed sums grow (max merge, ZADD GT), first-seen times shrink
// (ZADD LT), user hashes and neighbour lists carry a version (a change applies only onto the
// version before it; a copy found behind is sent whole) — so writes may land in any order and
// rewriting is idempotent; a lost write is repaired by rewriting from PostgreSQL:
//   - each batch journals the users and items it changed (feature_redis_pending) in its
//     transaction; the journal row is deleted once Redis has the values, and rows left behind
//     (Redis down, crash after commit) are rewritten by HealPending;
//   - P+"ready" marks a complete copy; when it is missing (Redis restarted empty, flushed, or
//     after a rebase), or names another Redis process (restarted or failed over: it may have
//     lost acknowledged writes, see RedisReady), Repopulate rebuilds the copy from a
//     PostgreSQL snapshot while writes go on.
//
// With a user TTL (SetUserTTL, --redis.user-ttl) user hashes expire after that long without a
// write, and every write records the writer's TTL in meta ("ut", RecordedUserTTL) when it is
// longer than the one recorded (a new copy starts from its own writer's); while it is set,
// readers that find a user absent in a complete copy put them back from PostgreSQL
// (ReadThroughUser) under the same version merge.
//
// Writes carry the generation of feature_meta: a decay rebase (landmark move, every ~125 days
// with a 6 h half-life) or a forced rebuild bumps it, Redis refuses writes of an older
// generation, and Repopulate replaces the copy. A copy repopulated before any event (a fresh
// database: generation "0", no landmarks) is taken over by the first write of a generation.
//
// Items nobody touched for --consumer.item-retention and users without an event for
// --consumer.user-retention are deleted from both stores (TrimItems, TrimUsers, trim.go);
// everything else only grows.
//
// Limits, on purpose:
//   - the scripts touch keys they compute (neighbour lists, item hashes): standalone Redis
//     (or one shard), not Redis Cluster;
//   - impressions and watches travel on two topics, so their relative order for one user is
//     arrival order; a rebuild from events applies event-time order.
//
// Redis keys (P = key prefix):
//
//	P+"u:"+user   HASH  h (JSON history), w (JSON {item: ts_ms}), i (JSON {item: {count,last_ts_ms}} or [item,count,last_ts_ms,...], see ImpressionsFormat), r (their overlay, see overlay.go), v (version)
//	P+"i:"+item   HASH  imp, wat, sp, pn, end, wt, fs (first seen ms), ps, pl (stored popularity)
//	P+"pop:s"     ZSET  item -> stored short popularity, top TopListSize
//	P+"pop:l"     ZSET  item -> stored long popularity, top TopListSize
//	P+"nb:"+item  ZSET  neighbour -> stored co-visitation strength (up to 2M)
//	P+"fresh"     ZSET  item -> first seen ms, newest FreshSize
//	P+"meta"      HASH  lm:s lm:l lm:c (landmarks ms), hl:s hl:l hl:c (half-lives ms), ep (generation)
//	P+"ready"     STRING "1" once a population has completed
//	P+"run_id"    STRING the run_id of the Redis process the population completed on (absent: INFO refused, or an earlier release)
//	P+"repopulating" STRING a random token: the lock of the repopulation running (see Repopulate)
//	P+"ratelimit:"+key+":"+rate STRING pkg/httpx's shared rate count of an API key (not a feature: a repopulation keeps it)
package featurestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/postgres"
)

// Store applies events to PostgreSQL and mirrors the result into Redis.
type Store struct {
	pg    *pgxpool.Pool
	rd    rueidis.Client // nil: PostgreSQL only
	cfg   features.Config
	keys  Keys
	log   *slog.Logger
	chunk int // keys per Redis script call
	// userChunk bounds the documents one user UPDATE carries, in bytes (see applyOnce).
	userChunk int
	hooks     Hooks
	// userTTL is the expiry each user hash written to Redis gets (0: none, and a previous one
	// is removed); see ReadThroughUser.
	userTTL time.Duration
	imps    ImpressionsFormat // how impression counters are written
	overlay bool              // impression raises go to the overlay (overlay.go)
	// brin retries the BRIN ranges of feature_applied PurgeApplied could not desummarize.
	brin postgres.BRINDesummarizer

	mu      sync.Mutex
	written []int64 // journal rows whose Redis writes completed, deleted by the next batch
	// own are this store's journal rows whose Redis write is in flight or done (awaiting the
	// deletion above), with when they were committed: HealPending leaves them alone instead of
	// rewriting, on a loaded machine, every batch whose deletion is a few batches behind.
	own map[int64]time.Time
	// trimAfter is, by table, the last id the previous trim pass examined (none, "": start
	// over).
	trimAfter map[string]string
	// listsOwed are the global lists (pop:s, pop:l, fresh) item trims took members from
	// without refilling them (refillInline); refillInlineRows is that threshold (a field:
	// tests lower it).
	listsOwed        [3]bool
	refillInlineRows float64
	trimHooks        trimHooks
	// writing lets tests hold a Redis write after its values were read (the users it writes),
	// before it is sent.
	writing func(users []string)
}

// trimHooks let tests act at the steps of TrimItems and TrimUsers: scanned with the
// candidates found (nothing locked yet), locked with the rows deleted and still locked
// (before the commit), trimmed after the commit, deleted once resync deleted the keys (before
// it reads PostgreSQL).
type trimHooks struct {
	scanned, locked, trimmed, deleted func(ids []string)
}

// ownTTL bounds how long HealPending trusts an in-flight write of this store: past it the
// row is healed like any other (a write that never completes must not be left behind).
const ownTTL = time.Minute

func (s *Store) addOwn(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.own == nil {
		s.own = map[int64]time.Time{}
	}
	s.own[id] = time.Now()
}

func (s *Store) dropOwn(ids ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.own, id)
	}
}

// ownIDs lists the journal rows HealPending must skip.
func (s *Store) ownIDs() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int64, 0, len(s.own))
	for id, t := range s.own {
		if time.Since(t) < ownTTL {
			out = append(out, id)
		} else {
			delete(s.own, id) // never written by this store (e.g. no WriteRedis call): heal it
		}
	}
	return out
}

// takeWritten hands the journal rows to delete to one transaction; putWritten gives them back
// when it rolled back.
func (s *Store) takeWritten() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.written
	s.written = nil
	return w
}

func (s *Store) putWritten(ids []int64) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	s.written = append(s.written, ids...)
	s.mu.Unlock()
}

// Hooks observe the store (metrics); every field is optional.
type Hooks struct {
	// RedisWriteFailed is called when a batch's Redis write failed (the journal keeps it).
	RedisWriteFailed func(err error)
	// Phase reports the duration of each phase of an Apply transaction: lock (dedup record
	// and user rows), compute (features.Apply and sums), write (lock the co-visitation
	// lists; users, DLQ, journal), merge (co-visitation increments into the lists, in Go),
	// items (lists and item statistics), commit.
	Phase func(phase string, d time.Duration)
	// Resent is called when a Redis write found copies behind the version before its changes
	// (a write missed, expired, or not landed yet) and sent them whole, with how many users'
	// hashes and neighbour lists that took.
	Resent func(users, lists int)
}

func (s *Store) phase(name string, t0 *time.Time) {
	if s.hooks.Phase != nil {
		now := time.Now()
		s.hooks.Phase(name, now.Sub(*t0))
		*t0 = now
	}
}

// New returns a store. rd may be nil (no Redis mirror, e.g. a rebuild of PostgreSQL only).
func New(pg *pgxpool.Pool, rd rueidis.Client, keyPrefix string, cfg features.Config, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{pg: pg, rd: rd, cfg: cfg, keys: NewKeys(keyPrefix), log: log, chunk: 100, userChunk: 1 << 20, imps: ImpressionsObject,
		refillInlineRows: refillInlineRows}
}

// SetUserTTL makes every user hash written to Redis expire after d without a new write
// (--redis.user-ttl; 0 keeps them). Call before use.
func (s *Store) SetUserTTL(d time.Duration) { s.userTTL = d }

// SetImpressionsFormat sets how the users' impression counters are written (the object form
// by default); every reader takes both. Call before use.
func (s *Store) SetImpressionsFormat(f ImpressionsFormat) { s.imps = f }

// SetImpressionsOverlay sets whether impression raises are written to the counters' overlay
// (overlay.go) instead of into their base document. Off, the batches fold any overlay they
// find into the base. Every reader of this release takes both.
func (s *Store) SetImpressionsOverlay(on bool) { s.overlay = on }

// SetHooks installs observation hooks; call before use.
func (s *Store) SetHooks(h Hooks) { s.hooks = h }

// Config returns the feature configuration.
func (s *Store) Config() features.Config { return s.cfg }

// Keys names the Redis keys under one prefix.
type Keys struct {
	Prefix                                string
	Meta, Ready, PopShort, PopLong, Fresh string
	RunID, Lock                           string
	// Erased is the erasure marker: a hash of the user keys `users forget` erased, each with
	// the version of the deleted row (see writeScript). Not one of the copy's data keys
	// (ownsKey): a new generation's deletion keeps it. Bounded by the erased users (~85 bytes
	// each), not by time: nothing bounds how late a write read before an erasure lands, so an
	// entry never expires (forgotten_users keeps the ids for good too).
	Erased string
	// Blocked is the API processes' copy of the blocked items (modules/reco), read by a
	// process that starts while PostgreSQL is unreachable.
	Blocked string
}

// NewKeys returns the key names for prefix.
func NewKeys(prefix string) Keys {
	return Keys{Prefix: prefix, Meta: prefix + "meta", Ready: prefix + "ready", PopShort: prefix + "pop:s",
		PopLong: prefix + "pop:l", Fresh: prefix + "fresh", RunID: prefix + "run_id", Lock: prefix + "repopulating",
		Blocked: prefix + "blocked", Erased: prefix + "erased"}
}

// User is the hash of a user.
func (k Keys) User(id string) string { return k.Prefix + "u:" + id }

// Item is the hash of an item.
func (k Keys) Item(id string) string { return k.Prefix + "i:" + id }

// Neighbours is the co-visitation ZSET of an item.
func (k Keys) Neighbours(id string) string { return k.Prefix + "nb:" + id }

// Meta is the decay state the stored values are relative to.
type Meta struct {
	Generation         int64
	Short, Long, Covis features.Decay
}

// Epoch is the generation as written to Redis.
func (m Meta) Epoch() string { return strconv.FormatInt(m.Generation, 10) }

// errNoMeta means no event was ever applied (feature_meta is empty).
var errNoMeta = errors.New("feature meta not initialised")

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const metaSelect = `SELECT generation, lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms FROM feature_meta`

func scanMeta(row pgx.Row) (Meta, error) {
	var m Meta
	err := row.Scan(&m.Generation, &m.Short.LandmarkMs, &m.Long.LandmarkMs, &m.Covis.LandmarkMs,
		&m.Short.HalfLifeMs, &m.Long.HalfLifeMs, &m.Covis.HalfLifeMs)
	if errors.Is(err, pgx.ErrNoRows) {
		return Meta{}, errNoMeta
	}
	if err != nil {
		return Meta{}, fmt.Errorf("read feature meta: %w", err)
	}
	return m, nil
}

func loadMeta(ctx context.Context, q querier) (Meta, error) {
	return scanMeta(q.QueryRow(ctx, metaSelect))
}

// metaLockKey is the advisory lock batches hold shared and rebases / forced rebuilds hold
// exclusively, so a landmark never moves under a batch that computed values against it.
const metaLockKey = 7_254_391_001
