package featurestore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"recsys/pkg/features"
	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
)

// Batch is one unit of work applied in one PostgreSQL transaction.
type Batch struct {
	// Events in apply order: events of one user must keep their stream order.
	Events []Event
	// DLQ are poison messages of the same fetch, stored in the same transaction so that the
	// Kafka offsets can be committed once the transaction is.
	DLQ []DLQEntry
}

// DLQEntry is one dead-lettered message. Headers and Error may hold any bytes: they are
// stored as text with invalid UTF-8 and NUL replaced (PostgreSQL's text and jsonb refuse
// both, and a refused entry would lose the message); Key and Payload are stored exactly.
type DLQEntry struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Headers   map[string]string
	Payload   []byte
	Error     string
	// ReceivedMs is the receive time an erasure judges the entry by (Forgotten.Skip's rule;
	// 0, unknown, counts as before any erasure): an entry keyed by a user erased at or after
	// it is not stored (queueDLQ). Not stored itself.
	ReceivedMs int64
}

// Applied is the outcome of Apply: which events were new, and the absolute values the
// transaction committed, for the Redis mirror.
type Applied struct {
	// New[i] is true when Batch.Events[i] was applied now, false for a duplicate (already
	// applied before, or repeated within the batch).
	New  []bool
	Meta Meta
	// UserWrites counts the users the transaction wrote by how: UserOverlay (impressions
	// only, their raises added to the counters' overlay alone), UserFold (impressions only,
	// the counters rewritten: the overlay off, or folded into its base) and UserDocuments (a
	// watch in the batch: the user decoded whole, the counters rewritten with the history
	// and watched set).
	UserWrites [3]int
	// DLQErased are the indexes in Batch.DLQ of the entries not stored because their user
	// was erased after their receive time (queueDLQ): not in the DLQ, not to be counted as
	// stored.
	DLQErased []int
	// DLQRedelivered counts the entries of Batch.DLQ not stored because the DLQ holds their
	// message already (its coordinates and payload): a poison message delivered again, after a
	// failed commit or a rebalance, or twice in the batch. Not to be counted as stored.
	DLQRedelivered int

	journalID int64
	users     []userRow
	items     []itemRow
	nb        []nbWrite // each list's changes at its new version, in item order
}

// Applied.UserWrites indexes, and their names for metrics.
const (
	UserOverlay = iota
	UserFold
	UserDocuments
)

// UserWriteKinds names the Applied.UserWrites kinds.
var UserWriteKinds = [...]string{"overlay", "fold", "documents"}

// NewCount is the number of events applied now.
func (a *Applied) NewCount() int {
	n := 0
	for _, x := range a.New {
		if x {
			n++
		}
	}
	return n
}

type userRow struct {
	id         string
	version    int64
	h, w, i, r string
	// keep, in a batch's write, names the documents the batch left as they were (keepH,
	// keepW, keepI): PostgreSQL keeps them, and Redis is sent the others only unless the
	// hash turns out to be behind (see writeScript).
	keep uint8
	// unread: some kept document was not read by the batch ("" here), so a hash that turns
	// out to be behind is completed from PostgreSQL.
	unread bool
}

// userRow.keep bits.
const (
	keepH uint8 = 1 << iota
	keepW
	keepI
)

// sent is what a batch's write sends of the user's documents: "" for those it keeps.
func (u *userRow) sent() (h, w, i, r string) {
	h, w, i, r = u.h, u.w, u.i, u.r
	if u.keep&keepH != 0 {
		h = ""
	}
	if u.keep&keepW != 0 {
		w = ""
	}
	if u.keep&keepI != 0 {
		i = ""
	}
	return h, w, i, r
}

type itemRow struct {
	id                  string
	imp, wat, pn, ended int64
	sp, wt, ps, pl      float64
	fs                  int64
	nb                  int32
	fresh               bool // first seen set by this write: (re)insert into the fresh list
	// only, when non-zero, names the statistics a batch changed (bit i: ItemStatFields[i]); the
	// Redis write sends just those. Zero sends every field (new items, rows read whole).
	only uint16
}

// ItemStatFields are the statistics of an item's Redis hash, in the order the write script
// and the readers use.
var ItemStatFields = [...]string{"imp", "wat", "sp", "pn", "end", "wt", "fs", "ps", "pl"}

// field formats statistic f (ItemStatFields[f]) for the Redis copy.
func (it *itemRow) field(f int) string {
	ints := [...]*int64{&it.imp, &it.wat, nil, &it.pn, &it.ended, nil, &it.fs, nil, nil}
	if p := ints[f]; p != nil {
		return fi(*p)
	}
	floats := [...]*float64{2: &it.sp, 5: &it.wt, 7: &it.ps, 8: &it.pl}
	return ff(*floats[f])
}

// changed is the mask of statistics the batch's sums move (first seen excluded: a row whose
// first seen moved is written whole).
func (it *itemAcc) changed() uint16 {
	var m uint16
	for i, moved := range [...]bool{it.imp != 0, it.wat != 0, it.sp != 0, it.pn != 0, it.ended != 0, it.wt != 0, false, it.ps != 0, it.pl != 0} {
		if moved {
			m |= 1 << i
		}
	}
	return m
}

type scoredRow struct {
	id string
	w  float64
}

type itemAcc struct {
	imp, wat, pn, ended int64
	sp, wt, ps, pl      float64
	fs                  int64 // math.MaxInt64: not set by this batch
	nb                  int32
}

// rebaseError is a failed rebase of the landmarks that a batch needed. The rebase rewrites
// every item, not the batch's rows, so what PostgreSQL refuses there (a popularity the factor
// takes below the smallest float8) says nothing about the batch's events: see Refused.
type rebaseError struct{ err error }

func (e *rebaseError) Error() string { return "rebase decay landmarks: " + e.err.Error() }
func (e *rebaseError) Unwrap() error { return e.err }

// errListGone is a co-visitation list the batch created or found, then could not lock: the
// item retention (TrimItems) deleted it in between. The batch rolls back and Apply runs it
// again.
type errListGone struct{ item string }

