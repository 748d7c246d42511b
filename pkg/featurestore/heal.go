package featurestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// RedisReady reports whether the Redis copy is complete: P+"ready" exists, and P+"run_id"
// names the Redis process it was completed on. A Redis that restarted or failed over has
// another run_id: it may have lost acknowledged writes (an AOF fsync'd every second, a
// replica promoted before it received them) while keeping the marker, and the writes that
// come after cannot tell (an item's next write sends only the fields it changes), so the
// copy is not ready until repopulated. The run_id has a key of its own, not the marker's
// value, so that the API and a previous release, which read only the marker, are unchanged;
// a copy completed by a previous release (no run_id yet) is taken over as it stands.
//
// A copy of a newer generation than PostgreSQL's (a database restored from a backup, or a
// generation that went down) is not ready either: it refuses every write as older, and the
// writers take that for a repopulation to come, so without one it would stay frozen.
func (s *Store) RedisReady(ctx context.Context) (bool, error) {
	res := s.rd.DoMulti(ctx, s.rd.B().Exists().Key(s.keys.Ready).Build(), s.rd.B().Get().Key(s.keys.RunID).Build(),
		s.rd.B().Hget().Key(s.keys.Meta).Field("ep").Build())
	n, err := res[0].AsInt64()
	if err != nil {
		return false, fmt.Errorf("check redis ready marker: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	// The copy-ahead check needs PostgreSQL. Without it (an outage) the copy is judged by
	// Redis alone, as before the check existed: a PostgreSQL outage must not make a complete
	// copy look incomplete (the consumer unready, a repopulation that cannot run).
	if ahead, err := s.copyAhead(ctx, res[2]); err == nil && ahead {
		return false, nil
	} else if err != nil {
		s.log.DebugContext(ctx, "copy generation not compared with postgres", "err", err)
	}
	stored, err := res[1].ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, fmt.Errorf("check redis run_id: %w", err)
	}
	id := s.redisRunID(ctx)
	switch {
	case id == "" || stored == id:
		return true, nil
	case stored == "":
		if err := s.rd.Do(ctx, s.rd.B().Set().Key(s.keys.RunID).Value(id).Nx().Build()).Error(); err != nil && !rueidis.IsRedisNil(err) {
			return false, fmt.Errorf("record redis run_id: %w", err)
		}
		return true, nil
	}
	s.log.WarnContext(ctx, "redis restarted or failed over since the copy was complete (run_id changed); it may have lost writes, repopulating",
		"copy_run_id", stored, "run_id", id)
	return false, nil
}

// copyAhead reports whether the copy's generation (ep, the HGET's result) is above
// PostgreSQL's.
func (s *Store) copyAhead(ctx context.Context, ep rueidis.RedisResult) (bool, error) {
	if s.pg == nil {
		return false, nil
	}
	v, err := ep.ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, fmt.Errorf("read redis copy generation: %w", err)
	}
	copyGen, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return false, nil // none yet, or being cleared: not a newer generation
	}
	var gen int64
	if err := s.pg.QueryRow(ctx, `SELECT coalesce(max(generation), 0) FROM feature_meta`).Scan(&gen); err != nil {
		return false, fmt.Errorf("read feature generation: %w", err)
	}
	if copyGen <= gen {
		return false, nil
	}
	s.log.WarnContext(ctx, "the redis copy is of a newer generation than postgres (generation went down); repopulating",
		"copy_generation", copyGen, "generation", gen)
	return true, nil
}

