package featurestore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// trimLockKey is the advisory lock a trim pass holds: one consumer trims at a time, the
// others skip their pass.
const trimLockKey = 7_254_391_003

// ItemTrimSecondPass is how long after a trim its items' Redis keys are deleted again. A
// writer of the copy that read an item's row before the trim committed and wrote it after the
// first deletion (a batch's write after its commit, a journal heal) has landed by then; a
// repopulation, which copies a snapshot for minutes, is waited for (the pass is put off while
// one runs).
const ItemTrimSecondPass = time.Minute

// trimLockTimeout bounds each lock wait of a trim pass. The rows it locks are inactive, but
// a batch that does touch one waits for the pass: the pass gives up (and tries again at the
// next) rather than hold such a batch.
const trimLockTimeout = "2s"

// TrimItems deletes up to page inactive items (feature_items and feature_neighbours rows,
// their Redis hashes and neighbour lists, their places in the global lists) and returns how
// many it deleted. An item is inactive when no batch wrote its row for retention (an
// impression or a watch of it, or a change of its neighbour list's length: last_active_ms,
// PostgreSQL's clock) and its long popularity is below what one full watch (weight 1)
// retention ago weighs now, so a popular item outlives a quiet spell. Each call examines the
// next page of items in id order (wrapping around), so a pass costs the same whatever the
// table's size, and a full cycle takes rows/page calls.
//
// One consumer trims at a time (an advisory lock; the others' calls return 0). The rows are
// locked in the batches' order (lists, then items) and the criterion is checked again under
// the locks, so an item a batch wrote meanwhile stays. A batch that writes an item after its
// deletion creates it anew (its Redis write is the whole row). The Redis keys go after the
// commit, then every key of an item back in PostgreSQL since is written again whole
// (resyncItems); ItemTrimSecondPass later, the same is done once more, for writers that read
// the row before the deletion and wrote the copy after the first pass (feature_items_trimmed
// holds the items until then, so a crash in between leaves the work to the next pass).
//
// Entries naming a trimmed item in other items' neighbour lists stay: finding them needs a
// scan of every list, and they fade as any neighbour does (decayed, cut below the top M).
// /reco scores such a neighbour with zero statistics, like any item it has none for.
func (s *Store) TrimItems(ctx context.Context, retention time.Duration, page int) (int, error) {
	if err := s.trimSecondPass(ctx); err != nil {
		return 0, err
	}
	ids, err := s.trimPage(ctx, retention, page)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	if s.trimHooks.trimmed != nil {
		s.trimHooks.trimmed(ids)
	}
	if err := s.resyncItems(ctx, ids); err != nil {
		return len(ids), fmt.Errorf("delete trimmed items from the redis copy (the second pass retries): %w", err)
	}
	return len(ids), nil
}