func (e errListGone) Error() string {
	return fmt.Sprintf("co-visitation list of %q deleted before it was locked (item retention)", e.item)
}

// errRebase asks Apply to move the landmarks before applying the batch.
type errRebase struct{ tsMs int64 }

func (e errRebase) Error() string { return fmt.Sprintf("decay rebase needed at %d", e.tsMs) }

// Apply applies a batch in one transaction: events whose (event_id, user_id) was applied
// before are skipped (exactly-once; two users' events may share an id), the others go
// through features.Apply in order, their Deltas are summed per item and per pair and written
// with one UPSERT per table (sorted keys, so concurrent consumers never deadlock), and the
// DLQ entries are stored. On error nothing is written and the batch can be retried as a
// whole.
func (s *Store) Apply(ctx context.Context, b *Batch) (*Applied, error) {
	for attempt := 0; ; attempt++ {
		a, err := s.applyOnce(ctx, b)
		var rb errRebase
		if errors.As(err, &rb) && attempt < 3 {
			// Not bounded by the batch's deadline (the consumer's is --consumer.drain-timeout
			// per attempt): the rebase rewrites every item, seconds with millions of them,
			// and one cut off rolls back and starts over at the next attempt, every attempt.
			// Its lock wait bounds it; a cancellation before the deadline still stops it (one after
			// it is not seen: the rebase then runs to its end).
			rctx, cancel := withoutDeadline(ctx)
			err := s.Rebase(rctx, rb.tsMs)
			cancel()
			if err != nil {
				return nil, &rebaseError{err}
			}
			continue
		}
		if AppliedConcurrently(err) && attempt < 3 {
			continue // the other transaction committed: its events now read as applied
		}
		if errors.As(err, new(errListGone)) && attempt < 3 {
			continue // the next attempt creates the list anew
		}
		return a, err
	}
}

// withoutDeadline is ctx without its deadline: cancelled when ctx is, but not when it
// times out.
func withoutDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			cancel()
		}
	})
	return dctx, func() { stop(); cancel() }
}

// AppliedConcurrently reports the unique violation of the dedup insert or of the new users'
// insert: another transaction (a consumer that held the partition before a rebalance)
// recorded one of the batch's events, or created one of its users, between this one's probe
// and its insert. It is a conflict to retry, not bad data.
func AppliedConcurrently(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && (pe.ConstraintName == "feature_applied_pkey" || pe.ConstraintName == "feature_users_pkey")
}

// Refused reports errors that retrying cannot fix: PostgreSQL data exceptions, integrity
// violations and program limits (a value PostgreSQL will never accept), but for the limits the
// server applies to every write (postgres.RefusesEveryWrite), which a VACUUM ends. A dedup record
// that another transaction wrote first is a conflict that a retry resolves. A failed rebase
// is not the batch's: every event after the landmark's range needs it, so taking it for bad
// data would dead-letter every valid event from then on.
func Refused(err error) bool {
	var pe *pgconn.PgError
	var re *rebaseError
	if !errors.As(err, &pe) || AppliedConcurrently(err) || errors.As(err, &re) {
		return false
	}
	return strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23") ||
		strings.HasPrefix(pe.Code, "54") && !postgres.RefusesEveryWrite(pe)
}

// dbConn is what a transaction's statements run on (*pgxpool.Conn, pgx.Tx).
type dbConn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// pipeline is one round trip: queued statements with the reader of each result.
type pipeline struct {
	b    pgx.Batch
	read []func(pgx.BatchResults) error
}