// redisRunID is the run_id of the Redis process (INFO server), "" when it cannot be read
// (INFO refused by a managed service): the ready marker then only has to exist.
func (s *Store) redisRunID(ctx context.Context) string {
	info, err := s.rd.Do(ctx, s.rd.B().Info().Section("server").Build()).ToString()
	if err != nil {
		return ""
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, "run_id:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// readUsers, readItems and readNeighbours load absolute values for a rewrite.
func readUsers(ctx context.Context, q dbConn, ids []string) ([]userRow, error) {
	rows, _ := q.Query(ctx, `SELECT user_id, version, history, watched, impressions, impressions_recent
FROM feature_users WHERE user_id = ANY($1) ORDER BY user_id`, ids)
	var out []userRow
	var u userRow
	_, err := pgx.ForEachRow(rows, []any{&u.id, &u.version, &u.h, &u.w, &u.i, &u.r}, func() error {
		out = append(out, u)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	return out, nil
}

const itemCols = `item_id, impressions, watches, sum_percent, percent_count, ended, watch_time_sec, first_seen_ms, pop_short, pop_long, nb_count`

func scanItems(rows pgx.Rows) ([]itemRow, error) {
	var out []itemRow
	var r itemRow
	_, err := pgx.ForEachRow(rows, []any{&r.id, &r.imp, &r.wat, &r.sp, &r.pn, &r.ended, &r.wt, &r.fs, &r.ps, &r.pl, &r.nb}, func() error {
		r.fresh = true
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read items: %w", err)
	}
	return out, nil
}

func readNeighbours(ctx context.Context, q dbConn, items []string) ([]nbWrite, error) {
	rows, _ := q.Query(ctx, `SELECT item_id, neighbours, version FROM feature_neighbours WHERE item_id = ANY($1) ORDER BY item_id`, items)
	var out []nbWrite
	var it string
	var blob []byte
	var version int64
	_, err := pgx.ForEachRow(rows, []any{&it, &blob, &version}, func() error {
		l, err := decodeNeighbours(nil, blob)
		if err != nil {
			return fmt.Errorf("item %q: %w", it, err)
		}
		out = append(out, nbWrite{item: it, version: version, whole: true, add: l})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read neighbours: %w", err)
	}
	return out, nil
}

// HealPending rewrites from PostgreSQL the users and items of journal rows older than
// minAge (younger rows belong to batches whose own Redis write is still in flight) and
// deletes the rows. Rows of this store whose write is in flight or done are skipped. It
// returns how many rows it healed. Its write may land long after its read (Redis down
// meanwhile): a user `users forget` erased in between is refused by the copy's erasure
// marker (writeScript), not recreated.
func (s *Store) HealPending(ctx context.Context, minAge time.Duration, limit int) (int, error) {
	if s.rd == nil {
		return 0, nil
	}
	// Rows whose Redis write completed are normally deleted by the next batch; when the
	// stream is idle there is none, so delete them here.
	if done := s.takeWritten(); len(done) > 0 {
		if _, err := s.pg.Exec(ctx, `DELETE FROM feature_redis_pending WHERE id = ANY($1)`, done); err != nil {
			s.putWritten(done)
			return 0, fmt.Errorf("clear written redis journal rows: %w", err)
		}
		s.dropOwn(done...)
	}
	tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin heal: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	rows, _ := tx.Query(ctx, `SELECT id, user_ids, item_ids FROM feature_redis_pending
WHERE created_at < now() - $1::interval AND id <> ALL($3) ORDER BY id LIMIT $2`,
		fmt.Sprintf("%d milliseconds", minAge.Milliseconds()), limit, s.ownIDs())
	var ids []int64
	users, items := map[string]bool{}, map[string]bool{}
	var id int64
	var us, is []string
	_, err = pgx.ForEachRow(rows, []any{&id, &us, &is}, func() error {
		ids = append(ids, id)
		for _, u := range us {
			users[u] = true
		}
		for _, i := range is {
			items[i] = true
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read redis journal: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	m, err := loadMeta(ctx, tx)
	if err != nil && !errors.Is(err, errNoMeta) {
		return 0, err
	}
	w := &redisWrite{}
	if w.users, err = readUsers(ctx, tx, sortedKeys(users)); err != nil {
		return 0, err
	}
	itemIDs := sortedKeys(items)
	irows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, itemIDs)
	if w.items, err = scanItems(irows); err != nil {
		return 0, err
	}
	if w.nb, err = readNeighbours(ctx, tx, itemIDs); err != nil {
		return 0, err
	}
	_ = tx.Rollback(ctx)
	err = s.write(ctx, m, w)
	var ee *epochError
	if errors.As(err, &ee) {
		if ee.behind() {
			// The copy must be repopulated; that clears these rows.
			return 0, s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error()
		}
		err = nil // a newer generation's repopulation covers these rows
	}
	if err != nil {
		return 0, err
	}
	if _, err := s.pg.Exec(ctx, `DELETE FROM feature_redis_pending WHERE id = ANY($1)`, ids); err != nil {
		return 0, fmt.Errorf("clear redis journal: %w", err)
	}
	return len(ids), nil
}

// lockTTL bounds how long a repopulation that died (kill -9) blocks the next one; a live
// one renews the lock at every step (a page of the deletion or of the copy), and every
// lockRenewEvery while it waits for the meta lock.
const lockTTL = 15 * time.Second

const lockRenewEvery = time.Second

// clearingEpoch is the copy's generation while a repopulation deletes the keys of another
// one: no writer's (a number), and not a number, so writers take the copy as behind.
const clearingEpoch = "clearing"

// emptyEpoch is the generation of a copy repopulated while PostgreSQL had no feature_meta
// (no event applied yet: a fresh database), below every generation PostgreSQL creates. Such
// a copy holds no feature values and no landmarks, and the first writer of a generation
// takes it over (adoptScript) rather than have it repopulated.
const emptyEpoch = "0"

// ErrRepopulating means another process holds the repopulation lock.
var ErrRepopulating = errors.New("another repopulation is running")

// ErrGenerationMoved means a rebase or a forced rebuild changed the feature generation while
// a repopulation copied the old one; the copy is not marked ready.
var ErrGenerationMoved = errors.New("feature generation moved during repopulation")

// ErrRepopulationLockLost means the repopulation lock expired or was taken over while a
// repopulation ran (Redis unreachable, or a step stalled past lockTTL); that repopulation
// stopped before its next change to the copy, and the one holding the lock now, or the next
// heal pass, completes the copy.
var ErrRepopulationLockLost = errors.New("repopulation lock lost")

// lockScript changes the copy on behalf of a repopulation only while it holds the lock: the
// check and the change are one step, so a repopulation whose lock expired cannot delete keys
// of, or mark ready, a copy another one is building. Every call renews the lock.
//
// KEYS: the lock, then the keys of the action. ARGV: token, TTL (ms), action, its arguments:
//
//	keep:    nothing else
//	release: delete the lock
//	unlink:  unlink the keys
//	hset:    HSET the first key with the field-value pairs
//	set:     SET each key to its value (ARGV in key order)
//
// Returns 1, or 0 when the lock is not (or no longer) the caller's.
const lockScript = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local act = ARGV[3]
if act == 'release' then redis.call('DEL', KEYS[1]); return 1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if act == 'unlink' then
  for s = 2, #KEYS, 1000 do redis.call('UNLINK', unpack(KEYS, s, math.min(s + 999, #KEYS))) end
elseif act == 'hset' then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
elseif act == 'set' then
  for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 2]) end
end
return 1
`

var luaLock = rueidis.NewLuaScript(lockScript)

// repopLock is a held repopulation lock: its value is a random token, so that renewing and
// releasing it never touch another process's lock.
type repopLock struct {
	s     *Store
	token string
}

// takeLock takes the repopulation lock, or returns ErrRepopulating.
func (s *Store) takeLock(ctx context.Context) (*repopLock, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	l := &repopLock{s: s, token: hex.EncodeToString(b)}
	ok, err := s.rd.Do(ctx, s.rd.B().Set().Key(s.keys.Lock).Value(l.token).Nx().Px(lockTTL).Build()).AsBool()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("take repopulation lock: %w", err)
	}
	if !ok {
		return nil, ErrRepopulating
	}
	return l, nil
}

// do runs action on keys (with args) if the lock is still held, renewing it.
func (l *repopLock) do(ctx context.Context, action string, keys []string, args ...string) error {
	n, err := luaLock.Exec(ctx, l.s.rd, append([]string{l.s.keys.Lock}, keys...),
		append([]string{l.token, fi(lockTTL.Milliseconds()), action}, args...)).AsInt64()
	if err != nil {
		return fmt.Errorf("repopulation lock (%s): %w", action, err)
	}
	if n != 1 {
		return ErrRepopulationLockLost
	}
	return nil
}

func (l *repopLock) keep(ctx context.Context) error { return l.do(ctx, "keep", nil) }

func (l *repopLock) release(ctx context.Context) {
	_ = l.do(context.WithoutCancel(ctx), "release", nil)
}

// while runs f, renewing the lock every lockRenewEvery, for a step that may wait longer than
// lockTTL (the generation bump waits up to 30 s for the meta lock). It returns
// ErrRepopulationLockLost if a renewal found the lock gone, whatever f returned.
func (l *repopLock) while(ctx context.Context, f func() error) error {
	if err := l.keep(ctx); err != nil {
		return err
	}
	stop, lost := make(chan struct{}), make(chan error, 1)
	go func() {
		t := time.NewTicker(lockRenewEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				lost <- nil
				return
			case <-t.C:
				if err := l.keep(ctx); errors.Is(err, ErrRepopulationLockLost) {
					lost <- err
					return
				}
			}
		}
	}()
	err := f()
	close(stop)
	if lerr := <-lost; lerr != nil {
		return lerr
	}
	if err != nil {
		return err
	}
	return l.keep(ctx)
}

// Repopulate rebuilds the Redis copy from PostgreSQL while the consumers keep writing.
// force (the `features rebuild` command) first bumps the generation, so the copy is replaced
// rather than merged (members PostgreSQL no longer has are dropped). A merge into a copy of
// the same generation then drops the erased users' hashes (unlinkErased) and resyncs the keys
// PostgreSQL no longer backs or is behind (resyncStale: rows trimmed or erased since the
// snapshot a restarted Redis came back from).
//
// Order matters: the generation is bumped under the exclusive meta lock, so every batch of
// the old generation has committed; while the old data is deleted the copy's meta refuses
// every write (clearingEpoch), and it takes the new generation only after, so neither a late
// write of the old generation nor a write of the new one lands on a half-deleted copy; the
// snapshot is read after that, so it holds every batch whose Redis write could have been
// refused or lost; writes of the current generation landing meanwhile merge with the
// snapshot's values; and a generation that moves on before the copy is marked ready leaves
// it unready (ErrGenerationMoved, see checkGeneration).
func (s *Store) Repopulate(ctx context.Context, force bool) (err error) {
	lk, err := s.takeLock(ctx)
	if err != nil {
		return err
	}
	defer lk.release(ctx)
	// Read before the snapshot: a restart during the copy leaves a run_id that names the
	// process before, and the copy is taken again.
	runID := s.redisRunID(ctx)
	if force {
		if err := lk.while(ctx, func() error { return s.bumpGeneration(ctx) }); err != nil {
			return err
		}
	}
	m, err := loadMeta(ctx, s.pg)
	if err != nil && !errors.Is(err, errNoMeta) {
		return err
	}
	hasMeta := err == nil
	cur, err := s.rd.Do(ctx, s.rd.B().Hget().Key(s.keys.Meta).Field("ep").Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return fmt.Errorf("read redis meta: %w", err)
	}
	epoch := emptyEpoch
	if hasMeta {
		epoch = m.Epoch()
	}
	// A copy of this generation that /reco serves (its marker is there: the copy only lost
	// writes, or a restart changed its run_id) gets its marker back should Redis refuse the
	// merge's writes (out of memory, read-only): the taken lock proved Redis took a write, not
	// that it takes the copy, and without the marker /reco served everyone from PostgreSQL
	// until memory freed up, though the copy it had served was all there.
	served := false
	if cur == epoch {
		n, err := s.rd.Do(ctx, s.rd.B().Exists().Key(s.keys.Ready).Build()).AsInt64()
		if err != nil {
			return fmt.Errorf("check redis ready marker: %w", err)
		}
		served = n == 1
	}
	if err := lk.do(ctx, "unlink", []string{s.keys.Ready}); err != nil {
		return fmt.Errorf("clear ready marker: %w", err)
	}
	if served {
		defer func() {
			if err != nil && RefusesWrites(err) {
				s.restoreReady(ctx, lk, hasMeta, m.Generation, err)
			}
		}()
	}
	if cur != "" && cur != epoch {
		// No write lands while the old copy's keys go. A neighbour list and its version ("nv"
		// in the item's hash) are two keys: a change applied after the deletion took the list
		// and before it took the version went onto a list that had lost its members, and the
		// copy kept it short at PostgreSQL's version. The refused writes stay in the journal;
		// their batches committed before the snapshot below, which holds them.
		if err := lk.do(ctx, "hset", []string{s.keys.Meta}, "ep", clearingEpoch); err != nil {
			return fmt.Errorf("write redis meta: %w", err)
		}
		if err := s.deleteData(ctx, lk); err != nil {
			return err
		}
	}
	set := []string{"ep", epoch}
	if hasMeta {
		set = append(set, metaFields(m)...)
	}
	if cur != epoch {
		// A new copy (a forced rebuild, an empty Redis): every user hash in it will be this
		// copy's, with this writer's TTL, or a later write's, which records its own, so the
		// recorded TTL starts over. A copy of the same generation keeps the longest recorded:
		// it may be restored as it was (restoreReady), with hashes that still expire.
		set = append(set, "ut", fi(s.userTTL.Milliseconds()))
	}
	if err := lk.do(ctx, "hset", []string{s.keys.Meta}, set...); err != nil {
		return fmt.Errorf("write redis meta: %w", err)
	}
	// The copy takes this generation's writes from here (a merge's, all along): the erasure
	// markers a Redis that lost its data lost go back first.
	if err := s.restoreErased(ctx, lk); err != nil {
		return err
	}
	// The snapshot starts only now: every write the copy accepted before (and that the
	// deletion above may have removed) belongs to a batch committed before this point.
	tx, err := s.pg.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin repopulation snapshot: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	m2, err := loadMeta(ctx, tx)
	if err != nil && !errors.Is(err, errNoMeta) {
		return err
	}
	if (err == nil) != hasMeta || m2.Generation != m.Generation {
		return fmt.Errorf("%w; the next attempt starts over", ErrGenerationMoved)
	}
	var journal []int64
	jrows, _ := tx.Query(ctx, `SELECT id FROM feature_redis_pending`)
	if journal, err = pgx.CollectRows(jrows, pgx.RowTo[int64]); err != nil {
		return fmt.Errorf("read redis journal: %w", err)
	}
	if hasMeta {
		if err := s.copyAll(ctx, tx, epoch, lk); err != nil {
			return err
		}
	}
	_ = tx.Rollback(ctx)
	if cur == epoch {
		// A merge keeps every key it found. After a failover to a replica that missed
		// `users forget`'s deletions, those would include erased users' hashes.
		if err := s.unlinkErased(ctx, lk); err != nil {
			return err
		}
		// And keeps the keys of users and items trimmed since the snapshot Redis restarted
		// from, which hide the rows of those that came back.
		if err := s.resyncStale(ctx, lk); err != nil {
			return err
		}
	}
	if len(journal) > 0 {
		if _, err := s.pg.Exec(ctx, `DELETE FROM feature_redis_pending WHERE id = ANY($1)`, journal); err != nil {
			return fmt.Errorf("clear redis journal: %w", err)
		}
	}
	mk, mv := []string{s.keys.Ready}, []string{"1"}
	if runID != "" {
		mk, mv = append(mk, s.keys.RunID), append(mv, runID)
	}
	if err := lk.do(ctx, "set", mk, mv...); err != nil {
		return fmt.Errorf("set ready marker: %w", err)
	}
	if hasMeta {
		if err := s.checkGeneration(ctx, lk, m.Generation); err != nil {
			return err
		}
	}
	s.log.InfoContext(ctx, "redis copy repopulated", "generation", epoch, "forced", force)
	return nil
}

// RefusesWrites reports whether err is Redis refusing a write while it still serves reads:
// out of memory under maxmemory-policy noeviction, or a read-only replica.
func RefusesWrites(err error) bool {
	var re *rueidis.RedisError
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "OOM ") || strings.HasPrefix(msg, "READONLY ")
}

// restoreReady puts back the marker of a copy whose same-generation repopulation Redis
// refused (cause), without the run_id: the copy stays incomplete for the consumers, whose next
// heal pass tries again, while /reco goes on serving it. The lock script writes even out of
// memory (its PEXPIRE comes before the SET). A generation that moved meanwhile takes the
// marker away again (checkGeneration).
func (s *Store) restoreReady(ctx context.Context, lk *repopLock, hasMeta bool, gen int64, cause error) {
	ctx = context.WithoutCancel(ctx)
	if err := lk.do(ctx, "set", []string{s.keys.Ready}, "1"); err != nil {
		s.log.WarnContext(ctx, "ready marker of the served copy not restored after redis refused the repopulation",
			"err", err, "cause", cause)
		return
	}
	if hasMeta {
		if err := s.checkGeneration(ctx, lk, gen); err != nil {
			return
		}
	}
	s.log.WarnContext(ctx, "redis refused the repopulation's writes; the copy it had stays served, the next heal pass tries again",
		"err", cause)
}

// checkGeneration takes the ready marker back when PostgreSQL's generation is no longer the
// copy's (gen). A rebase or a generation bump that commits after the snapshot deletes the
// marker after its commit, which may come before the repopulation sets it: the copy would be
// marked ready at the old generation, refusing the new one's writes (the batch that needed
// the rebase among them) until a write or the journal found it behind. Read after the marker
// is set, either this sees the new generation or the bump's deletion comes after the marker.
// A failed read leaves the marker: the copy stays usable through a PostgreSQL outage.
func (s *Store) checkGeneration(ctx context.Context, lk *repopLock, gen int64) error {
	var now int64
	if err := s.pg.QueryRow(ctx, `SELECT coalesce(max(generation), 0) FROM feature_meta`).Scan(&now); err != nil {
		s.log.WarnContext(ctx, "feature generation not checked after the repopulation", "err", err)
		return nil
	}
	if now == gen {
		return nil
	}
	if err := lk.do(ctx, "unlink", []string{s.keys.Ready}); err != nil {
		return fmt.Errorf("clear ready marker: %w", err)
	}
	return fmt.Errorf("%w (generation %d, copied %d); the next attempt starts over", ErrGenerationMoved, now, gen)
}

// unlinkErased deletes the hashes of erased users that PostgreSQL does not hold (again), page
// by page under the lock. Checked against the current rows, not the snapshot's: a user who
// came back after the erasure (events received later) keeps the hash the consumer wrote.
func (s *Store) unlinkErased(ctx context.Context, lk *repopLock) error {
	const page = 1000
	after := ""
	for {
		rows, _ := s.pg.Query(ctx, `SELECT f.user_id FROM forgotten_users f
WHERE f.user_id > $1 AND NOT EXISTS (SELECT 1 FROM feature_users u WHERE u.user_id = f.user_id)
ORDER BY f.user_id LIMIT $2`, after, page)
		users, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("read erased users: %w", err)
		}
		if len(users) == 0 {
			return nil
		}
		keys := make([]string, len(users))
		for i, u := range users {
			keys[i] = s.keys.User(u)
		}
		if err := lk.do(ctx, "unlink", keys); err != nil {
			return fmt.Errorf("unlink erased users' hashes: %w", err)
		}
		if len(users) < page {
			return nil
		}
		after = users[len(users)-1]
	}
}

// metaFields are the decay fields of the copy's meta for m, as HSET takes them.
func metaFields(m Meta) []string {
	return []string{"lm:s", fi(m.Short.LandmarkMs), "lm:l", fi(m.Long.LandmarkMs), "lm:c", fi(m.Covis.LandmarkMs),
		"hl:s", ff(m.Short.HalfLifeMs), "hl:l", ff(m.Long.HalfLifeMs), "hl:c", ff(m.Covis.HalfLifeMs)}
}

// deleteData unlinks the copy's keys (ownsKey): every feature key under the prefix, but not
// meta, the lock or the API keys' shared rate counts (not features: a rebuild must not hand
// every rate-limited key a fresh burst), nor keys of another layout that share the prefix.
// Each page is unlinked under the lock (renewing it): a SCAN of a large database outlasts
// lockTTL, and a deletion whose lock expired must not go on into the copy of the
// repopulation that took it.
func (s *Store) deleteData(ctx context.Context, lk *repopLock) error {
	var cursor uint64
	match := escapeGlob(s.keys.Prefix) + "*"
	for {
		e, err := s.rd.Do(ctx, s.rd.B().Scan().Cursor(cursor).Match(match).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return fmt.Errorf("scan redis keys: %w", err)
		}
		var del []string
		for _, k := range e.Elements {
			if s.keys.ownsKey(k) {
				del = append(del, k)
			}
		}
		if err := lk.do(ctx, "unlink", del); err != nil {
			return fmt.Errorf("unlink redis keys: %w", err)
		}
		if cursor = e.Cursor; cursor == 0 {
			return nil
		}
	}
}

// ownsKey reports whether key is one of the copy's data keys, which a repopulation of a new
// generation deletes. Other keys under the prefix stay: a Redis shared by several deployments
// (--redis.key-prefix) may hold one whose prefix extends this one ("recsys:" and
// "recsys:staging:"), or, with an empty prefix, any other application's keys, and deleting
// everything under the prefix wiped them on every forced rebuild.
func (k Keys) ownsKey(key string) bool {
	rest, ok := strings.CutPrefix(key, k.Prefix)
	if !ok {
		return false
	}
	switch {
	case strings.HasPrefix(rest, "u:"), strings.HasPrefix(rest, "i:"), strings.HasPrefix(rest, "nb:"):
		return true
	}
	return key == k.PopShort || key == k.PopLong || key == k.Fresh || key == k.Ready || key == k.RunID
}

// copyAll streams the snapshot into Redis in keyset-paginated chunks. Its item writes put
// every item into the top and fresh lists (redisWrite.lists): the copy may keep item hashes
// whose lists lost them (a deletion that ran on), and a write of an unchanged value would
// not add them back.
func (s *Store) copyAll(ctx context.Context, tx pgx.Tx, epoch string, lk *repopLock) error {
	const page = 2000
	keep := func() error { return lk.keep(ctx) }
	after := ""
	for {
		rows, _ := tx.Query(ctx, `SELECT user_id, version, history, watched, impressions, impressions_recent
FROM feature_users WHERE user_id > $1 ORDER BY user_id LIMIT $2`, after, page)
		var users []userRow
		var u userRow
		if _, err := pgx.ForEachRow(rows, []any{&u.id, &u.version, &u.h, &u.w, &u.i, &u.r}, func() error { users = append(users, u); return nil }); err != nil {
			return fmt.Errorf("read users: %w", err)
		}
		if len(users) == 0 {
			break
		}
		// Renewed between the read and the write: a page read while the lock expired (a
		// stall past lockTTL) would otherwise still be written, over what happened since,
		// such as `users forget` deleting a user this snapshot still holds.
		if err := keep(); err != nil {
			return err
		}
		if err := s.exec(ctx, epoch, &redisWrite{users: users}); err != nil {
			return err
		}
		after = users[len(users)-1].id
	}
	after = ""
	for {
		rows, _ := tx.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id > $1 ORDER BY item_id LIMIT $2`, after, page)
		items, err := scanItems(rows)
		if err != nil {
			return err
		}
		if len(items) == 0 {
			break
		}
		ids := make([]string, 0, len(items))
		for _, it := range items {
			if it.nb > 0 {
				ids = append(ids, it.id)
			}
		}
		w := &redisWrite{items: items, lists: true}
		if len(ids) > 0 {
			if w.nb, err = readNeighbours(ctx, tx, ids); err != nil {
				return err
			}
		}
		if err := keep(); err != nil { // as for users
			return err
		}
		if err := s.exec(ctx, epoch, w); err != nil {
			return err
		}
		after = items[len(items)-1].id
	}
	return nil
}

// bumpGeneration makes the current Redis copy stale. It holds the exclusive meta lock, so
// every batch of the old generation has committed before the bump does: a snapshot taken
// after it includes them all, which is what lets their refused Redis writes be dropped.
func (s *Store) bumpGeneration(ctx context.Context) error {
	tx, err := s.pg.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin generation bump: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '30s'`); err != nil {
		return fmt.Errorf("generation bump timeout: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, metaLockKey); err != nil {
		return fmt.Errorf("lock feature meta: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE feature_meta SET generation = generation + 1, updated_at = now()`); err != nil {
		return fmt.Errorf("bump feature generation: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit generation bump: %w", err)
	}
	// As after a rebase: a repopulation of the old generation that set the marker before
	// this commit (see checkGeneration) must not leave it, nor may the copy found ready.
	if s.rd != nil {
		if err := s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error(); err != nil {
			s.log.WarnContext(ctx, "mark redis copy for repopulation after the generation bump", "err", err)
		}
	}
	return nil
}

// Rebase moves the decay landmarks that an event at tsMs would overflow to tsMs: every
// stored value of those half-lives is multiplied once, the generation is bumped, and the
// Redis copy is marked for repopulation. It runs under the exclusive meta lock, after every
// in-flight batch has committed. With the default half-lives it happens about every 125 days
// (6 h half-life) or 10 years (7 d).
func (s *Store) Rebase(ctx context.Context, tsMs int64) error {
	tx, err := s.pg.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin rebase: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '30s'; SET LOCAL statement_timeout = '0'`); err != nil {
		return fmt.Errorf("rebase timeouts: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, metaLockKey); err != nil {
		return fmt.Errorf("lock feature meta: %w", err)
	}
	m, err := loadMeta(ctx, tx)
	if err != nil {
		return err
	}
	moved := false
	if m.Short.NeedsRebase(tsMs) || m.Long.NeedsRebase(tsMs) {
		fs, ns := m.Short.Rebase(tsMs)
		fl, nl := m.Long.Rebase(tsMs)
		if !m.Short.NeedsRebase(tsMs) {
			fs, ns = 1, m.Short
		}
		if !m.Long.NeedsRebase(tsMs) {
			fl, nl = 1, m.Long
		}
		// A product PostgreSQL would round to zero is an error there ("value out of range:
		// underflow"), not a zero: an item last raised hundreds of half-lives before the
		// landmark (a backfill, a late replay) would fail every rebase, and with it every
		// batch after the landmark's range. Such values are set to 0 instead: what they are
		// worth at any time after the new landmark is below 1e-300.
		if _, err := tx.Exec(ctx, `UPDATE feature_items
SET pop_short = CASE WHEN abs(pop_short) < $3 THEN 0 ELSE pop_short * $1 END,
    pop_long = CASE WHEN abs(pop_long) < $4 THEN 0 ELSE pop_long * $2 END
WHERE pop_short > 0 OR pop_long > 0`, fs, fl, underflowBelow(fs), underflowBelow(fl)); err != nil {
			return fmt.Errorf("rebase popularity: %w", err)
		}
		m.Short, m.Long, moved = ns, nl, true
	}
	if m.Covis.NeedsRebase(tsMs) {
		f, n := m.Covis.Rebase(tsMs)
		if err := rebaseNeighbours(ctx, tx, f); err != nil {
			return err
		}
		m.Covis, moved = n, true
	}
	if !moved {
		return nil // another consumer rebased first
	}
	if _, err := tx.Exec(ctx, `UPDATE feature_meta SET generation = generation + 1, lm_short_ms = $1, lm_long_ms = $2,
  lm_covis_ms = $3, updated_at = now()`, m.Short.LandmarkMs, m.Long.LandmarkMs, m.Covis.LandmarkMs); err != nil {
		return fmt.Errorf("move landmarks: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit rebase: %w", err)
	}
	s.log.InfoContext(ctx, "decay landmarks rebased", "landmark_ms", tsMs)
	if s.rd != nil {
		if err := s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error(); err != nil {
			s.log.WarnContext(ctx, "mark redis copy for repopulation after rebase", "err", err)
		}
	}
	return nil
}

// underflowBelow is the magnitude under which a stored value times f falls below 1e-300,
// where a rebase sets it to 0 (+Inf for a factor that is itself 0: every value goes).
func underflowBelow(f float64) float64 {
	if f <= 0 {
		return math.Inf(1)
	}
	return 1e-300 / f
}

// rebaseNeighbours multiplies every stored co-visitation strength by f (a positive factor
// keeps each list's order), one keyset page of lists at a time.
func rebaseNeighbours(ctx context.Context, tx pgx.Tx, f float64) error {
	const page = 1000
	after := ""
	for {
		rows, _ := tx.Query(ctx, `SELECT item_id, neighbours FROM feature_neighbours WHERE item_id > $1 ORDER BY item_id LIMIT $2`, after, page)
		var ids []string
		var blobs [][]byte
		var id string
		var blob []byte
		var l []scoredRow
		_, err := pgx.ForEachRow(rows, []any{&id, &blob}, func() error {
			var err error
			if l, err = decodeNeighbours(l[:0], blob); err != nil {
				return fmt.Errorf("item %q: %w", id, err)
			}
			for i := range l {
				l[i].w *= f
			}
			ids = append(ids, id)
			blobs = append(blobs, appendNeighbours(nil, l))
			return nil
		})
		if err != nil {
			return fmt.Errorf("rebase co-visitation: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE feature_neighbours n SET neighbours = v.b, version = n.version + 1
FROM unnest($1::text[], $2::bytea[]) AS v(id, b) WHERE n.item_id = v.id`, ids, blobs); err != nil {
			return fmt.Errorf("rebase co-visitation: %w", err)
		}
		after = ids[len(ids)-1]
	}
}
