package featurestore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// The advisory locks a trim pass holds: one consumer trims items at a time, and one users,
// the others skip their pass.
const (
	trimLockKey     = 7_254_391_003
	userTrimLockKey = 7_254_391_004
)

// TrimSecondPass is how long after a trim its rows' Redis keys are deleted again. A writer of
// the copy that read a row before the trim committed and wrote it after the first deletion (a
// batch's write after its commit, a journal heal, a read-through of a user) has landed by
// then; a repopulation, which copies a snapshot for minutes, is waited for (the pass is put
// off while one runs).
const TrimSecondPass = time.Minute

// trimLockTimeout bounds each lock wait of an item trim pass. The rows it locks are inactive,
// but a batch that does touch one waits for the pass: the pass gives up (and tries again at
// the next) rather than hold such a batch.
const trimLockTimeout = "2s"

// trimTarget is what a trim of items and one of users differ in; trim, trimPage,
// trimSecondPass and resync do the rest the same way.
type trimTarget struct {
	what    string // "items", "users": messages
	table   string // the rows trimmed, by their primary key id
	id      string
	trimmed string // the ids trimmed whose Redis keys await the second pass (trimmed_at)
	// version, when set, is table's version column, which trimmed keeps as the deleted
	// row's (see TrimUsers).
	version string
	lockKey int64
	// inactive is the criterion, SQL over a row of table: $3 is the cut (ms, PostgreSQL's
	// clock: rows no batch wrote since), $4... what args returns.
	inactive string
	// args returns the criterion's other arguments, in the trim's transaction; false: nothing
	// can be trimmed (no batch ever ran).
	args func(ctx context.Context, tx pgx.Tx, cut int64) ([]any, bool, error)
	// lockRows locks the candidates' rows (after lockFirst): wait for a batch holding one
	// ("FOR UPDATE", with trimLockTimeout), or pass it by ("FOR UPDATE SKIP LOCKED").
	lockRows string
	// lockFirst, when set, locks what a batch locks before the rows; deleted, when set,
	// deletes what goes with the rows deleted.
	lockFirst, deleted func(ctx context.Context, tx pgx.Tx, ids []string) error
	// keys are the Redis commands that delete the ids' keys; back reads, whole for the copy,
	// those of the ids PostgreSQL has and whatever the deletion (its results: deleted) left
	// the copy short of.
	keys func(s *Store, ids []string) rueidis.Commands
	back func(ctx context.Context, s *Store, tx pgx.Tx, ids []string, deleted []rueidis.RedisResult) (*redisWrite, error)
	// wrapped, when set, runs after a pass whose page reached the end of the table (and after
	// every pass with the retention off: there are no cycles then).
	wrapped func(s *Store, ctx context.Context) error
}

// TrimItems deletes up to page inactive items (feature_items and feature_neighbours rows,
// their Redis hashes and neighbour lists, their places in the global lists) and returns how
// many it deleted. An item is inactive when no batch wrote its row for retention (an
// impression or a watch of it, or a change of its neighbour list's length: last_active_ms,
// PostgreSQL's clock) and its long popularity is below what one full watch (weight 1)
// retention ago weighs now, so a popular item outlives a quiet spell. Each call examines the
// next page of items in id order (wrapping around), so a pass costs the same whatever the
// table's size, and a full cycle takes rows/page calls. With retention 0 (turned off) it
// deletes nothing and only finishes the second passes of earlier trims.
//
// One consumer trims at a time (an advisory lock; the others' calls return 0). The rows are
// locked in the batches' order (lists, then items) and the criterion is checked again under
// the locks, so an item a batch wrote meanwhile stays. A batch that writes an item after its
// deletion creates it anew (its Redis write is the whole row). The Redis keys go after the
// commit, then every key of an item back in PostgreSQL since is written again whole
// (resync); TrimSecondPass later, the same is done once more, for writers that read the row
// before the deletion and wrote the copy after the first pass (feature_items_trimmed holds
// the items until then, so a crash in between leaves the work to the next pass). The places
// trimmed items leave in the global lists go to the next items of PostgreSQL's tops: in the
// same pass on a small table, at the end of the cycle on a large one (refillInline).
//
// Entries naming a trimmed item in other items' neighbour lists stay: finding them needs a
// scan of every list, and they fade as any neighbour does (decayed, cut below the top M).
// /reco scores such a neighbour with zero statistics, like any item it has none for.
func (s *Store) TrimItems(ctx context.Context, retention time.Duration, page int) (int, error) {
	return s.trim(ctx, &itemTrim, retention, page)
}

