package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/events"
	"recsys/pkg/outbox"
)

// errCopyConflict means a COPY hit a unique key: an event_dedup key stored already (a resend,
// when the group skipped the probe) or committed by a concurrent transaction after it (a
// resend racing this group), or an event_outbox row that outlived its first event's dedup
// key. The transaction was rolled back and the group must be written with insertSQL, whose
// ON CONFLICT clauses handle all of them.
var errCopyConflict = errors.New("unique key met by COPY")

// probeGroupsAfterDuplicate is how many COPY groups probe the stored ids first after a group
// met one (by its probe or by a failed dedup COPY).
const probeGroupsAfterDuplicate = 64

// notifySQL queues the relay's notification of a group that skips the probe: every id of it
// is new (or the transaction fails), so every one gets its frame in an outbox row. $1 is the
// payload (kinds.notifyPayload). It returns the transaction's id, by which resolve learns the
// outcome of a COMMIT that goes unanswered.
const notifySQL = `WITH n AS (SELECT pg_notify('` + NotifyChannel + `', $1)) SELECT pg_current_xact_id()::text::int8, (SELECT count(*) FROM n)`

// copyProbeSQL returns the dedup indexes (0-based) of the group's keys that are stored
// already: $1 and $2 are the keys' event_ids and users. It also queues the relay's
// notification when some key is new (the group's keys are distinct), which PostgreSQL
// delivers only if the transaction commits; every new key gets its frame in an outbox row
// below. Each key is one descent of the primary key, as the probe by id alone was. It
// returns the transaction's id too, as notifySQL does, or 0 when every key is stored: the
// transaction then writes nothing, and taking an id would make its commit wait for a WAL
// flush.
const copyProbeSQL = `
WITH e AS (
	SELECT u.ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(id, usr, ord)
	WHERE EXISTS (SELECT 1 FROM event_dedup d WHERE d.event_id = u.id AND d.user_id = u.usr)
), n AS (
	SELECT pg_notify('` + NotifyChannel + `', $3) WHERE (SELECT count(*) FROM e) < cardinality($1::text[])
)
SELECT ARRAY(SELECT ord - 1 FROM e), (SELECT count(*) FROM n),
	CASE WHEN (SELECT count(*) FROM e) < cardinality($1::text[]) THEN pg_current_xact_id()::text::int8 ELSE 0 END`

var (
	dedupColumns      = []string{"event_id", "user_id", "event_type"}
	impressionColumns = []string{"event_id", "user_id", "session_id", "request_id", "ts_ms", "ts", "server_received_ts_ms", "context", "positions", "item_ids", "feed_ids", "slots"}
	watchColumns      = []string{"event_id", "user_id", "session_id", "request_id", "item_id", "watch_time_sec", "percent_watched", "ended", "playback_speed", "rebuffer_count", "ts_ms", "ts", "server_received_ts_ms", "context"}
	legacyColumns     = []string{"event_id", "user_id", "item_id", "event_type", "ts", "ts_ms"}
	outboxColumns     = []string{"event_id", "event_type", "topic", "msg_key", "payload", "schema_version", "max_attempts", "payload_format", "event_count"}
)

