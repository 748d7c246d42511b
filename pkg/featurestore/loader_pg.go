package featurestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// PGLoader builds ranking Snapshots from PostgreSQL, the durable truth: the degraded path
// while Redis is down or being repopulated. It needs three round trips (user, then neighbours
// of the history, then item stats); the global lists come from a copy shared by every request
// of the process (globalLists).
type PGLoader struct {
	pg    *pgxpool.Pool
	cfg   features.Config
	lists globalLists
	// closing ends the reads of the global lists, which outlive the requests that started
	// them: see Close.
	closing  context.Context
	endReads context.CancelFunc
}

// DefaultGlobalListsTTL is how long a PGLoader serves the global lists it read before reading
// them again. No index serves them (migration 0007: the indexes made every item update
// non-HOT), so each read is three scans of feature_items, about 150 ns a row each (seconds on
// a catalog of 10 M items): read per request, they would turn a Redis outage into a PostgreSQL
// overload. Per process and interval they cost one scan set, whatever the request rate.
const DefaultGlobalListsTTL = 5 * time.Second

// globalListsTimeout bounds one read of the global lists. It runs apart from the request that
// started it, which waits at most its own deadline: a catalog whose scans outlast a request's
// budget still gets its lists, which the following requests use.
const globalListsTimeout = 15 * time.Second

// globalListsStatementTimeout gives the read's transaction globalListsTimeout as its
// statement_timeout.
var globalListsStatementTimeout = fmt.Sprintf("SET LOCAL statement_timeout = %d", globalListsTimeout.Milliseconds())

// globalListsRetry is how long after a failed read of the global lists no other starts: with
// PostgreSQL overloaded or the read timing out, back to back retries would keep it scanning.
const globalListsRetry = time.Second

// NewPGLoader returns a loader; keyPrefix is unused (the signature matches NewRedisLoader).
func NewPGLoader(pg *pgxpool.Pool, keyPrefix string, cfg features.Config) *PGLoader {
	_ = keyPrefix
	closing, endReads := context.WithCancel(context.Background())
	return &PGLoader{pg: pg, cfg: cfg, lists: globalLists{ttl: DefaultGlobalListsTTL}, closing: closing, endReads: endReads}
}

// Close cancels a read of the global lists in flight and waits for it to end; reads started
// after fail at once. The read holds a pool connection for up to globalListsTimeout, and the
// pool's Close waits for every connection: without this a shutdown during a Redis outage would
// wait for the scans of a large catalog (or past --shutdown.timeout, which then fails).
func (l *PGLoader) Close() {
	l.endReads()
	g := &l.lists
	g.mu.Lock()
	r := g.inflight
	g.mu.Unlock()
	if r != nil {
		<-r.done
	}
}

// ErrListsPending means PostgreSQL answered a Snapshot's own reads but the shared read of the
// global lists it needs was still running at its deadline (a large catalog: see
// DefaultGlobalListsTTL). Not a failure of PostgreSQL: the read goes on and serves the
// requests that follow.
var ErrListsPending = errors.New("global lists still being read")

// SetGlobalListsTTL sets how long the global lists read are shared (DefaultGlobalListsTTL);
// 0 reads them with every Snapshot, in its transaction. Call before use.
func (l *PGLoader) SetGlobalListsTTL(d time.Duration) { l.lists.ttl = d }

// errListsMoved means the global lists at hand are relative to other landmarks than the
// request's transaction saw (the store rebased in between): the request starts over.
var errListsMoved = errors.New("global lists read relative to other landmarks")

// Snapshot loads userID's ranking input at nowMs from PostgreSQL.
func (l *PGLoader) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	// Each round that finds no lists relative to its transaction's landmarks ends the
	// transaction (waiting in it would hold a connection the read of the lists may need) and
	// starts over once they are read. More than a few only if the store rebases again and
	// again meanwhile: the last round reads the lists in its own transaction.
	for range 3 {
		snap, wait, err := l.snapshot(ctx, userID, nowMs, opts, false)
		if wait == nil {
			if !errors.Is(err, errListsMoved) {
				return snap, err
			}
			continue
		}
		select {
		case <-wait.done:
		case <-ctx.Done():
			return ranking.Snapshot{}, fmt.Errorf("wait for the global lists: %w: %w", ErrListsPending, ctx.Err())
		}
		if wait.err != nil {
			return ranking.Snapshot{}, wait.err
		}
	}
	snap, _, err := l.snapshot(ctx, userID, nowMs, opts, true)
	return snap, err
}