// TrimUsers deletes up to page inactive users (their feature_users rows and Redis hashes)
// and returns how many it deleted. A user is inactive when no batch wrote their row for
// retention (no new event of theirs: last_active_ms, PostgreSQL's clock). Their events,
// dedup records and contribution to the items' statistics stay: this is not an erasure
// (nothing goes to forgotten_users), and an event of theirs applied later, whenever it was
// received, creates them anew with that event alone. Pages, the lock, the Redis passes and
// retention 0 are TrimItems's.
//
// A batch holding a user's row is writing an event of theirs: the trim passes such rows by
// (SKIP LOCKED) instead of waiting, so it never holds up a batch for longer than its own
// short transaction, and never waits in a cycle with one or with `users forget`. A batch that
// locks the user after the trim's commit finds no row and creates it (every document written
// whole, in PostgreSQL and in the copy). The copy's merge takes a user's hash only to a
// higher version, so a hash of the trimmed user written back late (a read-through or a
// journal heal that read the row before the deletion) would hide the new row's first
// versions: feature_users_trimmed keeps the deleted row's version until the second pass, and
// a user created again meanwhile starts above it (lockUsers); each Redis pass deletes the
// hash, then writes again whole every user PostgreSQL has back by then. After the second pass
// a user's version starts over at 1.
func (s *Store) TrimUsers(ctx context.Context, retention time.Duration, page int) (int, error) {
	return s.trim(ctx, &userTrim, retention, page)
}