// copyGroup writes a group in one transaction: COPY of the new dedup keys (in key order,
// so concurrent groups meet on their keys in the same order and cannot deadlock), of their raw
// rows and of the outbox rows holding their frames (built here from the new ids). It reports,
// per dedup index, whether the id was new (each new id got its frame in an outbox row).
//
// A plain insert of the keys took a quarter to a third less backend CPU than INSERT ... ON
// CONFLICT over unnest (no speculative insertion, no sort or join in the server). Which ids
// are new is optimistic: normally every id of a group is, and the dedup COPY is the check (a
// stored id fails it on the primary key, the transaction is rolled back and the group is
// redone by the statement, errCopyConflict). Only for probeGroupsAfterDuplicate groups after
// a duplicate was met does a probe of the stored ids come first, so a burst of resends costs
// one redone group, not one per group. The probe of always-new ids was ~1.8 µs of backend
// CPU per event (an index descent per id), a tenth of the database's work per batched watch.
func (w *Writer) copyGroup(ctx context.Context, b *batch) (isNew []bool, err error) {
	conn, err := w.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	start, end := w.boundOnServer(ctx, conn)
	defer end()
	if start.Err() != nil {
		return nil, errNoTimeLeft
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", serverCancelled(start, err))
	}
	defer func() {
		if err != nil {
			// The transaction's context may be over already: roll back under a fresh bound
			// so a server that stopped answering cannot hold this worker (pgx closes the
			// connection when it expires). A failed rollback only means the server already
			// ended the transaction; the pool discards a broken connection.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.Timeout)
			defer cancel()
			_ = tx.Rollback(rctx)
		}
	}()
	var existing []int64 // dedup indexes
	var xid, notified int64
	// Concurrent workers may take the count below zero; a duplicate sets it again.
	if w.probeGroups.Load() > 0 {
		if err = tx.QueryRow(ctx, copyProbeSQL, b.dedupIDs, b.dedupUsers, b.kinds().notifyPayload()).Scan(&existing, &notified, &xid); err != nil {
			return nil, fmt.Errorf("probe dedup keys: %w", serverCancelled(start, err))
		}
		if len(existing) > 0 {
			w.probeGroups.Store(probeGroupsAfterDuplicate)
		} else {
			w.probeGroups.Add(-1)
		}
	} else if err = tx.QueryRow(ctx, notifySQL, b.kinds().notifyPayload()).Scan(&xid, &notified); err != nil {
		return nil, fmt.Errorf("notify relay: %w", serverCancelled(start, err))
	}
	isNew = make([]bool, len(b.dedupIDs))
	if len(existing) == len(b.dedupIDs) {
		if start.Err() != nil {
			return nil, errNoTimeLeft
		}
		// Nothing was written, whatever the commit's outcome.
		if err = tx.Commit(ctx); err != nil {
			return nil, fmt.Errorf("commit: %w", serverCancelled(start, err))
		}
		return isNew, nil
	}
	for i := range isNew {
		isNew[i] = true
	}
	for _, i := range existing {
		if i < 0 || i >= int64(len(isNew)) {
			return nil, fmt.Errorf("probe returned dedup index %d of a group of %d", i, len(isNew))
		}
		isNew[i] = false
	}
	fresh := make([]int32, 0, len(b.dedupIDs)-len(existing)) // dedup indexes of the new keys
	for i, n := range isNew {
		if n {
			fresh = append(fresh, int32(i))
		}
	}
	slices.SortFunc(fresh, func(x, y int32) int {
		if c := strings.Compare(b.dedupIDs[x], b.dedupIDs[y]); c != 0 {
			return c
		}
		return strings.Compare(b.dedupUsers[x], b.dedupUsers[y])
	})
	obRows := b.outboxRows(isNew)
	obRow := func(e *copyEncoder, i int) { e.outboxRow(b, &obRows[i]) }
	dedupRow := func(e *copyEncoder, j int) {
		e.text(b.dedupIDs[fresh[j]])
		e.text(b.dedupUsers[fresh[j]])
		e.text(b.dedupKinds[fresh[j]])
	}
	copies := []struct {
		table   string
		columns []string
		n       int
		idx     []int32 // dedup index of each row; nil when every row is for new ids
		row     func(e *copyEncoder, i int)
	}{
		{"event_dedup", dedupColumns, len(fresh), nil, dedupRow},
		{"impression_events", impressionColumns, len(b.impIdx), b.impIdx, b.impressionRow},
		{"watches", watchColumns, len(b.watIdx), b.watIdx, b.watchRow},
		{"legacy_events", legacyColumns, len(b.legIdx), b.legIdx, b.legacyRow},
		{"event_outbox", outboxColumns, len(obRows), nil, obRow},
	}
	enc := w.encoders.Get().(*copyEncoder)
	defer w.putEncoder(enc)
	for _, c := range copies {
		enc.reset()
		rows := 0
		for i := range c.n {
			if c.idx == nil || isNew[c.idx[i]] {
				enc.tuple(len(c.columns))
				c.row(enc, i)
				rows++
			}
		}
		if rows == 0 {
			continue
		}
		if start.Err() != nil {
			return nil, errNoTimeLeft
		}
		enc.finish()
		sql := "COPY " + c.table + " (" + strings.Join(c.columns, ", ") + ") FROM STDIN (FORMAT binary)"
		if _, err = tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(enc.buf), sql); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				// Resends come in bursts (a client retrying a batch after a timeout): probe
				// the next groups instead of failing them one by one.
				w.probeGroups.Store(probeGroupsAfterDuplicate)
				return nil, errCopyConflict
			}
			return nil, fmt.Errorf("copy %s: %w", c.table, serverCancelled(start, err))
		}
	}
	if start.Err() != nil {
		return nil, errNoTimeLeft
	}
	if err = tx.Commit(ctx); err != nil {
		// Before its COMMIT, a transaction whose connection ends rolls back; after, it may
		// have committed unheard.
		return nil, pending(fmt.Errorf("commit: %w", serverCancelled(start, err)), conn.Conn().PgConn(), xid)
	}
	return isNew, nil
}

