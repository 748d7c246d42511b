package featurestore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/features"
)

// FlushWritten deletes the journal rows of completed Redis writes now (the stream path
// leaves that to its next transaction; one-shot commands call this before exiting).
func (s *Store) FlushWritten(ctx context.Context) error {
	ids := s.takeWritten()
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.pg.Exec(ctx, `DELETE FROM feature_redis_pending WHERE id = ANY($1)`, ids); err != nil {
		s.putWritten(ids)
		return fmt.Errorf("clear redis journal: %w", err)
	}
	return nil
}

// rawEvents reads every raw event of the ingest tables (migration 0002) in the rebuild's
// apply order: event time, then event_id. The stream applies events of one user in their
// partition (arrival) order, so a rebuild reproduces it whenever each user's events arrived
// in time order.
const rawEvents = `SELECT kind, event_id, user_id, ts_ms, item_id, items, watch_time_sec, percent_watched, ended, legacy_type, srv FROM (
  SELECT 'impression' AS kind, event_id, min(user_id) AS user_id, min(ts_ms) AS ts_ms, NULL::text AS item_id,
         array_agg(item_id ORDER BY position) AS items, 0::float8 AS watch_time_sec, NULL::float8 AS percent_watched,
         NULL::bool AS ended, NULL::text AS legacy_type, min(server_received_ts_ms) AS srv
  FROM impressions GROUP BY event_id
  UNION ALL
  SELECT 'watch', event_id, user_id, ts_ms, item_id, NULL, watch_time_sec, percent_watched, ended, NULL, server_received_ts_ms
  FROM watches
  UNION ALL
  SELECT 'legacy', event_id, user_id, ts_ms, item_id, NULL, 0, NULL, NULL, event_type, 0
  FROM legacy_events
) e ORDER BY ts_ms, event_id`

// RebuildFromEvents recomputes the durable feature state from the raw event tables through
// the same Apply as the stream, then rebuilds the Redis copy. It empties the feature tables
// first (the DLQ is kept); run it with the consumers stopped, or their events interleave with
// the rebuild's order (they are still applied exactly once). progress, when set, is called
// after each batch with the number of events read so far.
func (s *Store) RebuildFromEvents(ctx context.Context, batchSize int, progress func(int)) (n int, err error) {
	if batchSize <= 0 {
		batchSize = 5000
	}
	var oldGen int64
	if err := pgx.BeginFunc(ctx, s.pg, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '60s'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, metaLockKey); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(generation), 0) FROM feature_meta`).Scan(&oldGen); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `TRUNCATE feature_users, feature_items, feature_neighbours, feature_applied, feature_meta, feature_redis_pending`)
		return err
	}); err != nil {
		return 0, fmt.Errorf("empty feature tables: %w", err)
	}
	s.takeWritten()
	// The rebuild applies its batches in transactions of their own, so the emptied tables
	// cannot come back on an error: say so.
	rebuilt := false
	defer func() {
		if err != nil && !rebuilt {
			err = fmt.Errorf("%w (the feature tables were emptied and are partly rebuilt: fix the cause and rerun the rebuild from events)", err)
		}
	}()

	conn, err := s.pg.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin raw event scan: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
		return 0, fmt.Errorf("raw event scan timeout: %w", err)
	}
	rows, err := tx.Query(ctx, rawEvents)
	if err != nil {
		return 0, fmt.Errorf("scan raw events: %w", err)
	}
	defer rows.Close()
	b := &Batch{}
	flush := func() error {
		if len(b.Events) == 0 {
			return nil
		}
		if _, err := s.Apply(ctx, b); err != nil {
			return err
		}
		b = &Batch{}
		if progress != nil {
			progress(n)
		}
		return nil
	}
	for rows.Next() {
		var kind, id, user string
		var ts, srv int64
		var item, legacy *string
		var items []string
		var wt float64
		var pct *float64
		var ended *bool
		if err := rows.Scan(&kind, &id, &user, &ts, &item, &items, &wt, &pct, &ended, &legacy, &srv); err != nil {
			return n, fmt.Errorf("read raw event: %w", err)
		}
		ev := Event{Interaction: features.Interaction{EventID: id, UserID: user, TsMs: ts, WatchTimeSec: wt, PercentWatched: pct, Ended: ended},
			ServerReceivedTsMs: srv}
		switch kind {
		case "impression":
			ev.Kind, ev.Items = features.KindImpression, items
		case "watch":
			ev.Kind, ev.ItemID = features.KindWatch, *item
		default:
			ev.Kind, ev.ItemID, ev.LegacyType = features.KindLegacy, *item, *legacy
		}
		b.Events = append(b.Events, ev)
		n++
		if len(b.Events) >= batchSize {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("scan raw events: %w", err)
	}
	if err := flush(); err != nil {
		return n, err
	}
	// Keep generations increasing across the rebuild so no Redis copy of before can pass
	// for this one.
	if _, err := s.pg.Exec(ctx, `UPDATE feature_meta SET generation = $1 + 1`, oldGen); err != nil {
		return n, fmt.Errorf("set generation: %w", err)
	}
	rebuilt = true
	if s.rd != nil {
		if err := s.Repopulate(ctx, true); err != nil {
			if errors.Is(err, ErrRepopulating) {
				return n, fmt.Errorf("rebuild redis copy: %w (the consumer's heal loop will finish it)", err)
			}
			return n, err
		}
	}
	return n, nil
}