var itemTrim = trimTarget{
	what: "items", table: "feature_items", id: "item_id", trimmed: "feature_items_trimmed", lockKey: trimLockKey,
	inactive: "last_active_ms < $3 AND pop_long < $4",
	args: func(ctx context.Context, tx pgx.Tx, cut int64) ([]any, bool, error) {
		// Shared, as a batch holds it: a rebase must not rescale pop_long between the
		// threshold computed here and the deletion.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, metaLockKey); err != nil {
			return nil, false, fmt.Errorf("lock feature meta: %w", err)
		}
		m, err := loadMeta(ctx, tx)
		if errors.Is(err, errNoMeta) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		return []any{m.Long.Forward(1, cut)}, true, nil
	},
	lockRows: "FOR UPDATE",
	// Lists before items, each in id order, as a batch locks them: a batch and a trim never
	// wait for each other in a cycle.
	lockFirst: func(ctx context.Context, tx pgx.Tx, ids []string) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_neighbours WHERE item_id = ANY($1) ORDER BY item_id FOR UPDATE`, ids); err != nil {
			return fmt.Errorf("lock neighbour lists of inactive items: %w", err)
		}
		return nil
	},
	deleted: func(ctx context.Context, tx pgx.Tx, ids []string) error {
		if _, err := tx.Exec(ctx, `DELETE FROM feature_neighbours WHERE item_id = ANY($1)`, ids); err != nil {
			return fmt.Errorf("delete neighbour lists of inactive items: %w", err)
		}
		return nil
	},
	// One key per command (a Redis Cluster would hold the keys in different slots); the
	// global lists take a chunk of members per command.
	keys: func(s *Store, ids []string) rueidis.Commands {
		const chunk = 1000
		cmds := make(rueidis.Commands, 0, 2*len(ids)+3*(len(ids)/chunk+1))
		for _, id := range ids {
			cmds = append(cmds, s.rd.B().Unlink().Key(s.keys.Item(id)).Build(), s.rd.B().Unlink().Key(s.keys.Neighbours(id)).Build())
		}
		for lo := 0; lo < len(ids); lo += chunk {
			members := ids[lo:min(lo+chunk, len(ids))]
			for _, key := range []string{s.keys.PopShort, s.keys.PopLong, s.keys.Fresh} {
				cmds = append(cmds, s.rd.B().Zrem().Key(key).Member(members...).Build())
			}
		}
		return cmds
	},
	back: func(ctx context.Context, s *Store, tx pgx.Tx, ids []string, deleted []rueidis.RedisResult) (*redisWrite, error) {
		rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, ids)
		w := &redisWrite{lists: true}
		var err error
		if w.items, err = scanItems(rows); err != nil {
			return w, err
		}
		back := make([]string, len(w.items))
		for i, it := range w.items {
			back[i] = it.id
		}
		if len(back) > 0 {
			if w.nb, err = readNeighbours(ctx, tx, back); err != nil {
				return w, err
			}
		}
		// removed[l]: the members the deletion took from global list l (keys' ZREMs follow
		// the two UNLINKs per item, three lists per chunk). A list that lost members has
		// places the next items of PostgreSQL's top take: they were cut below it, and no
		// write puts them back (a first seen never moves again, a popularity only with a
		// watch). Written with the lists (w.lists), they join at their values and the script
		// cuts each list to its size again.
		var removed [3]int64
		for i, r := range deleted[2*len(ids):] {
			n, _ := r.AsInt64()
			removed[i%3] += n
		}
		refill, err := s.refillInline(ctx, tx, removed, back)
		w.items = append(w.items, refill...)
		return w, err
	},
	wrapped: (*Store).refillOwed,
}

var userTrim = trimTarget{
	what: "users", table: "feature_users", id: "user_id", trimmed: "feature_users_trimmed", version: "version", lockKey: userTrimLockKey,
	inactive: "last_active_ms < $3",
	args:     func(context.Context, pgx.Tx, int64) ([]any, bool, error) { return nil, true, nil },
	// A row a batch holds is active: passed by, never waited for.
	lockRows: "FOR UPDATE SKIP LOCKED",
	// One key per command: in a Redis Cluster the users' hashes live in different slots.
	keys: func(s *Store, ids []string) rueidis.Commands {
		cmds := make(rueidis.Commands, len(ids))
		for i, id := range ids {
			cmds[i] = s.rd.B().Unlink().Key(s.keys.User(id)).Build()
		}
		return cmds
	},
	back: func(ctx context.Context, _ *Store, tx pgx.Tx, ids []string, _ []rueidis.RedisResult) (*redisWrite, error) {
		users, err := readUsers(ctx, tx, ids)
		return &redisWrite{users: users}, err
	},
}

// trim runs one pass of t: the second pass over the rows trimmed TrimSecondPass ago, then
// the deletion of the next page's inactive rows and of their Redis keys. A retention of 0
// (the retention turned off) runs the second pass alone: rows trimmed before it was turned
// off still get theirs, or a late write of their keys (an old user hash at a version above
// the row a returning user gets, an item hash with no row) would stay in the copy for good.
func (s *Store) trim(ctx context.Context, t *trimTarget, retention time.Duration, page int) (int, error) {
	if err := s.trimSecondPass(ctx, t); err != nil {
		return 0, err
	}
	if retention <= 0 {
		if t.wrapped != nil {
			return 0, t.wrapped(s, ctx)
		}
		return 0, nil
	}
	ids, wrapped, err := s.trimPage(ctx, t, retention, page)
	if err != nil {
		return 0, err
	}
	if len(ids) > 0 {
		if s.trimHooks.trimmed != nil {
			s.trimHooks.trimmed(ids)
		}
		if err := s.resync(ctx, t, ids); err != nil {
			return len(ids), fmt.Errorf("delete trimmed %s from the redis copy (the second pass retries): %w", t.what, err)
		}
	}
	if wrapped && t.wrapped != nil {
		if err := t.wrapped(s, ctx); err != nil {
			return len(ids), err
		}
	}
	return len(ids), nil
}

// trimPage deletes the inactive rows of the next page in PostgreSQL and returns their ids,
// and whether the page reached the end of the table (the next pass starts over).
func (s *Store) trimPage(ctx context.Context, t *trimTarget, retention time.Duration, page int) ([]string, bool, error) {
	tx, err := s.pg.Begin(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("begin %s trim: %w", t.what, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	var locked bool
	var nowMs int64
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1), (extract(epoch FROM now()) * 1000)::bigint`,
		t.lockKey).Scan(&locked, &nowMs); err != nil {
		return nil, false, fmt.Errorf("%s trim lock: %w", t.what, err)
	}
	if !locked {
		return nil, false, nil
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+trimLockTimeout+`'`); err != nil {
		return nil, false, fmt.Errorf("%s trim lock timeout: %w", t.what, err)
	}
	cut := nowMs - retention.Milliseconds()
	extra, ok, err := t.args(ctx, tx, cut)
	if err != nil || !ok {
		return nil, false, err
	}
	args := append([]any{nil, page, cut}, extra...)
	s.mu.Lock()
	args[0] = s.trimAfter[t.table]
	s.mu.Unlock()
	rows, _ := tx.Query(ctx, `SELECT `+t.id+`, `+t.inactive+` FROM `+t.table+`
WHERE `+t.id+` > $1 ORDER BY `+t.id+` LIMIT $2`, args...)
	var cands []string
	var id string
	var inactive bool
	n := 0
	if _, err := pgx.ForEachRow(rows, []any{&id, &inactive}, func() error {
		n++
		if inactive {
			cands = append(cands, id)
		}
		return nil
	}); err != nil {
		return nil, false, fmt.Errorf("scan %s for retention: %w", t.what, err)
	}
	next := id
	if n < page {
		next = "" // the end: the next pass starts over
	}
	if s.trimHooks.scanned != nil {
		s.trimHooks.scanned(cands)
	}
	var deleted []string
	var versions []int64
	if len(cands) > 0 {
		if t.lockFirst != nil {
			if err := t.lockFirst(ctx, tx, cands); err != nil {
				return nil, false, err
			}
		}
		// The criterion again, under the row locks: a batch that committed since the scan
		// keeps its rows.
		args[0] = cands
		rows, _ := tx.Query(ctx, `DELETE FROM `+t.table+` WHERE `+t.id+` IN (
  SELECT `+t.id+` FROM `+t.table+` WHERE `+t.id+` = ANY($1) AND `+t.inactive+` ORDER BY `+t.id+` LIMIT $2 `+t.lockRows+`)
RETURNING `+t.id+`, `+cmp.Or(t.version, "0"), args...)
		var v int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error {
			deleted, versions = append(deleted, id), append(versions, v)
			return nil
		}); err != nil {
			return nil, false, fmt.Errorf("delete inactive %s: %w", t.what, err)
		}
	}
	if len(deleted) > 0 {
		if t.deleted != nil {
			if err := t.deleted(ctx, tx, deleted); err != nil {
				return nil, false, err
			}
		}
		record := `INSERT INTO ` + t.trimmed + ` (` + t.id + `) SELECT unnest($1::text[])
ON CONFLICT (` + t.id + `) DO UPDATE SET trimmed_at = now()`
		rargs := []any{deleted}
		if t.version != "" {
			record = `INSERT INTO ` + t.trimmed + ` AS t (` + t.id + `, version) SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (` + t.id + `) DO UPDATE SET trimmed_at = now(), version = GREATEST(t.version, excluded.version)`
			rargs = append(rargs, versions)
		}
		if _, err := tx.Exec(ctx, record, rargs...); err != nil {
			return nil, false, fmt.Errorf("record trimmed %s: %w", t.what, err)
		}
	}
	if s.trimHooks.locked != nil {
		s.trimHooks.locked(deleted)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, false, fmt.Errorf("commit %s trim: %w", t.what, err)
	}
	s.mu.Lock()
	if s.trimAfter == nil {
		s.trimAfter = map[string]string{}
	}
	s.trimAfter[t.table] = next
	s.mu.Unlock()
	return deleted, next == "", nil
}