// copyEncoder writes PostgreSQL's binary COPY format (a header, per row a field count and
// each field as a length and its binary value, -1 for NULL, then a trailer) straight from the
// batch columns. pgx's generic CopyFrom boxes every value in an interface and looks up its
// encode plan per value, which was about 14 % of the Go CPU of /log/batch.
type copyEncoder struct{ buf []byte }

// maxPooledEncoder is the largest buffer kept for reuse: a group of MaxEvents large
// impressions could need more, and keeping that much per worker is not worth it.
const maxPooledEncoder = 4 << 20

// putEncoder returns enc to the writer's pool. Reusing the buffer avoids growing it from
// nothing for every table of every group (the growth copies were ~5 % of the Go CPU of
// /log/batch).
func (w *Writer) putEncoder(enc *copyEncoder) {
	if cap(enc.buf) <= maxPooledEncoder {
		w.encoders.Put(enc)
	}
}

// pgEpochMicros is 2000-01-01 UTC, the origin of binary timestamps, in Unix microseconds.
const pgEpochMicros = 946_684_800_000_000

func (e *copyEncoder) reset() {
	e.buf = append(e.buf[:0], "PGCOPY\n\xff\r\n\x00"...)
	e.buf = binary.BigEndian.AppendUint32(e.buf, 0) // flags
	e.buf = binary.BigEndian.AppendUint32(e.buf, 0) // header extension length
}

func (e *copyEncoder) finish() { e.buf = binary.BigEndian.AppendUint16(e.buf, 0xffff) }

func (e *copyEncoder) tuple(fields int) { e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(fields)) }

func (e *copyEncoder) null() { e.buf = binary.BigEndian.AppendUint32(e.buf, 0xffffffff) }

func (e *copyEncoder) text(s string) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *copyEncoder) optText(s *string) {
	if s == nil {
		e.null()
		return
	}
	e.text(*s)
}

// jsonb is a version byte (1) then the JSON text, which the server parses as ::jsonb does.
func (e *copyEncoder) jsonb(s *string) {
	if s == nil {
		e.null()
		return
	}
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(len(*s)+1))
	e.buf = append(e.buf, 1)
	e.buf = append(e.buf, *s...)
}

// Element type OIDs of the arrays written (array_recv checks them).
const (
	oidInt8 = 20
	oidText = 25
)

// beginArray writes the header of a one-dimensional array of n elements (lower bound 1);
// the caller writes the elements as fields, then endArray fills in the value's length.
func (e *copyEncoder) beginArray(elemOID uint32, n int, hasNull bool) (at int) {
	at = len(e.buf)
	e.buf = binary.BigEndian.AppendUint32(e.buf, 0)
	if n == 0 {
		e.buf = binary.BigEndian.AppendUint32(e.buf, 0) // no dimensions
		e.buf = binary.BigEndian.AppendUint32(e.buf, 0)
		e.buf = binary.BigEndian.AppendUint32(e.buf, elemOID)
		return at
	}
	e.buf = binary.BigEndian.AppendUint32(e.buf, 1)
	var flags uint32
	if hasNull {
		flags = 1
	}
	e.buf = binary.BigEndian.AppendUint32(e.buf, flags)
	e.buf = binary.BigEndian.AppendUint32(e.buf, elemOID)
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	e.buf = binary.BigEndian.AppendUint32(e.buf, 1)
	return at
}

func (e *copyEncoder) endArray(at int) {
	binary.BigEndian.PutUint32(e.buf[at:], uint32(len(e.buf)-at-4))
}