// exec queues a statement whose result is only checked for an error (what names it).
func (p *pipeline) exec(what, sql string, args ...any) {
	p.b.Queue(sql, args...)
	p.read = append(p.read, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// query queues a statement whose rows go to read.
func (p *pipeline) query(read func(pgx.Rows) error, sql string, args ...any) {
	p.b.Queue(sql, args...)
	p.read = append(p.read, func(br pgx.BatchResults) error {
		rows, _ := br.Query() // the error surfaces from the rows
		defer rows.Close()
		return read(rows)
	})
}

func (p *pipeline) run(ctx context.Context, c dbConn) error {
	if p.b.Len() == 0 {
		return nil
	}
	if pc, ok := c.(interface{ Conn() *pgx.Conn }); ok {
		postgres.PresizeBatch(pc.Conn(), &p.b)
	}
	br := c.SendBatch(ctx, &p.b)
	for _, r := range p.read {
		if err := r(br); err != nil {
			br.Close()
			return err
		}
	}
	return br.Close()
}

// applyOnce runs the batch's transaction in three round trips at most: BEGIN rides with the
// dedup record and the user locks, the co-visitation lists are locked with the user writes,
// and COMMIT rides with the list and item writes (a batch without co-visitation needs two).
// At low volume the transaction is mostly round trips, so this is most of the freshness
// path's PostgreSQL time.
func (s *Store) applyOnce(ctx context.Context, b *Batch) (*Applied, error) {
	a := &Applied{New: make([]bool, len(b.Events))}
	committed := false
	conn, err := s.pg.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin apply: %w", err)
	}
	// A connection left inside a transaction is destroyed by the pool on Release, so a
	// failed ROLLBACK cannot leak the transaction.
	defer conn.Release()
	defer func() {
		if !committed {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = conn.Exec(rctx, "ROLLBACK")
		}
	}()

	t0 := time.Now()
	erased := map[string]int64{}
	states, meta, metaErr, err := s.lockUsers(ctx, conn, b, a, erased)
	if err != nil {
		return nil, err
	}
	if err := erasedIn(b, a, erased); err != nil {
		return nil, err
	}
	if err := s.ensureMeta(ctx, conn, b, a, meta, metaErr); err != nil {
		return nil, err
	}
	s.phase("lock", &t0)

	// Apply in order and sum the Deltas.
	items := map[string]*itemAcc{}
	var pairs []pairInc
	lists := map[string]*nbList{}
	item := func(id string) *itemAcc {
		it := items[id]
		if it == nil {
			it = &itemAcc{fs: math.MaxInt64}
			items[id] = it
		}
		return it
	}
	changed := map[string]bool{}
	watchChanged := map[string]bool{}
	var d features.Delta
	for i := range b.Events {
		if !a.New[i] {
			continue
		}
		ev := &b.Events[i].Interaction
		u := states[ev.UserID]
		changed[ev.UserID] = true
		switch {
		case u.lazy != nil: // impressions only
			features.ImpressionDeltaInto(s.cfg, *ev, &d)
			u.lazy.add(i, ev.TsMs, d.UserImpressions)
		case ev.Kind == features.KindImpression:
			u.st = features.ApplyInto(s.cfg, u.st, *ev, &d)
			u.iAdd = append(u.iAdd, ev.Items...)
		default:
			u.st = features.ApplyInto(s.cfg, u.st, *ev, &d)
			u.wAdd = append(u.wAdd, ev.ItemID)
			watchChanged[ev.UserID] = true
		}
		if d.Empty() {
			continue
		}
		for _, x := range d.Items {
			it := item(x.ItemID)
			it.imp += x.Impressions
			it.wat += x.Watches
			it.sp += x.SumPercent
			it.pn += x.PercentCount
			it.ended += x.Ended
			it.wt += x.WatchTimeSec
			it.fs = min(it.fs, d.TsMs)
		}
		for _, p := range d.Pop {
			it := item(p.ItemID)
			it.ps += a.Meta.Short.Forward(p.Weight, d.TsMs)
			it.pl += a.Meta.Long.Forward(p.Weight, d.TsMs)
			it.fs = min(it.fs, d.TsMs)
		}
		for _, p := range d.Pairs {
			if p.From != p.To {
				l := lists[p.From]
				if l == nil {
					l = &nbList{}
					lists[p.From] = l
				}
				pairs = append(pairs, pairInc{from: p.From, to: p.To, w: a.Meta.Covis.Forward(p.Weight, d.TsMs), list: l})
			}
		}
	}

	p := &pipeline{}
	listIDs := sortedKeys(lists)
	userIDs := sortedKeys(changed)
	raised, err := s.raiseOverlays(ctx, conn, userIDs, states)
	if err != nil {
		return nil, err
	}
	if len(userIDs) > 0 {
		hs, ws, is, rs := make([]string, len(userIDs)), make([]string, len(userIDs)), make([]string, len(userIDs)), make([]string, len(userIDs))
		a.users = make([]userRow, len(userIDs))
		for i, id := range userIDs {
			u := states[id]
			// A user with impressions only is locked without reading the history and
			// watched set (lockUsers), nor, when the overlay takes the raises, the base.
			row := userRow{id: id, h: u.h, w: u.w, keep: keepH | keepW, unread: u.lazy != nil}
			if r, ok := raised[id]; ok {
				row.i, row.r, row.keep = u.i, r, row.keep|keepI
				a.UserWrites[UserOverlay]++
			} else if u.lazy != nil {
				if row.i, row.r, err = u.lazy.fold(s.cfg, b, s.imps, s.overlay); err != nil {
					return nil, fmt.Errorf("impressions of %q: %w", id, err)
				}
				a.UserWrites[UserFold]++
			} else {
				a.UserWrites[UserDocuments]++
				// The overlay, if any, was added in decode: the base takes it all.
				row.i = s.imps.encode(u.st.ImpressionCounts, docKeys(u.st.ImpressionCounts, u.iKeys, u.iAdd))
				if s.overlay {
					row.r = encodeOverlay(row.i, len(u.st.ImpressionCounts), "")
				}
			}
			if watchChanged[id] {
				if row.h, err = encodeHistory(u.st.History); err != nil {
					return nil, fmt.Errorf("encode history of %q: %w", id, err)
				}
				row.w = encodeWatched(u.st.Watched, docKeys(u.st.Watched, u.wKeys, u.wAdd))
				row.keep &^= keepH | keepW
			}
			a.users[i] = row
			hs[i], ws[i], is[i], rs[i] = row.sent()
		}
		// Unchanged documents ("" here) keep their stored (possibly TOASTed) value untouched;
		// last_active_ms (the transaction's start, PostgreSQL's clock) is what the user
		// retention (TrimUsers) reads, 8 bytes in a row rewritten anyway.
		// Users go in statements of about s.userChunk bytes of documents: with full users one
		// statement carried tens of megabytes of arrays, and PostgreSQL spent 15-20 % more
		// CPU on it than on the same rows in 1 MB statements (BenchmarkApplyFullUsers,
		// alternated runs: 117-132 against 151-157 µs per event).
		for lo := 0; lo < len(userIDs); {
			hi, size := lo, 0
			for hi < len(userIDs) && (hi == lo || size < s.userChunk) {
				size += len(hs[hi]) + len(ws[hi]) + len(is[hi]) + len(rs[hi])
				hi++
			}
			users := a.users[lo:hi]
			p.query(func(rows pgx.Rows) error {
				byID := make(map[string]int64, len(users))
				var id string
				var v int64
				if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error { byID[id] = v; return nil }); err != nil {
					return fmt.Errorf("update users: %w", err)
				}
				for j := range users {
					u := &users[j]
					u.version = byID[u.id]
					if states[u.id].created {
						// Created by this batch: no older hash to complete, and what it did
						// not read are the columns' defaults.
						u.keep, u.unread = 0, false
						u.h, u.w, u.i = cmp.Or(u.h, emptyHistory), cmp.Or(u.w, emptyWatched), cmp.Or(u.i, emptyImpressions)
					}
				}
				return nil
			}, `UPDATE feature_users u SET
  history = CASE WHEN v.h = '' THEN u.history ELSE v.h END,
  watched = CASE WHEN v.w = '' THEN u.watched ELSE v.w END,
  impressions = CASE WHEN v.i = '' THEN u.impressions ELSE v.i END,
  impressions_recent = v.r,
  version = u.version + 1,
  last_active_ms = (extract(epoch FROM now()) * 1000)::bigint
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(id, h, w, i, r)
WHERE u.user_id = v.id
RETURNING u.user_id, u.version`, userIDs[lo:hi], hs[lo:hi], ws[lo:hi], is[lo:hi], rs[lo:hi])
			lo = hi
		}
	}
	if len(b.DLQ) > 0 {
		queueDLQ(p, b.DLQ, &a.DLQErased, &a.DLQRedelivered)
	}
	itemIDs := sortedKeys(items)
	if s.rd != nil && (len(userIDs) > 0 || len(items) > 0 || len(lists) > 0) {
		journalItems := itemIDs
		if len(lists) > 0 {
			set := make(map[string]bool, len(items)+len(lists))
			for k := range lists {
				set[k] = true
			}
			for k := range items {
				set[k] = true
			}
			journalItems = sortedKeys(set)
		}
		p.query(func(rows pgx.Rows) error {
			if _, err := pgx.ForEachRow(rows, []any{&a.journalID}, func() error { return nil }); err != nil {
				return fmt.Errorf("journal redis write: %w", err)
			}
			return nil
		}, `INSERT INTO feature_redis_pending (user_ids, item_ids) VALUES ($1, $2) RETURNING id`, userIDs, journalItems)
	}
	written := s.takeWritten()
	defer func() {
		if !committed {
			s.putWritten(written)
		}
	}()
	if len(written) > 0 {
		p.exec("clear redis journal", `DELETE FROM feature_redis_pending WHERE id = ANY($1)`, written)
	}
	// The co-visitation lists the batch touches, locked in item order (after the users, as
	// every consumer does, so two never deadlock). Missing rows are created empty first so
	// that a concurrent consumer creating the same list serialises on the row. They are
	// locked last in this round trip so that the user writes before them run while another
	// transaction (of another consumer or lane) still holds the lists they share.
	if len(listIDs) > 0 {
		p.exec("create co-visitation lists", `INSERT INTO feature_neighbours (item_id, neighbours) SELECT unnest($1::text[]), '' ON CONFLICT DO NOTHING`, listIDs)
		p.query(func(rows pgx.Rows) error {
			var id string
			var blob pgtype.DriverBytes // valid until the next row: load copies it once
			var version int64
			_, err := pgx.ForEachRow(rows, []any{&id, &blob, &version}, func() error {
				n := lists[id]
				if n == nil {
					return fmt.Errorf("unexpected neighbour list %q", id)
				}
				if err := n.load(blob); err != nil {
					return fmt.Errorf("item %q: %w", id, err)
				}
				n.version = version
				return nil
			})
			if err != nil {
				return fmt.Errorf("lock co-visitation lists: %w", err)
			}
			return nil
		}, `SELECT item_id, neighbours, version FROM feature_neighbours WHERE item_id = ANY($1) ORDER BY item_id FOR UPDATE`, listIDs)
	}
	s.phase("compute", &t0)
	if len(listIDs) > 0 {
		// The lists must be read before they can be merged: this round trip cannot wait.
		if err := p.run(ctx, conn); err != nil {
			return nil, err
		}
		s.phase("write", &t0)
		p = &pipeline{}
		if err := mergePairs(pairs, s.cfg.NeighboursPerItem); err != nil {
			return nil, err
		}
		a.nb = make([]nbWrite, len(listIDs))
		blobs := make([][]byte, len(listIDs))
		// One buffer for every blob, sized first: a batch of a long-running stream encodes
		// thousands of full lists (megabytes), and growing it by appending copied them over
		// and over.
		size := 0
		for _, n := range lists {
			size += n.encodedLen()
		}
		buf := make([]byte, 0, size)
		for i, id := range listIDs {
			n := lists[id]
			if !n.exists {
				return nil, errListGone{id}
			}
			start := len(buf)
			buf = n.appendTo(buf)
			blobs[i] = buf[start:len(buf):len(buf)]
			if d := len(n.l) - n.origLen; d != 0 {
				item(id).nb += int32(d)
			}
			// Every rewritten list goes to the mirror with the version it now has: the
			// copy takes a change only onto the version just before.
			add, rem := n.redis()
			a.nb[i] = nbWrite{item: id, version: n.version + 1, add: add, rem: rem}
		}
		p.exec("write co-visitation lists", `UPDATE feature_neighbours n SET neighbours = v.b, version = n.version + 1
FROM unnest($1::text[], $2::bytea[]) AS v(id, b) WHERE n.item_id = v.id`, listIDs, blobs)
		s.phase("merge", &t0)
	}
	// Items, now including those whose neighbour count changed.
	if len(items) > 0 {
		itemIDs = sortedKeys(items)
		n := len(itemIDs)
		imp, wat, pn, ended := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		sp, wt, ps, pl := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
		fs, nb := make([]int64, n), make([]int32, n)
		for i, id := range itemIDs {
			it := items[id]
			imp[i], wat[i], pn[i], ended[i] = it.imp, it.wat, it.pn, it.ended
			sp[i], wt[i], ps[i], pl[i] = it.sp, it.wt, it.ps, it.pl
			fs[i], nb[i] = it.fs, it.nb
			if it.fs == math.MaxInt64 {
				// Only its neighbour count moved (a watch paired it with a user's history).
				// Its row exists, unless the item retention trimmed it: it comes back then
				// with no statistics, and first seen "long ago" (0), not at the far future
				// that would put it at the head of the fresh lists. A row with neither an
				// impression nor a watch keeps its first seen in the upsert. Every write
				// of the row sets last_active_ms (its default: now), which the retention
				// reads.
				fs[i] = 0
			}
		}
		p.query(func(rows pgx.Rows) error {
			a.items = make([]itemRow, 0, len(itemIDs))
			var r itemRow
			var ins bool
			_, err := pgx.ForEachRow(rows, []any{&r.id, &r.imp, &r.wat, &r.sp, &r.pn, &r.ended, &r.wt, &r.fs, &r.ps, &r.pl, &r.nb, &ins}, func() error {
				acc := items[r.id]
				r.fresh = ins || r.fs == acc.fs
				r.only = 0
				if !r.fresh {
					// Most rows of an impression batch moved one counter: the Redis copy
					// gets that field, not nine to compare (the script's per-item work was
					// most of Redis's CPU with autolog). Rows that only changed their
					// neighbour count (not mirrored) have nothing to send.
					if r.only = acc.changed(); r.only == 0 {
						return nil
					}
				}
				a.items = append(a.items, r)
				return nil
			})
			if err != nil {
				return fmt.Errorf("upsert items: %w", err)
			}
			return nil
		}, `INSERT INTO feature_items AS f (item_id, impressions, watches, sum_percent, percent_count,
  ended, watch_time_sec, first_seen_ms, pop_short, pop_long, nb_count)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[], $5::bigint[], $6::bigint[], $7::float8[],
  $8::bigint[], $9::float8[], $10::float8[], $11::int[])
ON CONFLICT (item_id) DO UPDATE SET
  impressions = f.impressions + excluded.impressions,
  watches = f.watches + excluded.watches,
  sum_percent = f.sum_percent + excluded.sum_percent,
  percent_count = f.percent_count + excluded.percent_count,
  ended = f.ended + excluded.ended,
  watch_time_sec = f.watch_time_sec + excluded.watch_time_sec,
  first_seen_ms = CASE WHEN excluded.impressions = 0 AND excluded.watches = 0 THEN f.first_seen_ms
    ELSE LEAST(f.first_seen_ms, excluded.first_seen_ms) END,
  pop_short = f.pop_short + excluded.pop_short,
  pop_long = f.pop_long + excluded.pop_long,
  nb_count = f.nb_count + excluded.nb_count,
  last_active_ms = GREATEST(f.last_active_ms, excluded.last_active_ms)
RETURNING item_id, impressions, watches, sum_percent, percent_count, ended, watch_time_sec, first_seen_ms,
  pop_short, pop_long, nb_count, (xmax = 0)`, itemIDs, imp, wat, sp, pn, ended, wt, fs, ps, pl, nb)
	}
	var tag pgconn.CommandTag
	p.b.Queue("COMMIT")
	p.read = append(p.read, func(br pgx.BatchResults) (err error) {
		tag, err = br.Exec()
		return err
	})
	if err := p.run(ctx, conn); err != nil {
		return nil, fmt.Errorf("apply batch: %w", err)
	}
	if tag.String() != "COMMIT" {
		// An aborted transaction answers COMMIT with ROLLBACK instead of an error.
		return nil, fmt.Errorf("commit apply: transaction rolled back (%s)", tag.String())
	}
	committed = true
	s.phase("items", &t0)
	s.dropOwn(written...)
	if a.journalID != 0 {
		s.addOwn(a.journalID)
	}
	return a, nil
}