// trimSecondPass deletes again the Redis keys of the rows trimmed TrimSecondPass ago or more,
// unless a repopulation is running (it may copy a snapshot taken before the trim: the pass
// waits for it to end).
func (s *Store) trimSecondPass(ctx context.Context, t *trimTarget) error {
	age := fmt.Sprintf("%d milliseconds", TrimSecondPass.Milliseconds())
	rows, _ := s.pg.Query(ctx, `SELECT `+t.id+` FROM `+t.trimmed+` WHERE trimmed_at < now() - $1::interval
ORDER BY `+t.id+` LIMIT 10000`, age)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read trimmed %s: %w", t.what, err)
	}
	if len(ids) == 0 {
		return nil
	}
	if s.rd != nil {
		n, err := s.rd.Do(ctx, s.rd.B().Exists().Key(s.keys.Lock).Build()).AsInt64()
		if err != nil {
			return fmt.Errorf("check for a repopulation of the redis copy: %w", err)
		}
		if n == 1 {
			return nil
		}
		if err := s.resync(ctx, t, ids); err != nil {
			return fmt.Errorf("second pass over trimmed %s in the redis copy: %w", t.what, err)
		}
	}
	// A row trimmed again since (its time moved) waits for its own second pass.
	if _, err := s.pg.Exec(ctx, `DELETE FROM `+t.trimmed+` WHERE `+t.id+` = ANY($1) AND trimmed_at < now() - $2::interval`,
		ids, age); err != nil {
		return fmt.Errorf("clear trimmed %s: %w", t.what, err)
	}
	return nil
}