// optTextArray writes a text[] with NULL elements for nil, or a NULL value when every
// element is nil: an impression's feed ids and slots are usually all absent.
func (e *copyEncoder) optTextArray(v []*string) {
	present := 0
	for _, s := range v {
		if s != nil {
			present++
		}
	}
	if present == 0 {
		e.null()
		return
	}
	at := e.beginArray(oidText, len(v), present < len(v))
	for _, s := range v {
		e.optText(s)
	}
	e.endArray(at)
}

func (e *copyEncoder) int2(v int16) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, 2)
	e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(v))
}

func (e *copyEncoder) int4(v int32) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, 4)
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(v))
}

func (e *copyEncoder) int8(v int64) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, 8)
	e.buf = binary.BigEndian.AppendUint64(e.buf, uint64(v))
}

func (e *copyEncoder) optInt8(v *int64) {
	if v == nil {
		e.null()
		return
	}
	e.int8(*v)
}

func (e *copyEncoder) float8(v float64) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, 8)
	e.buf = binary.BigEndian.AppendUint64(e.buf, math.Float64bits(v))
}

func (e *copyEncoder) optFloat8(v *float64) {
	if v == nil {
		e.null()
		return
	}
	e.float8(*v)
}

func (e *copyEncoder) optBool(v *bool) {
	if v == nil {
		e.null()
		return
	}
	e.buf = binary.BigEndian.AppendUint32(e.buf, 1)
	if *v {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
}

// timestamptzMs writes a Unix millisecond time as insertSQL's to_timestamp(ts_ms / 1000.0)
// stores it (microseconds; milliseconds are exact).
func (e *copyEncoder) timestamptzMs(ms int64) {
	e.int8(ms*1000 - pgEpochMicros)
}

// The row writers follow the column lists above, in order.

func (b *batch) impressionRow(e *copyEncoder, i int) {
	lo, hi := b.impLo[i], b.impHi[i]
	e.text(b.impEventID[i])
	e.text(b.impUser[i])
	e.text(b.impSession[i])
	e.text(b.impRequest[i])
	e.int8(b.impTs[i])
	e.timestamptzMs(b.impTs[i])
	e.int8(b.impSrv[i])
	e.jsonb(b.impCtx[i])
	at := e.beginArray(oidInt8, int(hi-lo), false)
	for _, p := range b.impPos[lo:hi] {
		e.int8(p)
	}
	e.endArray(at)
	at = e.beginArray(oidText, int(hi-lo), false)
	for _, s := range b.impItemID[lo:hi] {
		e.text(s)
	}
	e.endArray(at)
	e.optTextArray(b.impFeed[lo:hi])
	e.optTextArray(b.impSlot[lo:hi])
}

func (b *batch) watchRow(e *copyEncoder, i int) {
	e.text(b.watEventID[i])
	e.text(b.watUser[i])
	e.text(b.watSession[i])
	e.text(b.watRequest[i])
	e.text(b.watItem[i])
	e.float8(b.watTime[i])
	e.optFloat8(b.watPct[i])
	e.optBool(b.watEnded[i])
	e.optFloat8(b.watSpeed[i])
	e.optInt8(b.watRebuf[i])
	e.int8(b.watTs[i])
	e.timestamptzMs(b.watTs[i])
	e.int8(b.watSrv[i])
	e.jsonb(b.watCtx[i])
}

func (b *batch) legacyRow(e *copyEncoder, i int) {
	e.text(b.legEventID[i])
	e.text(b.legUser[i])
	e.text(b.legItem[i])
	e.text(b.legType[i])
	e.int8(b.legTs[i])
	e.int8(b.legTsMs[i])
}

// outboxRow leaves correlation_id NULL: a batch row's events may come from several
// requests, and each frame carries its own.
func (e *copyEncoder) outboxRow(b *batch, r *outboxRow) {
	e.text(r.eventID)
	e.text(r.eventType)
	e.text(r.topic)
	e.text(r.key)
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(r.size))
	for _, i := range r.frames {
		e.buf = append(e.buf, b.obFrame[i]...)
	}
	e.int2(int16(events.SchemaVersion))
	e.int4(int32(b.maxAttempts))
	e.int2(outbox.FormatBatch)
	e.int4(int32(len(r.frames)))
}
