package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/events"
)

// errOutboxConflict means the COPY into event_outbox hit its unique (event_id, event_type)
// key: the transaction was rolled back and the group must be written with insertSQL, whose
// ON CONFLICT skips such rows.
var errOutboxConflict = errors.New("outbox row already exists")

// copyDedupSQL inserts the group's dedup keys and returns the new ones. It also queues the
// relay's notification, which PostgreSQL delivers only if the transaction commits; every
// new id gets an outbox row below, so "some id is new" is "some outbox row is written".
const copyDedupSQL = `
WITH d AS (
	INSERT INTO event_dedup (event_id, event_type)
	SELECT u.id, u.kind FROM unnest($1::text[], $2::text[]) AS u(id, kind)
	ORDER BY u.id
	ON CONFLICT (event_id) DO NOTHING
	RETURNING event_id
), n AS (
	SELECT pg_notify('` + NotifyChannel + `', '') FROM (SELECT 1 FROM d LIMIT 1) AS x
)
SELECT ARRAY(SELECT event_id FROM d), (SELECT count(*) FROM n)`

var (
	impressionColumns = []string{"event_id", "position", "item_id", "feed_id", "slot", "user_id", "session_id", "request_id", "ts_ms", "ts", "server_received_ts_ms", "context"}
	watchColumns      = []string{"event_id", "user_id", "session_id", "request_id", "item_id", "watch_time_sec", "percent_watched", "ended", "playback_speed", "rebuffer_count", "ts_ms", "ts", "server_received_ts_ms", "context"}
	legacyColumns     = []string{"event_id", "user_id", "item_id", "event_type", "ts", "ts_ms"}
	outboxColumns     = []string{"event_id", "event_type", "topic", "msg_key", "payload", "correlation_id", "schema_version", "max_attempts"}
)

// copyGroup writes a group in one transaction: dedup insert, then COPY of the raw and outbox
// rows of the ids that were new. It returns those ids (each got its outbox row).
func (w *Writer) copyGroup(ctx context.Context, b *batch) (inserted []string, err error) {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			// The connection may be broken or the context over; a failed rollback only
			// means the server already ended the transaction, and the pool discards such
			// a connection.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var notified int64
	if err = tx.QueryRow(ctx, copyDedupSQL, b.dedupIDs, b.dedupKinds).Scan(&inserted, &notified); err != nil {
		return nil, fmt.Errorf("insert dedup keys: %w", err)
	}
	if len(inserted) == 0 {
		return nil, tx.Commit(ctx)
	}
	isNew := make(map[string]struct{}, len(inserted))
	for _, id := range inserted {
		isNew[id] = struct{}{}
	}
	copies := []struct {
		table   string
		columns []string
		src     *copySource
	}{
		{"impressions", impressionColumns, newCopySource(b.impEventID, isNew, b.impressionRow)},
		{"watches", watchColumns, newCopySource(b.watEventID, isNew, b.watchRow)},
		{"legacy_events", legacyColumns, newCopySource(b.legEventID, isNew, b.legacyRow)},
		{"event_outbox", outboxColumns, newCopySource(b.obEventID, isNew, b.outboxRow)},
	}
	for _, c := range copies {
		if !c.src.any() {
			continue
		}
		if _, err = tx.CopyFrom(ctx, pgx.Identifier{c.table}, c.columns, c.src); err != nil {
			var pe *pgconn.PgError
			if c.table == "event_outbox" && errors.As(err, &pe) && pe.Code == "23505" {
				return nil, errOutboxConflict
			}
			return nil, fmt.Errorf("copy %s: %w", c.table, err)
		}
	}
	if err = tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return inserted, nil
}

// copySource streams the rows i of one table whose event id is new, in arrival order (so a
// user's outbox rows get increasing ids, as with insertSQL).
type copySource struct {
	ids   []string
	isNew map[string]struct{}
	row   func(i int, dst []any) []any
	i     int
	vals  []any
}

func newCopySource(ids []string, isNew map[string]struct{}, row func(int, []any) []any) *copySource {
	return &copySource{ids: ids, isNew: isNew, row: row, i: -1}
}

func (s *copySource) any() bool {
	for _, id := range s.ids {
		if _, ok := s.isNew[id]; ok {
			return true
		}
	}
	return false
}

// Next implements pgx.CopyFromSource.
func (s *copySource) Next() bool {
	for s.i++; s.i < len(s.ids); s.i++ {
		if _, ok := s.isNew[s.ids[s.i]]; ok {
			return true
		}
	}
	return false
}

// Values implements pgx.CopyFromSource; pgx encodes the row before asking for the next one,
// so one slice serves every row.
func (s *copySource) Values() ([]any, error) {
	s.vals = s.row(s.i, s.vals[:0])
	return s.vals, nil
}

// Err implements pgx.CopyFromSource.
func (s *copySource) Err() error { return nil }

// tsOf is insertSQL's to_timestamp(ts_ms / 1000.0) (microsecond precision, UTC).
func tsOf(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// jsonbArg passes a JSON text to a jsonb column as it is (pgx sends a string argument of a
// json/jsonb column verbatim); nil stays NULL.
func jsonbArg(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

func (b *batch) impressionRow(i int, dst []any) []any {
	return append(dst, b.impEventID[i], b.impPos[i], b.impItemID[i], b.impFeed[i], b.impSlot[i], b.impUser[i], b.impSession[i],
		b.impRequest[i], b.impTs[i], tsOf(b.impTs[i]), b.impSrv[i], jsonbArg(b.impCtx[i]))
}

func (b *batch) watchRow(i int, dst []any) []any {
	return append(dst, b.watEventID[i], b.watUser[i], b.watSession[i], b.watRequest[i], b.watItem[i], b.watTime[i], b.watPct[i],
		b.watEnded[i], b.watSpeed[i], b.watRebuf[i], b.watTs[i], tsOf(b.watTs[i]), b.watSrv[i], jsonbArg(b.watCtx[i]))
}

func (b *batch) legacyRow(i int, dst []any) []any {
	return append(dst, b.legEventID[i], b.legUser[i], b.legItem[i], b.legType[i], b.legTs[i], b.legTsMs[i])
}

func (b *batch) outboxRow(i int, dst []any) []any {
	return append(dst, b.obEventID[i], b.obType[i], b.obTopic[i], b.obKey[i], b.obPayload[i], b.obCorr[i],
		int16(events.SchemaVersion), int32(b.maxAttempts))
}