// resync makes the Redis copy of rows agree with PostgreSQL: it deletes their keys (and, for
// items, their places in the global lists), then writes whole those PostgreSQL has (back
// since a trim). In that order, a batch's write races nothing: one that landed before the
// deletion committed before the read that follows it, which writes its values again; one
// that lands after merges with them (item values only grow, a user's hash takes the higher
// version).
func (s *Store) resync(ctx context.Context, t *trimTarget, ids []string) error {
	if s.rd == nil || len(ids) == 0 {
		return nil
	}
	deleted := s.rd.DoMulti(ctx, t.keys(s, ids)...)
	for _, r := range deleted {
		if err := r.Error(); err != nil {
			return fmt.Errorf("delete %s from the redis copy: %w", t.what, err)
		}
	}
	if s.trimHooks.deleted != nil {
		s.trimHooks.deleted(ids)
	}
	tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin read of %s back: %w", t.what, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	w, err := t.back(ctx, s, tx, ids, deleted)
	if err != nil {
		return err
	}
	return s.writeBack(ctx, tx, w)
}

// writeBack writes w, read in tx (read-only, rolled back here), to the copy.
func (s *Store) writeBack(ctx context.Context, tx pgx.Tx, w *redisWrite) error {
	if w.empty() {
		return nil
	}
	m, err := loadMeta(ctx, tx)
	if err != nil {
		return err
	}
	_ = tx.Rollback(ctx)
	err = s.write(ctx, m, w)
	var ee *epochError
	if errors.As(err, &ee) {
		if ee.behind() {
			// The copy must be repopulated, from a snapshot that has these rows.
			return s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error()
		}
		return nil // a newer generation's repopulation reads them
	}
	return err
}