// userDoc is a locked user's state. Nothing is decoded for a user without a watch in the batch
// (impressions change nothing else): history and watched stay as stored in h and w and are
// written back as they are, and the impression counters are merged into their stored document
// (lazyImpressions). A full user's watched set and history are most of its ~30 kB, and most
// users of a batch only had impressions.
type userDoc struct {
	st   features.UserState
	h, w string // as stored; st.History and st.Watched are decoded only when a watch needs them
	i, r string // the impression counters' base ("" until read) and overlay as stored
	// The stored documents' keys (see docKeys) and the keys the batch's events may have added.
	wKeys, iKeys, wAdd, iAdd []string
	// lazy, for a user with impressions only in the batch, replaces st.ImpressionCounts.
	lazy *lazyImpressions
	// created: inserted by this batch (its first version, not always 1: see lockUsers).
	created bool
}

// decode fills u.st from the stored documents.
func (u *userDoc) decode() error {
	var err error
	if u.st.ImpressionCounts, u.iKeys, u.iAdd, err = decodeEffectiveImpressions(u.i, u.r, true); err != nil {
		return fmt.Errorf("decode impressions: %w", err)
	}
	if u.st.History, err = DecodeHistory(u.h); err != nil {
		return fmt.Errorf("decode history: %w", err)
	}
	if u.st.Watched, u.wKeys, err = decodeWatchedKeys(u.w, true); err != nil {
		return fmt.Errorf("decode watched: %w", err)
	}
	return nil
}

