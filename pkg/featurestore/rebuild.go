package featurestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

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
// apply order: event time, then event_id and user. The stream applies events of one user in
// their partition (arrival) order, so a rebuild reproduces it whenever each user's events
// arrived in time order. The impressions view has a row per shown item: an event is its
// user's event_id, since two users' events may share an id (migration 0022). A legacy row has
// no receive time: its insert time stands for it, as it does for `users forget`, which
// deletes legacy rows by it.
const rawEvents = `SELECT kind, event_id, user_id, ts_ms, item_id, items, watch_time_sec, percent_watched, ended, legacy_type, srv FROM (
  SELECT 'impression' AS kind, event_id, user_id, min(ts_ms) AS ts_ms, NULL::text AS item_id,
         array_agg(item_id ORDER BY position) AS items, 0::float8 AS watch_time_sec, NULL::float8 AS percent_watched,
         NULL::bool AS ended, NULL::text AS legacy_type, min(server_received_ts_ms) AS srv
  FROM impressions GROUP BY event_id, user_id
  UNION ALL
  SELECT 'watch', event_id, user_id, ts_ms, item_id, NULL, watch_time_sec, percent_watched, ended, NULL, server_received_ts_ms
  FROM watches
  UNION ALL
  SELECT 'legacy', event_id, user_id, ts_ms, item_id, NULL, 0, NULL, NULL, event_type,
         (extract(epoch FROM created_at) * 1000)::bigint
  FROM legacy_events
) e ORDER BY ts_ms, event_id, user_id`

// ErrRebuildRunning means another rebuild from events holds its lock.
var ErrRebuildRunning = errors.New("another rebuild from events is running")

// rebuildLockKey is the session advisory lock a rebuild from events holds for its whole run:
// two runs would each empty the tables and apply their events interleaved.
const rebuildLockKey = 7_254_391_002

// RebuildFromEvents recomputes the durable feature state from the raw event tables through
// the same Apply as the stream, then rebuilds the Redis copy. It empties the feature tables
// first (the DLQ is kept); run it with the consumers stopped, or their events interleave with
// the rebuild's order (they are still applied exactly once). Like the consumers, it skips the
// events of erased users received up to their erasure (Forgotten, reread every
// ForgottenRefresh): an erasure waiting out its settle time has not deleted the raw rows the
// scan reads, and applying them after the deletion would bring the users back. progress,
// when set, is called after each batch with the number of events read so far. A second run
// while one is going fails with ErrRebuildRunning before it changes anything.
func (s *Store) RebuildFromEvents(ctx context.Context, batchSize int, progress func(int)) (n int, err error) {
	if batchSize <= 0 {
		return 0, fmt.Errorf("rebuild from events: batch size %d, want at least 1", batchSize)
	}
	conn, err := s.pg.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, rebuildLockKey).Scan(&locked); err != nil {
		return 0, fmt.Errorf("take rebuild lock: %w", err)
	}
	if !locked {
		return 0, ErrRebuildRunning
	}
	defer func() {
		ctx := context.WithoutCancel(ctx)
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, rebuildLockKey); err != nil {
			// A pooled connection must not keep the lock: closing the session releases it.
			_ = conn.Conn().Close(ctx)
		}
	}()

	// The scan starts before the tables are emptied: its first event gives the landmarks
	// (those the first batch would have created), and a scan that fails leaves them intact.
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
	var first *Event
	if rows.Next() {
		ev, err := scanRawEvent(rows)
		if err != nil {
			return 0, err
		}
		first = &ev
	} else if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("scan raw events: %w", err)
	}
	if err := s.emptyFeatureTables(ctx, first); err != nil {
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
	b := &Batch{}
	var forgotten Forgotten
	var forgottenAt time.Time
	flush := func() error {
		if len(b.Events) == 0 {
			return nil
		}
		// Reread as often as a consumer does, and checked just before the batch's
		// transaction; an erasure recorded since is found in the transaction (ErasedError),
		// and its events are dropped then.
		if time.Since(forgottenAt) >= ForgottenRefresh {
			if err := s.RefreshForgotten(ctx, &forgotten); err != nil {
				return err
			}
			forgottenAt = time.Now()
		}
		for {
			b.Events = slices.DeleteFunc(b.Events, func(ev Event) bool { return forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) })
			if len(b.Events) == 0 {
				break
			}
			_, err := s.Apply(ctx, b)
			if erased := new(ErasedError); errors.As(err, &erased) {
				forgotten.Note(erased.Users) // erased since the list was read: drop and go on
				continue
			}
			if err != nil {
				return err
			}
			break
		}
		b = &Batch{}
		if progress != nil {
			progress(n)
		}
		return nil
	}
	add := func(ev Event) error {
		b.Events = append(b.Events, ev)
		n++
		if len(b.Events) >= batchSize {
			return flush()
		}
		return nil
	}
	if first != nil {
		if err := add(*first); err != nil {
			return n, err
		}
	}
	for rows.Next() {
		ev, err := scanRawEvent(rows)
		if err != nil {
			return n, err
		}
		if err := add(ev); err != nil {
			return n, err
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("scan raw events: %w", err)
	}
	if err := flush(); err != nil {
		return n, err
	}
	// A copy made from the partial tables while the rebuild ran (a consumer's heal loop, if
	// one was running) must not pass for the finished one.
	if err := s.bumpGeneration(ctx); err != nil {
		return n, err
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

// emptyFeatureTables empties the feature tables for a rebuild from events. feature_meta is
// recreated at once, one generation above the old one, with the landmarks at first's time:
// its generation must never go down, or the Redis copy of before, still marked ready, would
// refuse every later write as older and pass for current (frozen) until repopulated. With
// no event and no generation yet, it is left for the first batch to create.
func (s *Store) emptyFeatureTables(ctx context.Context, first *Event) error {
	return pgx.BeginFunc(ctx, s.pg, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '60s'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, metaLockKey); err != nil {
			return fmt.Errorf("lock feature meta: %w", err)
		}
		var oldGen int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(generation), 0) FROM feature_meta`).Scan(&oldGen); err != nil {
			return fmt.Errorf("read feature generation: %w", err)
		}
		if _, err := tx.Exec(ctx, `TRUNCATE feature_users, feature_items, feature_neighbours, feature_applied, feature_meta, feature_redis_pending`); err != nil {
			return err
		}
		if first == nil && oldGen == 0 {
			return nil
		}
		lm := time.Now().UnixMilli()
		if first != nil {
			lm = first.TsMs
		}
		if _, err := tx.Exec(ctx, `INSERT INTO feature_meta (generation, lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms)
VALUES ($1, $2, $2, $2, $3, $4, $5)`, oldGen+1, lm,
			float64(s.cfg.PopShortHalfLife.Milliseconds()), float64(s.cfg.PopLongHalfLife.Milliseconds()), float64(s.cfg.CovisHalfLife.Milliseconds())); err != nil {
			return fmt.Errorf("create feature meta: %w", err)
		}
		return nil
	})
}

// scanRawEvent reads one row of rawEvents.
func scanRawEvent(rows pgx.Rows) (Event, error) {
	var kind, id, user string
	var ts, srv int64
	var item, legacy *string
	var items []string
	var wt float64
	var pct *float64
	var ended *bool
	if err := rows.Scan(&kind, &id, &user, &ts, &item, &items, &wt, &pct, &ended, &legacy, &srv); err != nil {
		return Event{}, fmt.Errorf("read raw event: %w", err)
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
	return ev, nil
}