// snapshot is one round of Snapshot: when the global lists it needs are being read, it
// returns that read to wait for.
func (l *PGLoader) snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions, inline bool) (ranking.Snapshot, *listsRead, error) {
	tx, err := l.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return ranking.Snapshot{}, nil, fmt.Errorf("load snapshot from postgres: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	pb := &pgx.Batch{}
	pb.Queue(metaSelect)
	pb.Queue(`SELECT history, watched, impressions, impressions_recent FROM feature_users WHERE user_id = $1`, userID)
	br := tx.SendBatch(ctx, pb)
	m, err := scanMeta(br.QueryRow())
	if err != nil {
		br.Close()
		if errors.Is(err, errNoMeta) {
			// Nothing applied yet: an empty snapshot is the truth.
			return emptySnapshot(userID, nowMs, opts), nil, nil
		}
		return ranking.Snapshot{}, nil, err
	}
	b := newBuilder(userID, nowMs, opts, decays{short: m.Short, long: m.Long, covis: m.Covis})
	var f UserFields
	switch err := br.QueryRow().Scan(&f[0], &f[1], &f[2], &f[3]); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		br.Close()
		return ranking.Snapshot{}, nil, fmt.Errorf("load user: %w", err)
	default:
		if err := b.user(f); err != nil {
			br.Close()
			return ranking.Snapshot{}, nil, fmt.Errorf("%w: user %q: %w", ErrUserUndecodable, userID, err)
		}
	}
	if err := br.Close(); err != nil {
		return ranking.Snapshot{}, nil, fmt.Errorf("load snapshot from postgres: %w", err)
	}
	var lists [3][]stored
	switch n := [3]int{opts.TrendingN, opts.PopularN, opts.FreshN}; {
	case n == [3]int{}:
	case inline || l.lists.ttl <= 0:
		if lists, err = readLists(ctx, tx, n); err != nil {
			return ranking.Snapshot{}, nil, err
		}
	default:
		// The user's documents and the lists must be relative to the same landmarks: the lists
		// shared are the ones read with the meta this transaction sees.
		var wait *listsRead
		if lists, wait, err = l.globalLists(ctx, m, n); wait != nil || err != nil {
			return ranking.Snapshot{}, wait, err
		}
	}

	var hist []string
	for i, e := range b.s.History {
		if i >= opts.HistoryItems {
			break
		}
		hist = append(hist, e.ItemID)
	}
	nbs := map[string][]stored{}
	if len(hist) > 0 && opts.NeighboursPerItem > 0 {
		rows, _ := tx.Query(ctx, `SELECT item_id, neighbours FROM feature_neighbours WHERE item_id = ANY($1)`, hist)
		var it string
		var blob []byte
		var l []scoredRow
		_, err := pgx.ForEachRow(rows, []any{&it, &blob}, func() error {
			var err error
			if l, err = decodeNeighbours(l[:0], blob); err != nil {
				return fmt.Errorf("item %q: %w", it, err)
			}
			for _, x := range l[:min(len(l), opts.NeighboursPerItem)] {
				nbs[it] = append(nbs[it], stored{id: x.id, v: x.w})
			}
			return nil
		})
		if err != nil {
			return ranking.Snapshot{}, nil, fmt.Errorf("load neighbours: %w", err)
		}
	}
	// Stats of every candidate.
	set := map[string]bool{}
	for _, l := range nbs {
		for _, x := range l {
			set[x.id] = true
		}
	}
	for _, l := range lists {
		for _, x := range l {
			set[x.id] = true
		}
	}
	if len(set) > 0 {
		rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1)`, sortedKeys(set))
		items, err := scanItems(rows)
		if err != nil {
			return ranking.Snapshot{}, nil, err
		}
		for _, r := range items {
			b.stats[r.id] = itemStats{s: ranking.ItemStats{Impressions: r.imp, Watches: r.wat, SumPercent: r.sp, PercentCount: r.pn,
				Ended: r.ended, WatchTimeSec: r.wt, FirstSeenMs: r.fs}, ps: r.ps, pl: r.pl}
		}
	}
	for _, id := range hist {
		b.neighbours(id, nbs[id])
	}
	b.lists(lists[0], lists[1], lists[2])
	return b.snapshot(), nil, nil
}

func emptySnapshot(userID string, nowMs int64, opts ranking.SnapshotOptions) ranking.Snapshot {
	b := newBuilder(userID, nowMs, opts, decays{})
	b.lists(nil, nil, nil)
	b.s.Stored = false // no decayed value, so none relative to a landmark
	return b.snapshot()
}

// readLists reads the trending, popular and fresh lists, n[i] long, in tx.
func readLists(ctx context.Context, tx pgx.Tx, n [3]int) ([3][]stored, error) {
	var lists [3][]stored
	pb := &pgx.Batch{}
	// No index serves them (migration 0007: they made every item update non-HOT), so each is
	// a scan with a bounded top-N sort: see DefaultGlobalListsTTL. One pass computing the
	// three would still sort three ways; the scans share the buffers they read.
	pb.Queue(`SELECT item_id, pop_short FROM feature_items WHERE pop_short > 0 ORDER BY pop_short DESC, item_id LIMIT $1`, n[0])
	pb.Queue(`SELECT item_id, pop_long FROM feature_items WHERE pop_long > 0 ORDER BY pop_long DESC, item_id LIMIT $1`, n[1])
	pb.Queue(`SELECT item_id, first_seen_ms::float8 FROM feature_items ORDER BY first_seen_ms DESC, item_id LIMIT $1`, n[2])
	br := tx.SendBatch(ctx, pb)
	for i := range lists {
		rows, _ := br.Query()
		var x stored
		if _, err := pgx.ForEachRow(rows, []any{&x.id, &x.v}, func() error { lists[i] = append(lists[i], x); return nil }); err != nil {
			br.Close()
			return lists, fmt.Errorf("load top lists: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return lists, fmt.Errorf("load top lists: %w", err)
	}
	return lists, nil
}

// globalLists is a PGLoader's copy of the global lists, shared by its requests: they do not
// depend on the user. At most one read is in flight; meanwhile requests use the lists at hand
// if they are relative to the landmarks of the request's transaction, or wait for the read
// (at most their own deadline) if not.
type globalLists struct {
	ttl time.Duration

	mu       sync.Mutex
	cur      *topLists
	inflight *listsRead
	lastErr  error
	failedAt time.Time
}

// topLists are global lists read together with the meta their values are relative to.
type topLists struct {
	meta   Meta
	n      [3]int
	l      [3][]stored
	readAt time.Time
}

// fits reports whether t serves a request whose transaction saw meta m and wants lists n long.
func (t *topLists) fits(m Meta, n [3]int) bool {
	return t != nil && t.meta == m && t.n[0] >= n[0] && t.n[1] >= n[1] && t.n[2] >= n[2]
}

// head returns the lists n long, copied: the builder sorts them in place. The rows are in
// the order of the queries' ORDER BY, so the heads are what LIMIT n would have read.
func (t *topLists) head(n [3]int) [3][]stored {
	var out [3][]stored
	for i := range out {
		out[i] = slices.Clone(t.l[i][:min(n[i], len(t.l[i]))])
	}
	return out
}

type listsRead struct {
	done chan struct{}
	err  error
}

// globalLists returns the lists n long relative to meta m, or the read to wait for (started
// if none is in flight) when there are none at hand, or errListsMoved when the lists at hand
// are newer than m.
func (l *PGLoader) globalLists(ctx context.Context, m Meta, n [3]int) ([3][]stored, *listsRead, error) {
	g := &l.lists
	g.mu.Lock()
	defer g.mu.Unlock()
	cur := g.cur
	fits := cur.fits(m, n)
	if fits && time.Since(cur.readAt) < g.ttl {
		return cur.head(n), nil, nil
	}
	if cur != nil && cur.meta.Generation > m.Generation {
		// This transaction began before the store rebased and the lists at hand were read
		// after: a read now would be relative to the new landmarks too.
		return [3][]stored{}, nil, errListsMoved
	}
	r := g.inflight
	if r == nil {
		if g.lastErr != nil && time.Since(g.failedAt) < globalListsRetry {
			if fits {
				return cur.head(n), nil, nil
			}
			return [3][]stored{}, nil, g.lastErr
		}
		want := n
		if cur != nil {
			// Lists read for a larger k serve the smaller ones too.
			for i := range want {
				want[i] = max(want[i], cur.n[i])
			}
		}
		r = &listsRead{done: make(chan struct{})}
		g.inflight = r
		go l.readGlobalLists(context.WithoutCancel(ctx), r, want)
	}
	if fits {
		return cur.head(n), nil, nil // older by one read, relative to the same landmarks
	}
	return [3][]stored{}, r, nil
}

// readGlobalLists reads the lists n long with the meta they are relative to, into r.
func (l *PGLoader) readGlobalLists(ctx context.Context, r *listsRead, n [3]int) {
	ctx, cancel := context.WithTimeout(ctx, globalListsTimeout)
	defer cancel()
	stop := context.AfterFunc(l.closing, cancel)
	defer stop()
	res, err := func() (*topLists, error) {
		tx, err := l.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return nil, fmt.Errorf("load global lists from postgres: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
		// The session's statement_timeout (--pg.statement-timeout, 5 s by default) would cut
		// the scans before globalListsTimeout: on a catalog whose scan outlasts it, never a list.
		if _, err := tx.Exec(ctx, globalListsStatementTimeout); err != nil {
			return nil, fmt.Errorf("load global lists: %w", err)
		}
		t := &topLists{n: n, readAt: time.Now()}
		if t.meta, err = loadMeta(ctx, tx); err != nil {
			return nil, fmt.Errorf("load global lists: %w", err)
		}
		if t.l, err = readLists(ctx, tx, n); err != nil {
			return nil, err
		}
		return t, nil
	}()
	g := &l.lists
	g.mu.Lock()
	r.err = err
	g.inflight = nil
	if err != nil {
		g.lastErr, g.failedAt = err, time.Now()
	} else {
		g.cur, g.lastErr = res, nil
	}
	g.mu.Unlock()
	close(r.done)
}