// trimPage deletes the inactive items of the next page in PostgreSQL and returns them.
func (s *Store) trimPage(ctx context.Context, retention time.Duration, page int) ([]string, error) {
	tx, err := s.pg.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin item trim: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	var locked bool
	var nowMs int64
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1), (extract(epoch FROM now()) * 1000)::bigint`,
		trimLockKey).Scan(&locked, &nowMs); err != nil {
		return nil, fmt.Errorf("item trim lock: %w", err)
	}
	if !locked {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+trimLockTimeout+`'`); err != nil {
		return nil, fmt.Errorf("item trim lock timeout: %w", err)
	}
	// Shared, as a batch holds it: a rebase must not rescale pop_long between the threshold
	// computed here and the deletion.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, metaLockKey); err != nil {
		return nil, fmt.Errorf("lock feature meta: %w", err)
	}
	m, err := loadMeta(ctx, tx)
	if errors.Is(err, errNoMeta) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cut := nowMs - retention.Milliseconds()
	thr := m.Long.Forward(1, cut)
	s.mu.Lock()
	after := s.trimAfter
	s.mu.Unlock()
	rows, _ := tx.Query(ctx, `SELECT item_id, last_active_ms < $2 AND pop_long < $3 FROM feature_items
WHERE item_id > $1 ORDER BY item_id LIMIT $4`, after, cut, thr, page)
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
		return nil, fmt.Errorf("scan items for retention: %w", err)
	}
	next := id
	if n < page {
		next = "" // the end: the next pass starts over
	}
	if s.trimHooks.scanned != nil {
		s.trimHooks.scanned(cands)
	}
	var deleted []string
	if len(cands) > 0 {
		// Lists before items, each in id order, as a batch locks them: a batch and a trim
		// never wait for each other in a cycle.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_neighbours WHERE item_id = ANY($1) ORDER BY item_id FOR UPDATE`, cands); err != nil {
			return nil, fmt.Errorf("lock neighbour lists of inactive items: %w", err)
		}
		rows, _ := tx.Query(ctx, `DELETE FROM feature_items WHERE item_id IN (
  SELECT item_id FROM feature_items WHERE item_id = ANY($1) AND last_active_ms < $2 AND pop_long < $3 ORDER BY item_id FOR UPDATE)
RETURNING item_id`, cands, cut, thr)
		if deleted, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return nil, fmt.Errorf("delete inactive items: %w", err)
		}
	}
	if len(deleted) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM feature_neighbours WHERE item_id = ANY($1)`, deleted); err != nil {
			return nil, fmt.Errorf("delete neighbour lists of inactive items: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO feature_items_trimmed (item_id) SELECT unnest($1::text[])
ON CONFLICT (item_id) DO UPDATE SET trimmed_at = now()`, deleted); err != nil {
			return nil, fmt.Errorf("record trimmed items: %w", err)
		}
	}
	if s.trimHooks.locked != nil {
		s.trimHooks.locked(deleted)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit item trim: %w", err)
	}
	s.mu.Lock()
	s.trimAfter = next
	s.mu.Unlock()
	return deleted, nil
}

// trimSecondPass deletes again the Redis keys of the items trimmed ItemTrimSecondPass ago or
// more, unless a repopulation is running (it may copy a snapshot taken before the trim: the
// pass waits for it to end).
func (s *Store) trimSecondPass(ctx context.Context) error {
	age := fmt.Sprintf("%d milliseconds", ItemTrimSecondPass.Milliseconds())
	rows, _ := s.pg.Query(ctx, `SELECT item_id FROM feature_items_trimmed WHERE trimmed_at < now() - $1::interval
ORDER BY item_id LIMIT 10000`, age)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read trimmed items: %w", err)
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
		if err := s.resyncItems(ctx, ids); err != nil {
			return fmt.Errorf("second pass over trimmed items in the redis copy: %w", err)
		}
	}
	// An item trimmed again since (its time moved) waits for its own second pass.
	if _, err := s.pg.Exec(ctx, `DELETE FROM feature_items_trimmed WHERE item_id = ANY($1) AND trimmed_at < now() - $2::interval`,
		ids, age); err != nil {
		return fmt.Errorf("clear trimmed items: %w", err)
	}
	return nil
}

// resyncItems makes the Redis copy of items agree with PostgreSQL: it deletes their hashes
// and neighbour lists and takes them out of the global lists, then writes whole those
// PostgreSQL has (back since a trim). In that order, a batch's write of an item races
// nothing: one that landed before the deletion committed before the read that follows it,
// which writes its values again; one that lands after merges with them (values only grow).
func (s *Store) resyncItems(ctx context.Context, ids []string) error {
	if s.rd == nil || len(ids) == 0 {
		return nil
	}
	// One key per command (a Redis Cluster would hold the keys in different slots); the
	// global lists take a chunk of members per command.
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
	for _, r := range s.rd.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("delete items from the redis copy: %w", err)
		}
	}
	if s.trimHooks.deleted != nil {
		s.trimHooks.deleted(ids)
	}
	tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin read of items back: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, ids)
	w := &redisWrite{lists: true}
	if w.items, err = scanItems(rows); err != nil {
		return err
	}
	if len(w.items) == 0 {
		return nil
	}
	back := make([]string, len(w.items))
	for i, it := range w.items {
		back[i] = it.id
	}
	if w.nb, err = readNeighbours(ctx, tx, back); err != nil {
		return err
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
			// The copy must be repopulated, from a snapshot that has these items.
			return s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error()
		}
		return nil // a newer generation's repopulation reads them
	}
	return err
}