// refillInlineRows is the largest feature_items (pg_class.reltuples, as ANALYZE last
// estimated it) whose global lists a trim refills in the pass that took members from them.
// No index serves the tops (0007), so each list read is a scan of every item with a top-N
// sort: measured ~150 ms per million rows on one core, so up to ~0.5 s for the three here;
// on tens of millions of rows each takes seconds, past the session's statement_timeout.
const refillInlineRows = 1_000_000

// refillInline returns the rows of PostgreSQL's tops of the global lists that lost members
// (removed), but for the items in skip, when the table is small enough to read them in this
// pass (refillInlineRows). Otherwise it leaves the lists short and owes them a refill at the
// end of the trim's cycle (refillOwed): one read of the tops per cycle (rows/page passes),
// so a pass costs the same whatever the table's size.
func (s *Store) refillInline(ctx context.Context, tx pgx.Tx, removed [3]int64, skip []string) ([]itemRow, error) {
	if removed == ([3]int64{}) {
		return nil, nil
	}
	var rows float64
	if err := tx.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = 'feature_items'::regclass`).Scan(&rows); err != nil {
		return nil, fmt.Errorf("estimate the items for a refill of the global lists: %w", err)
	}
	// -1: never analyzed (a new table, small until autovacuum's first ANALYZE).
	if rows <= s.refillInlineRows {
		return s.readTops(ctx, tx, removed, skip)
	}
	s.mu.Lock()
	for l, n := range removed {
		s.listsOwed[l] = s.listsOwed[l] || n > 0
	}
	s.mu.Unlock()
	return nil, nil
}

// refillOwed writes to the copy PostgreSQL's tops of the global lists trims left short since
// the last refill (refillInline). The scans run without the session's statement_timeout
// (ctx still bounds them), in a transaction of their own that reads the ids only: the rows
// are read again, by primary key, just before the write, as resync does, so the write cannot
// bring back an item another consumer trimmed (and second-passed) while the scans ran.
func (s *Store) refillOwed(ctx context.Context) error {
	s.mu.Lock()
	owed := s.listsOwed
	s.listsOwed = [3]bool{}
	s.mu.Unlock()
	var removed [3]int64
	for l, o := range owed {
		if o {
			removed[l] = 1
		}
	}
	if removed == ([3]int64{}) || s.rd == nil {
		return nil
	}
	err := s.refillLists(ctx, removed)
	if err != nil {
		s.mu.Lock()
		for l, o := range owed {
			s.listsOwed[l] = s.listsOwed[l] || o
		}
		s.mu.Unlock()
		return fmt.Errorf("refill the global lists of the redis copy after trims (the next cycle retries): %w", err)
	}
	return nil
}

func (s *Store) refillLists(ctx context.Context, removed [3]int64) error {
	ids, err := func() ([]string, error) {
		tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			return nil, fmt.Errorf("begin read of the global lists' tops: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
			return nil, fmt.Errorf("lift the statement timeout for the global lists' tops: %w", err)
		}
		return s.topIDs(ctx, tx, removed, nil)
	}()
	if err != nil || len(ids) == 0 {
		return err
	}
	tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin read of the global lists' items: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, ids)
	items, err := scanItems(rows)
	if err != nil {
		return err
	}
	return s.writeBack(ctx, tx, &redisWrite{items: items, lists: true})
}

// readTops reads the rows of PostgreSQL's top of each global list that lost members
// (removed, in the order pop:s, pop:l, fresh), but for the items in skip.
func (s *Store) readTops(ctx context.Context, tx pgx.Tx, removed [3]int64, skip []string) ([]itemRow, error) {
	ids, err := s.topIDs(ctx, tx, removed, skip)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, ids)
	return scanItems(rows)
}

// topIDs reads the ids of PostgreSQL's top of each global list that lost members (removed),
// but for the items in skip: a scan of feature_items per list.
func (s *Store) topIDs(ctx context.Context, tx pgx.Tx, removed [3]int64, skip []string) ([]string, error) {
	tops := [3]string{
		`SELECT item_id FROM feature_items WHERE pop_short > 0 ORDER BY pop_short DESC, item_id LIMIT $1`,
		`SELECT item_id FROM feature_items WHERE pop_long > 0 ORDER BY pop_long DESC, item_id LIMIT $1`,
		`SELECT item_id FROM feature_items ORDER BY first_seen_ms DESC, item_id LIMIT $1`,
	}
	sizes := [3]int{s.cfg.TopListSize, s.cfg.TopListSize, s.cfg.FreshSize}
	seen := make(map[string]bool, len(skip))
	for _, id := range skip {
		seen[id] = true
	}
	var ids []string
	for l, q := range tops {
		if removed[l] == 0 {
			continue
		}
		rows, _ := tx.Query(ctx, q, sizes[l])
		top, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read the top of a global list: %w", err)
		}
		for _, id := range top {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// resyncStale makes the keys of a copy of PostgreSQL's generation that PostgreSQL no longer
// backs agree with it again (resync): a user or item hash, a neighbour list, or a global
// list's member whose row is gone, and a hash ahead of its row (a user at a higher version, an
// item with more impressions or watches, an earlier first seen or a later list version than
// PostgreSQL now has: values only move that way within a generation, so such a hash is of a
// row deleted since and created anew). A same-generation repopulation merges into the keys
// it finds, and a Redis that restarted from an older snapshot, or a replica that missed
// writes, brings back the keys of users and items trimmed since (after their second pass):
// the merge kept them, and a returning user's or item's new row stayed hidden behind the
// old hash. Each key is read before PostgreSQL is, so a hash a batch wrote since is never
// ahead of the row read after it. It scans every key under the prefix, page by page under
// the lock (renewed), as a new generation's deletion does.
func (s *Store) resyncStale(ctx context.Context, lk *repopLock) error {
	var cursor uint64
	match := escapeGlob(s.keys.Prefix) + "*"
	for {
		e, err := s.rd.Do(ctx, s.rd.B().Scan().Cursor(cursor).Match(match).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return fmt.Errorf("scan redis keys for stale rows: %w", err)
		}
		var users []string
		itemSet := map[string]bool{}
		for _, k := range e.Elements {
			rest, ok := strings.CutPrefix(k, s.keys.Prefix)
			if !ok {
				continue
			}
			if id, ok := strings.CutPrefix(rest, "u:"); ok {
				users = append(users, id)
			} else if id, ok := strings.CutPrefix(rest, "i:"); ok {
				itemSet[id] = true
			} else if id, ok := strings.CutPrefix(rest, "nb:"); ok {
				itemSet[id] = true
			}
		}
		if err := s.resyncStalePage(ctx, lk, users, sortedKeys(itemSet)); err != nil {
			return err
		}
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	// Members of the global lists whose item has no hash any more are not among the keys.
	itemSet := map[string]bool{}
	for _, key := range []string{s.keys.PopShort, s.keys.PopLong, s.keys.Fresh} {
		members, err := s.rd.Do(ctx, s.rd.B().Zrange().Key(key).Min("0").Max("-1").Build()).AsStrSlice()
		if err != nil {
			return fmt.Errorf("read global list %s for stale rows: %w", key, err)
		}
		for _, m := range members {
			itemSet[m] = true
		}
	}
	if err := s.resyncStalePage(ctx, lk, nil, sortedKeys(itemSet)); err != nil {
		return err
	}
	// A large table's refill was left owed (refillInline): the copy is being completed now,
	// under the lock renewed meanwhile. The refill scans every item per list, tens of seconds
	// on tens of millions of rows: past lockTTL another heal pass took the lock and copied
	// everything again, and this repopulation failed at its ready marker.
	return lk.while(ctx, func() error { return s.refillOwed(ctx) })
}

// resyncStalePage resyncs those of users and items that resyncStale's rule finds stale.
func (s *Store) resyncStalePage(ctx context.Context, lk *repopLock, users, items []string) error {
	// Renewed at every page, stale rows or not: a scan of a large copy outlasts lockTTL.
	if err := lk.keep(ctx); err != nil {
		return err
	}
	if len(users) == 0 && len(items) == 0 {
		return nil
	}
	var staleUsers, staleItems []string
	if len(users) > 0 {
		cmds := make(rueidis.Commands, len(users))
		for i, id := range users {
			cmds[i] = s.rd.B().Hget().Key(s.keys.User(id)).Field("v").Build()
		}
		var ids []string
		var versions []int64
		for i, r := range s.rd.DoMulti(ctx, cmds...) {
			v, err := r.AsInt64()
			if rueidis.IsRedisNil(err) {
				v, err = -1, nil // gone since the scan, or no version: only a missing row counts
			}
			if notCopyKey(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read user versions of the redis copy: %w", err)
			}
			ids, versions = append(ids, users[i]), append(versions, v)
		}
		rows, _ := s.pg.Query(ctx, `SELECT v.id FROM unnest($1::text[], $2::bigint[]) AS v(id, version)
LEFT JOIN feature_users u ON u.user_id = v.id WHERE u.user_id IS NULL OR u.version < v.version`, ids, versions)
		var err error
		if staleUsers, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("find stale users of the redis copy: %w", err)
		}
	}
	if len(items) > 0 {
		fields := []string{"imp", "wat", "fs", "nv"}
		cmds := make(rueidis.Commands, len(items))
		for i, id := range items {
			cmds[i] = s.rd.B().Hmget().Key(s.keys.Item(id)).Field(fields...).Build()
		}
		// A field the hash lacks moves nothing: 0 for the counts and the list version, the
		// largest first seen.
		var ids []string
		var vals [4][]float64
		for i, r := range s.rd.DoMulti(ctx, cmds...) {
			got, err := r.ToArray()
			if notCopyKey(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read item values of the redis copy: %w", err)
			}
			ids = append(ids, items[i])
			x := [4]float64{2: math.MaxFloat64}
			for f, m := range got {
				if v, err := m.AsFloat64(); err == nil {
					x[f] = v
				}
			}
			for f := range vals {
				vals[f] = append(vals[f], x[f])
			}
		}
		rows, _ := s.pg.Query(ctx, `SELECT v.id FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[]) AS v(id, imp, wat, fs, nv)