// raiseOverlays puts the raises of users with impressions only into their counters' overlay
// where it can take them (lazyImpressions.raise) and returns those overlays by user. The
// others' bases, which lockUsers does not read with an overlay on (a served list needs only
// the overlay, and reading the ~10 kB base of every user was half of the lock statement),
// are read here, in one round trip, for fold.
func (s *Store) raiseOverlays(ctx context.Context, c dbConn, userIDs []string, states map[string]*userDoc) (map[string]string, error) {
	if !s.overlay {
		return nil, nil
	}
	raised := map[string]string{}
	var bases []string
	for _, id := range userIDs {
		u := states[id]
		if u.lazy == nil {
			continue
		}
		r, ok, err := u.lazy.raise(s.cfg, s.imps)
		if err != nil {
			return nil, fmt.Errorf("impressions of %q: %w", id, err)
		}
		if ok {
			raised[id] = r
		} else if u.i == "" {
			bases = append(bases, id)
		}
	}
	if len(bases) == 0 {
		return raised, nil
	}
	rows, _ := c.Query(ctx, `SELECT user_id, impressions FROM feature_users WHERE user_id = ANY($1)`, bases)
	var id, im string
	if _, err := pgx.ForEachRow(rows, []any{&id, &im}, func() error {
		if u := states[id]; u != nil && u.lazy != nil {
			u.i, u.lazy.stored = im, im
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read impression bases: %w", err)
	}
	return raised, nil
}

// ErasedError is a batch holding new events of users that `users forget` erased, received up
// to their erasure time, which the caller's list of erased users (Forgotten) did not skip:
// the erasure was recorded after that list was read. Nothing was written; the caller takes
// those events out (Forgotten.Note, then Skip) and applies the rest.
type ErasedError struct {
	// Users are the batch's erased users, with their erasure time (forgotten_at_ms) as the
	// transaction read it.
	Users map[string]int64
}

func (e *ErasedError) Error() string {
	ids := sortedKeys(e.Users)
	if len(ids) > 5 {
		ids = append(ids[:5], fmt.Sprintf("and %d more", len(e.Users)-5))
	}
	return fmt.Sprintf("batch has events of users erased since the list of erased users was read (%s)", strings.Join(ids, ", "))
}

// erasedIn reports an ErasedError when a new event of the batch is of a user in erased
// (forgotten_users as read under the users' locks) and was received at or before the
// erasure time (Forgotten.Skip's rule: a receive time of 0, unknown, counts as before).
func erasedIn(b *Batch, a *Applied, erased map[string]int64) error {
	if len(erased) == 0 {
		return nil
	}
	var hit map[string]int64
	for i, e := range b.Events {
		if at, ok := erased[e.UserID]; ok && a.New[i] && e.ServerReceivedTsMs <= at {
			if hit == nil {
				hit = map[string]int64{}
			}
			hit[e.UserID] = at
		}
	}
	if hit == nil {
		return nil
	}
	return &ErasedError{Users: hit}
}

// forgottenCheckSQL reads which of the users are erased. lockUsers runs it after the users'
// rows are locked (or inserted), which makes a batch and `users forget` exclusive per user
// without relying on how old the caller's list is or how long the attempt lasts: Forget
// records an erasure in a transaction that first locks the users' feature rows (FOR UPDATE,
// in user order like a batch) and inserts, then deletes, a row for each user that has none
// (ON CONFLICT DO NOTHING waits for a batch's uncommitted insert of that user). So for each
// user one of the two holds the row (or its key) first:
//   - the batch: Forget's record waits for the batch to end, and the deletion comes after the
//     record commits (at the erasure time, or at once when the record waited past it), so
//     whatever the batch wrote is deleted (its Redis write, made after its commit, is deleted
//     by the first pass over the copy or by the second, 2 s later);
//   - Forget: the batch's FOR UPDATE (or its insert) waits until the record commits, and this
//     statement, which starts after it under READ COMMITTED (a snapshot per statement), sees the
//     row: the batch aborts with ErasedError.
//
// It must not be joined into the lock statement: that statement's snapshot is taken before it
// waits for a lock, so it would miss the erasure whose record it waited for.
const forgottenCheckSQL = `SELECT user_id, forgotten_at_ms FROM forgotten_users WHERE user_id = ANY($1::text[])`

// queueForgottenCheck queues forgottenCheckSQL for users, adding what it finds to erased.
func queueForgottenCheck(p *pipeline, users []string, erased map[string]int64) {
	p.query(func(rows pgx.Rows) error {
		var id string
		var at int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error { erased[id] = at; return nil }); err != nil {
			return fmt.Errorf("check erased users: %w", err)
		}
		return nil
	}, forgottenCheckSQL, users)
}

// lockUsers opens the transaction, records the batch's (event_id, user_id) keys (learning
// which are new) and loads and locks the users' states, in one round trip; erased gets the
// batch's users found in forgotten_users after their lock (forgottenCheckSQL). The decay meta is
// read in the same round trip, under the shared meta lock (m and merr are loadMeta's
// results). Users without a row yet are inserted and locked in a second round trip: the
// insert's unique index serialises two consumers on a brand-new user (the second fails,
// AppliedConcurrently, and Apply retries).
//
// The users come with a flag each (a watch in the batch) joined to the table, not as a
// second array tested with = ANY per row: a generic plan scans such an array whole for every
// row (10,000 users, half of them watching: 460 against 18 ms of PostgreSQL). Only a user
// with a watch has its history and watched set read, the bulk of a long-running user's row.
func (s *Store) lockUsers(ctx context.Context, c dbConn, b *Batch, a *Applied, erased map[string]int64) (states map[string]*userDoc, m Meta, merr, err error) {
	states = map[string]*userDoc{}
	p := &pipeline{}
	p.exec("begin apply", "BEGIN")
	// Every statement of the transaction reaches its rows by key (postgres.ByKeyPlans): in
	// the first 15 s of a fresh EndToEndFreshness run, plans cached while the tables were
	// empty read feature_users whole 1,900 times (6 million rows), and custom plans had the
	// user statements planned anew in most transactions.
	p.exec("lock meta", `SELECT pg_advisory_xact_lock_shared($1), `+postgres.ByKeyPlans, metaLockKey)
	var users []string
	userSet := map[string]bool{} // true: the user has a watch in the batch
	// lock queues on q the read and lock of the rows of those users that exist.
	lock := func(q *pipeline, who []string) {
		watches := make([]bool, len(who))
		for i, id := range who {
			watches[i] = userSet[id]
		}
		q.query(func(rows pgx.Rows) error {
			var id, ir string
			var h, w, im *string
			_, err := pgx.ForEachRow(rows, []any{&id, &h, &w, &im, &ir}, func() error {
				u := &userDoc{r: ir}
				if h != nil {
					u.h, u.w = *h, *w
				}
				if im != nil {
					u.i = *im
				}
				if !userSet[id] {
					u.lazy = &lazyImpressions{stored: u.i, recent: ir}
				} else if err := u.decode(); err != nil {
					return fmt.Errorf("user %q: %w", id, err)
				}
				states[id] = u
				return nil
			})
			if err != nil {
				return fmt.Errorf("lock users: %w", err)
			}
			return nil
		}, `SELECT u.user_id, CASE WHEN v.watch THEN u.history END, CASE WHEN v.watch THEN u.watched END,
  CASE WHEN v.watch OR NOT $3 OR u.impressions_recent = '' THEN u.impressions END, u.impressions_recent
FROM unnest($1::text[], $2::bool[]) AS v(id, watch) JOIN feature_users u ON u.user_id = v.id
ORDER BY u.user_id FOR UPDATE OF u`, who, watches, s.overlay)
	}
	if len(b.Events) > 0 {
		keys := make([]appliedKey, 0, len(b.Events))
		for _, e := range b.Events {
			keys = append(keys, appliedKey{e.EventID, e.UserID})
			userSet[e.UserID] = userSet[e.UserID] || e.Kind != features.KindImpression
		}
		// Sorted (bytewise, the key's COLLATE "C" order) so concurrent consumers insert keys
		// in the same order and cannot deadlock.
		slices.SortFunc(keys, func(x, y appliedKey) int {
			return cmp.Or(strings.Compare(x.id, y.id), strings.Compare(x.user, y.user))
		})
		keys = slices.Compact(keys)
		ids, idUsers := make([]string, len(keys)), make([]string, len(keys))
		for i, k := range keys {
			ids[i], idUsers[i] = k.id, k.user
		}
		users = sortedKeys(userSet)
		// A probe and a plain INSERT of the distinct keys instead of ON CONFLICT DO NOTHING:
		// speculative insertion cost PostgreSQL 47 against 39 ms per 10,000 new ids (a
		// million recorded, 10 alternated runs), ApplyFromPrefilledTopic 16.5 against 15.2
		// µs of PostgreSQL per event (medians of 6 alternated runs). A concurrent insert of
		// the same key fails the statement (AppliedConcurrently) and Apply retries.
		// A row with user '' is an event applied under global ids (migration 0022: the
		// previous release's consumer, whose inserts take the default, and rows backfilled
		// without a user): it stands for its id's event whatever the user, or a redelivery
		// after the upgrade would be applied twice. The key starts with event_id, so the
		// probe is still one descent per key (Index Cond event_id, user_id filtered).
		p.query(func(rows pgx.Rows) error {
			fresh := make(map[appliedKey]bool, len(keys))
			var k appliedKey
			if _, err := pgx.ForEachRow(rows, []any{&k.id, &k.user}, func() error { fresh[k] = true; return nil }); err != nil {
				return fmt.Errorf("record applied events: %w", err)
			}
			for i, e := range b.Events {
				if key := (appliedKey{e.EventID, e.UserID}); fresh[key] {
					a.New[i] = true
					delete(fresh, key) // the same user's repeat within the batch is a duplicate
				}
			}
			return nil
		}, `INSERT INTO feature_applied (event_id, user_id) SELECT u.id, u.usr FROM unnest($1::text[], $2::text[]) AS u(id, usr)
WHERE NOT EXISTS (SELECT 1 FROM feature_applied a WHERE a.event_id = u.id AND (a.user_id = u.usr OR a.user_id = '')) RETURNING event_id, user_id`, ids, idUsers)
		lock(p, users)
		queueForgottenCheck(p, users, erased)
	}
	p.query(func(rows pgx.Rows) error {
		var row pgx.Row = rowsRow{rows}
		m, merr = scanMeta(row)
		return nil
	}, metaSelect)
	if err := p.run(ctx, c); err != nil {
		return nil, m, nil, err
	}
	// Inserting every user of the batch first (ON CONFLICT DO NOTHING, or a NOT EXISTS probe)
	// cost PostgreSQL ~7 µs per user that exists, nearly all of them: a quarter of the
	// users' statement time with autolog at the cap (pg_stat_statements). Only users with a
	// new event are created: a redelivery of a trimmed user's events (TrimUsers; their
	// dedup records stay) would otherwise create an empty row for them, which nothing writes
	// to the copy.
	var missing []string
	for _, id := range users {
		if states[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 { // most batches of a mature stream have none
		fresh := make(map[string]bool, len(missing))
		for i, e := range b.Events {
			if a.New[i] {
				fresh[e.UserID] = true
			}
		}
		missing = slices.DeleteFunc(missing, func(id string) bool { return !fresh[id] })
	}
	if len(missing) == 0 {
		return states, m, merr, nil
	}
	p = &pipeline{}
	// A user the retention trimmed less than TrimSecondPass ago starts above the deleted row's
	// version: a hash of that row written back late (TrimUsers) must not hide the new one. A
	// user `users forget` erased starts above theirs: the copy refuses to create their hash
	// at or below it (the erasure marker, writeScript).
	p.exec("insert users", `INSERT INTO feature_users (user_id, version)
SELECT v.id, greatest(coalesce(t.version, 0), coalesce(f.version, 0)) FROM unnest($1::text[]) AS v(id)
LEFT JOIN feature_users_trimmed t ON t.user_id = v.id LEFT JOIN forgotten_users f ON f.user_id = v.id`, missing)
	lock(p, missing)
	queueForgottenCheck(p, missing, erased) // after their insert: see forgottenCheckSQL
	if err := p.run(ctx, c); err != nil {
		return nil, m, nil, err
	}
	for _, id := range missing {
		if u := states[id]; u != nil {
			u.created = true
		}
	}
	return states, m, merr, nil
}

// appliedKey is an event's key in feature_applied: clients may number events per user, so
// two users' events can share an event_id (api-contract §16.10).
type appliedKey struct{ id, user string }

// rowsRow reads the first row of rows as a pgx.Row (pgx.ErrNoRows when there is none).
type rowsRow struct{ rows pgx.Rows }

func (r rowsRow) Scan(dest ...any) error {
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// ensureMeta reads the landmarks (creating them at the first new event's time on the very
// first batch, or at the newest's where the first's would be out of its range) and reports
// errRebase when a new event would overflow a forward-decay exponent.
func (s *Store) ensureMeta(ctx context.Context, tx dbConn, b *Batch, a *Applied, m Meta, err error) error {
	first, maxTs, any := int64(0), int64(math.MinInt64), false
	for i, e := range b.Events {
		if a.New[i] {
			if !any {
				first = e.TsMs
			}
			any = true
			maxTs = max(maxTs, e.TsMs)
		}
	}
	if errors.Is(err, errNoMeta) {
		if !any {
			return nil
		}
		// A landmark the batch's newest event would overflow is put there at once, where a
		// rebase would move it: a rebase needs landmarks to move, and these are not committed
		// until the batch is (it rolls back to let the rebase run), so the first batch of a
		// backlog spanning more than the range failed at every retry.
		hls := [3]time.Duration{s.cfg.PopShortHalfLife, s.cfg.PopLongHalfLife, s.cfg.CovisHalfLife}
		var lm [3]int64
		var hl [3]float64
		for i, h := range hls {
			d := features.NewDecay(h, first)
			lm[i], hl[i] = first, d.HalfLifeMs
			if d.NeedsRebase(maxTs) {
				lm[i] = maxTs
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO feature_meta (lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`, lm[0], lm[1], lm[2], hl[0], hl[1], hl[2])
		if err != nil {
			return fmt.Errorf("create feature meta: %w", err)
		}
		m, err = loadMeta(ctx, tx)
	}
	if err != nil {
		return err
	}
	a.Meta = m
	if any && (m.Short.NeedsRebase(maxTs) || m.Long.NeedsRebase(maxTs) || m.Covis.NeedsRebase(maxTs)) {
		return errRebase{tsMs: maxTs}
	}
	return nil
}

// queueDLQ stores entries, appends to erased the indexes of those it leaves out for an
// erasure, and sets redelivered to the number it finds stored already.
func queueDLQ(p *pipeline, entries []DLQEntry, erased *[]int, redelivered *int) {
	n := len(entries)
	topic, key, hdr, payload, errs := make([]string, n), make([][]byte, n), make([]string, n), make([][]byte, n), make([]string, n)
	part, off := make([]int32, n), make([]int64, n)
	users, received := make([]*string, n), make([]int64, n)
	var candN []int64 // entry (1-based) and string of the payloads of entries without a key
	var candU []string
	for i, e := range entries {
		topic[i], part[i], off[i], key[i] = e.Topic, int32(e.Partition), e.Offset, e.Key
		hs := make(map[string]string, len(e.Headers))
		for k, v := range e.Headers {
			hs[dlqText(k)] = dlqText(v)
		}
		h, _ := json.Marshal(hs)
		hdr[i] = string(h)
		payload[i] = e.Payload
		if payload[i] == nil {
			payload[i] = []byte{}
		}
		errs[i] = dlqText(e.Error)
		// A key that is no text PostgreSQL stores is no user id forgotten_users can hold.
		if k := string(e.Key); len(e.Key) > 0 && dlqText(k) == k {
			users[i] = &k
		} else {
			// An entry without a key is judged by the ids its payload may hold, as Forget's
			// clearing judges it (eraseKeylessDLQ).
			for _, v := range payloadStrings(e.Payload, keylessDLQChecked) {
				candN, candU = append(candN, int64(i+1)), append(candU, v)
			}
		}
		received[i] = e.ReceivedMs
	}
	// A redelivered message finds its entry and adds none. A different payload at the same
	// coordinates is a message of a topic deleted and recreated since (it starts again at
	// offset 0): that entry's coordinates address nothing any more, so it is renamed out of
	// the way (its topic gets a suffix naming it) rather than the new message dropped. The
	// unique key stays (topic, partition, offset): the previous release's insert names it.
	p.exec("set aside dlq entries of a recreated topic", `UPDATE feature_dlq d
SET topic = d.topic || ' (recreated since; entry ' || d.id || ')'
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[]) AS v(t, p, o, b)
WHERE d.topic = v.t AND d.kafka_partition = v.p AND d.kafka_offset = v.o AND d.payload <> v.b`, topic, part, off, payload)
	// An entry of a user erased since the caller's list of erased users was read is not
	// stored. `users forget` clears the DLQ of the user's entries created up to the erasure
	// time, but sees only committed rows: a batch whose transaction began before the erasure
	// was recorded and committed after that clearing (an attempt held up by a lock, a rebase)
	// left the user's raw message in the DLQ for good. The lock is the one the record takes
	// exclusively (outbox.LockErasures), in a statement of its own, so the check below, in the
	// next one, has a snapshot taken after it: either the record committed before it and the
	// check sees the erasure, or it waits for this transaction, whose entries (created before
	// the erasure time) the clearing then sees.
	p.exec("wait for erasures being recorded", `SELECT pg_advisory_xact_lock_shared($1)`, int64(outbox.ErasureLockKey))
	// The entries left out are returned (their 1-based places), for the caller to count as
	// erased rather than stored, and how many of the others the conflict left out: those are
	// in the DLQ already, and counting them as stored again raised the stored counter (which
	// the DLQ alert watches) for each redelivery of one poison message.
	p.query(func(rows pgx.Rows) error {
		var gone []int64
		var dup int64
		_, err := pgx.ForEachRow(rows, []any{&gone, &dup}, func() error {
			for _, n := range gone {
				*erased = append(*erased, int(n-1))
			}
			*redelivered = int(dup)
			return nil
		})
		return err
	}, `WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::text[], $6::bytea[], $7::text[],
  $8::text[], $9::bigint[]) WITH ORDINALITY AS v(t, p, o, k, h, b, e, u, r, n)),
gone AS (SELECT n FROM v WHERE EXISTS (SELECT 1 FROM forgotten_users f WHERE f.user_id = v.u AND v.r <= f.forgotten_at_ms)
  UNION SELECT v.n FROM unnest($10::bigint[], $11::text[]) c(n, u) JOIN v ON v.n = c.n
    JOIN forgotten_users f ON f.user_id = c.u WHERE v.r <= f.forgotten_at_ms),
stored AS (INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, headers, payload, error)
SELECT t, p, o, k, h::jsonb, b, e FROM v WHERE n NOT IN (SELECT n FROM gone)
ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING
RETURNING 1)
SELECT coalesce((SELECT array_agg(n ORDER BY n) FROM gone), '{}'),
  (SELECT count(*) FROM v) - (SELECT count(*) FROM gone) - (SELECT count(*) FROM stored)`,
		topic, part, off, key, hdr, payload, errs, users, received, candN, candU)
}

// keylessDLQChecked bounds how many of a keyless entry's payload strings queueDLQ checks
// against forgotten_users (one primary-key lookup each): an event's user_id is among its
// first few.
const keylessDLQChecked = 64

// dlqText makes s storable as PostgreSQL text and inside jsonb, which refuse invalid UTF-8
// and NUL (binary Kafka headers carry both).
func dlqText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
