package featurestore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// PGLoader builds ranking Snapshots from PostgreSQL, the durable truth: the degraded path
// while Redis is down or being repopulated. It needs three round trips (user and global lists,
// then neighbours of the history, then item stats).
type PGLoader struct {
	pg  *pgxpool.Pool
	cfg features.Config
}

// NewPGLoader returns a loader; keyPrefix is unused (the signature matches NewRedisLoader).
func NewPGLoader(pg *pgxpool.Pool, keyPrefix string, cfg features.Config) *PGLoader {
	_ = keyPrefix
	return &PGLoader{pg: pg, cfg: cfg}
}

// Snapshot loads userID's ranking input at nowMs from PostgreSQL.
func (l *PGLoader) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	tx, err := l.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return ranking.Snapshot{}, fmt.Errorf("load snapshot from postgres: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	pb := &pgx.Batch{}
	pb.Queue(metaSelect)
	pb.Queue(`SELECT history, watched, impressions, impressions_recent FROM feature_users WHERE user_id = $1`, userID)
	// No index serves the top lists (migration 0007: they made every item update non-HOT), so
	// each is a scan with a bounded top-N sort; acceptable for the degraded mode this is.
	pb.Queue(`SELECT item_id, pop_short FROM feature_items WHERE pop_short > 0 ORDER BY pop_short DESC, item_id LIMIT $1`, opts.TrendingN)
	pb.Queue(`SELECT item_id, pop_long FROM feature_items WHERE pop_long > 0 ORDER BY pop_long DESC, item_id LIMIT $1`, opts.PopularN)
	pb.Queue(`SELECT item_id, first_seen_ms::float8 FROM feature_items ORDER BY first_seen_ms DESC, item_id LIMIT $1`, opts.FreshN)
	br := tx.SendBatch(ctx, pb)
	m, err := scanMeta(br.QueryRow())
	if err != nil {
		br.Close()
		if errors.Is(err, errNoMeta) {
			// Nothing applied yet: an empty snapshot is the truth.
			return emptySnapshot(userID, nowMs, opts), nil
		}
		return ranking.Snapshot{}, err
	}
	b := newBuilder(userID, nowMs, opts, decays{short: m.Short, long: m.Long, covis: m.Covis})
	var f UserFields
	switch err := br.QueryRow().Scan(&f[0], &f[1], &f[2], &f[3]); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		br.Close()
		return ranking.Snapshot{}, fmt.Errorf("load user: %w", err)
	default:
		if err := b.user(f); err != nil {
			br.Close()
			return ranking.Snapshot{}, fmt.Errorf("%w: user %q: %w", ErrUserUndecodable, userID, err)
		}
	}
	var lists [3][]stored
	for i := range lists {
		rows, _ := br.Query()
		var x stored
		if _, err := pgx.ForEachRow(rows, []any{&x.id, &x.v}, func() error { lists[i] = append(lists[i], x); return nil }); err != nil {
			br.Close()
			return ranking.Snapshot{}, fmt.Errorf("load top lists: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return ranking.Snapshot{}, fmt.Errorf("load snapshot from postgres: %w", err)
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
			return ranking.Snapshot{}, fmt.Errorf("load neighbours: %w", err)
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
			return ranking.Snapshot{}, err
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
	return b.snapshot(), nil
}

func emptySnapshot(userID string, nowMs int64, opts ranking.SnapshotOptions) ranking.Snapshot {
	b := newBuilder(userID, nowMs, opts, decays{})
	b.lists(nil, nil, nil)
	b.s.Stored = false // no decayed value, so none relative to a landmark
	return b.snapshot()
}