LEFT JOIN feature_items f ON f.item_id = v.id LEFT JOIN feature_neighbours n ON n.item_id = v.id
WHERE f.item_id IS NULL OR f.impressions < v.imp OR f.watches < v.wat OR f.first_seen_ms > v.fs OR coalesce(n.version, 0) < v.nv`,
			ids, vals[0], vals[1], vals[2], vals[3])
		var err error
		if staleItems, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("find stale items of the redis copy: %w", err)
		}
	}
	if len(staleUsers) == 0 && len(staleItems) == 0 {
		return nil
	}
	if err := s.resync(ctx, &userTrim, staleUsers); err != nil {
		return fmt.Errorf("resync stale users of the redis copy: %w", err)
	}
	if err := s.resync(ctx, &itemTrim, staleItems); err != nil {
		return fmt.Errorf("resync stale items of the redis copy: %w", err)
	}
	s.log.WarnContext(ctx, "the redis copy held users or items PostgreSQL no longer has (trimmed or erased since a snapshot it was restored from); deleted and written again from PostgreSQL",
		"users", len(staleUsers), "items", len(staleItems))
	return nil
}

// notCopyKey reports whether err, the reply to a read of a key of the copy's layout, shows
// it is none of the copy's: a key of another application sharing the namespace (an empty
// --redis.key-prefix on a shared Redis), of another type or with a version that is no
// number. resyncStale passes such a key by: it failed every same-generation repopulation,
// and with it the copy, served from PostgreSQL after every restart of Redis.
func notCopyKey(err error) bool {
	var re *rueidis.RedisError
	if errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE") {
		return true
	}
	var ne *strconv.NumError
	return errors.As(err, &ne)
}
