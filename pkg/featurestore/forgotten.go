package featurestore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
)

// Forgotten is the set of users whose data was erased (table forgotten_users, written by
// `recsys users forget`), as a consumer last read it. An event of such a user that the API
// received at or before the erasure is skipped: it was still in the outbox, in Kafka or in the
// DLQ when the data went, and applying it would bring the user's features back. The zero
// value is an empty set.
//
// Rows are never deleted (no bound on how long such an event can come back: docs/scaling.md,
// "Not bounded by age"), so the set only grows: after the first read, a refresh reads only
// the rows written since the previous one (migration 0026).
type Forgotten struct {
	mu sync.RWMutex
	m  map[string]int64 // user_id -> forgotten_at_ms

	// refreshing orders the refreshes (the consumer's loop and a lane's awaitForgotten may
	// overlap): each merges a snapshot no older than the last one's, so a user's erasure time
	// never goes back to a value an older snapshot held.
	refreshing sync.Mutex
	// xmin is the last read's pg_snapshot_xmin, 0 before the first: every transaction below
	// it had ended by then, so a row that read did not see was written at or above it.
	xmin uint64
	// started is the server's start time (pg_postmaster_start_time) at the last read. Another
	// server (a replica promoted by a failover, a restore) or a restart of the same one (an
	// asynchronous commit lost in a crash) may have handed out again the transaction ids of
	// writes it lost, below the watermark, to new erasures: the next read is whole. The ids
	// going back is not enough to tell: by the consumer's next read, the new server may have
	// gone past the watermark already.
	started time.Time
	read    int // rows the last refresh read
}

// ForgottenRefresh is how often a consumer rereads the erased users, so that it skips their
// events and poison messages before its batches' transactions do (ErasedError, a retry; the
// DLQ insert's check, queueDLQ). `recsys users forget` waits longer than this before it
// deletes, so that most batches judge by a list that has the erasure.
const ForgottenRefresh = 5 * time.Second

// RefreshForgotten reads the erased users into f: the whole table the first time, then the
// rows written since the previous read. A read is bounded by forgottenReadTimeout, a whole
// one by forgottenWholeReadTimeout; ctx may end it sooner.
func (s *Store) RefreshForgotten(ctx context.Context, f *Forgotten) error {
	return f.refresh(ctx, s.pg)
}

// forgottenReadTimeout bounds a read of the rows written since the last one: a few rows,
// unless a long transaction of the cluster widens it.
const forgottenReadTimeout = 5 * time.Second

// forgottenWholeReadTimeout bounds a whole read (a consumer's first, and the one after a
// failover): every erasure ever made, millions of rows for a deployment erasing thousands of
// users a day, seconds per few million. Bounded as an incremental read, and by the session's
// statement_timeout (--pg.statement-timeout, 5 s), it failed every time past a few million
// rows, and a consumer applies no batch without a fresh list. Not much longer: meanwhile the
// consumer's batches wait for the read without counting a failure (awaitForgotten).
const forgottenWholeReadTimeout = time.Minute

// forgottenSQL reads the rows of transactions at or above $1 (every row when it is 0) with
// the snapshot's xmin, in one statement so that both come from the same snapshot. The rows
// of a transaction still running at the previous read are read again, as are those of every
// later one: a long transaction that wrote (anywhere in the cluster) widens each read to the
// erasures since it began, until it ends.
const forgottenSQL = `SELECT s.xmin, s.started, f.user_id, f.forgotten_at_ms
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, pg_postmaster_start_time() AS started) s
LEFT JOIN forgotten_users f ON f.xid >= $1`

func (f *Forgotten) refresh(ctx context.Context, pg *pgxpool.Pool) error {
	f.refreshing.Lock()
	defer f.refreshing.Unlock()
	first := f.xmin == 0
	full := first
	xmin, started, got, err := readForgottenSince(ctx, pg, f.xmin)
	if err == nil && !full && (xmin < f.xmin || !started.Equal(f.started)) {
		// Transaction ids went back, or another server (or the same one restarted) answers:
		// rows may lie below the watermark (see started). Read it whole.
		full = true
		xmin, started, got, err = readForgottenSince(ctx, pg, 0)
	}
	if err != nil {
		return err
	}
	if first {
		// Built aside: a whole read can be millions of users, and Skip waits on the lock.
		m := make(map[string]int64, len(got))
		for _, r := range got {
			m[r.id] = r.at
		}
		f.mu.Lock()
		f.m = m
		f.mu.Unlock()
	} else {
		// Merged, also after a whole read: rows are never deleted, and an erasure this
		// consumer read from a server that lost it since (a failover's lost commits) still
		// holds. A row's time is the table's (an operator may correct it).
		f.mu.Lock()
		for _, r := range got {
			f.m[r.id] = r.at
		}
		f.mu.Unlock()
	}
	f.xmin, f.started, f.read = xmin, started, len(got)
	return nil
}

type forgottenRow struct {
	id string
	at int64
}

// readForgottenSince is readForgotten under its bound: a whole read (since 0) in a transaction
// without the session's statement_timeout.
func readForgottenSince(ctx context.Context, pg *pgxpool.Pool, since uint64) (xmin uint64, started time.Time, got []forgottenRow, err error) {
	if since != 0 {
		ctx, cancel := context.WithTimeout(ctx, forgottenReadTimeout)
		defer cancel()
		return readForgotten(ctx, pg, since)
	}
	ctx, cancel := context.WithTimeout(ctx, forgottenWholeReadTimeout)
	defer cancel()
	err = postgres.Untimed(ctx, pg, func(tx pgx.Tx) error {
		var err error
		xmin, started, got, err = readForgotten(ctx, tx, 0)
		return err
	})
	return xmin, started, got, err
}

// readForgotten returns the snapshot's xmin, the server's start time and the rows of
// transactions at or above since.
func readForgotten(ctx context.Context, pg interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, since uint64) (uint64, time.Time, []forgottenRow, error) {
	rows, err := pg.Query(ctx, forgottenSQL, since)
	if err != nil {
		return 0, time.Time{}, nil, fmt.Errorf("read forgotten users: %w", err)
	}
	var xmin uint64
	var started time.Time
	var id *string
	var at *int64
	var got []forgottenRow
	if _, err := pgx.ForEachRow(rows, []any{&xmin, &started, &id, &at}, func() error {
		if id != nil && at != nil { // nil: no row (the left join's only line)
			got = append(got, forgottenRow{*id, *at})
		}
		return nil
	}); err != nil {
		return 0, time.Time{}, nil, fmt.Errorf("read forgotten users: %w", err)
	}
	if xmin == 0 {
		return 0, time.Time{}, nil, fmt.Errorf("read forgotten users: no snapshot xmin")
	}
	return xmin, started, got, nil
}

// Skip reports whether an event of userID received at receivedMs (0 when unknown: the
// caller passes the best time it has) predates the user's erasure.
func (f *Forgotten) Skip(userID string, receivedMs int64) bool {
	f.mu.RLock()
	at, ok := f.m[userID]
	f.mu.RUnlock()
	return ok && receivedMs <= at
}

// Note adds erasures read elsewhere (an ErasedError's) to f, so that Skip takes them at once,
// before the next refresh reads them too.
func (f *Forgotten) Note(users map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[string]int64, len(users))
	}
	for id, at := range users {
		f.m[id] = max(f.m[id], at)
	}
}

// forgetUsers deletes the users' feature rows in PostgreSQL and their hashes in the Redis
// copy, and returns how many rows and hashes went. Item statistics, co-visitation lists and the global
// lists are aggregates over every user and stay.
//
// It runs after the raw data is gone, so a failure here means a rerun: the deletion locks the
// rows in the order a batch does (neither waits for the other in a cycle), and waits for a
// batch holding one of them as recordForgotten does, without the session's lock_timeout
// and statement_timeout (ctx still stops it), forgetChunk users per transaction so that no
// batch waits long for the rows of the whole list.
func (s *Store) forgetUsers(ctx context.Context, users []string) (rows, hashes int64, err error) {
	sorted := slices.Clone(users)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var deleted int64
	for chunk := range slices.Chunk(sorted, forgetChunk) {
		var n int64
		err := postgres.Untimed(ctx, s.pg, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = 0`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE`, chunk); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			// The deleted rows' versions (or a trimmed row's, whose hash a late write-back may
			// still bring) are the floors of the Redis erasure marker (forgetRedis), kept as
			// the highest of the user's erasures.
			return tx.QueryRow(ctx, `WITH d AS (DELETE FROM feature_users WHERE user_id = ANY($1::text[]) RETURNING user_id, version),
v AS (SELECT user_id, max(version) AS version FROM (SELECT user_id, version FROM d
  UNION ALL SELECT user_id, version FROM feature_users_trimmed WHERE user_id = ANY($1::text[])) x GROUP BY user_id),
u AS (UPDATE forgotten_users f SET version = v.version FROM v WHERE f.user_id = v.user_id AND f.version < v.version)
SELECT count(*) FROM d`, chunk).Scan(&n)
		})
		if err != nil {
			return deleted, 0, fmt.Errorf("delete feature users (the raw data is erased; run it again): %w", err)
		}
		deleted += n
	}
	hashes, err = s.forgetRedis(ctx, users)
	return deleted, hashes, err
}

// forgetChunk is how many users' feature rows one transaction of forgetUsers deletes.
const forgetChunk = 1000

// forgetRedis deletes the users' hashes from the Redis copy, forgetRedisChunk per round
// trip, after setting each one's erasure marker to the version forgetUsers recorded
// (eraseScript): from then on no writer creates the hash again from the erased row, however
// late its write lands (see writeScript). It returns how many hashes it deleted.
func (s *Store) forgetRedis(ctx context.Context, users []string) (int64, error) {
	if s.rd == nil {
		return 0, nil
	}
	var deleted int64
	for chunk := range slices.Chunk(users, forgetRedisChunk) {
		rows, _ := s.pg.Query(ctx, `SELECT user_id, version FROM forgotten_users WHERE user_id = ANY($1::text[])`, chunk)
		versions := make(map[string]int64, len(chunk))
		var id string
		var v int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error { versions[id] = v; return nil }); err != nil {
			return deleted, fmt.Errorf("read erased users' versions: %w", err)
		}
		n, err := s.eraseHashes(ctx, chunk, versions, false)
		deleted += n
		if err != nil {
			return deleted, fmt.Errorf("delete users from the redis copy: %w", err)
		}
	}
	return deleted, nil
}

// eraseScript erases one user's hash (KEYS[2]) under the erasure marker (KEYS[1]), with the
// version of the erased row (ARGV[1], 0: not known, which sets no marker). The marker keeps
// the highest version of the user's erasures and is set before the hash goes: a write
// landing in between finds the hash, which goes next; one landing after finds the marker.
// Forget deletes the hash whatever its version, as before markers existed: one of a user who
// came back meanwhile is written again whole by their next write (it finds no hash to
// complete). A repopulation restoring the markers (ARGV[2] "1", restoreErased) keeps a hash
// above the marker: a returning user's.
const eraseScript = `
local m = tonumber(redis.call('HGET', KEYS[1], KEYS[2]) or '0')
if tonumber(ARGV[1]) > m then redis.call('HSET', KEYS[1], KEYS[2], ARGV[1]); m = tonumber(ARGV[1]) end
if ARGV[2] == '1' and tonumber(redis.call('HGET', KEYS[2], 'v') or '-1') > m then return 0 end
return redis.call('DEL', KEYS[2])
`

var luaErase = rueidis.NewLuaScript(eraseScript)

// eraseHashes runs eraseScript for users, one call each, in one round trip, with
// versions[user] (0 when absent); keepNewer keeps the hashes above the markers. It returns
// how many hashes it deleted.
func (s *Store) eraseHashes(ctx context.Context, users []string, versions map[string]int64, keepNewer bool) (int64, error) {
	keep := "0"
	if keepNewer {
		keep = "1"
	}
	calls := make([]rueidis.LuaExec, len(users))
	for i, u := range users {
		calls[i] = rueidis.LuaExec{Keys: []string{s.keys.Erased, s.keys.User(u)}, Args: []string{fi(versions[u]), keep}}
	}
	var deleted int64
	for _, r := range luaErase.ExecMulti(ctx, s.rd, calls...) {
		n, err := r.AsInt64()
		if err != nil {
			return deleted, err
		}
		deleted += n
	}
	return deleted, nil
}

// restoreErased sets the erasure marker of every erased user with a known version (and
// deletes their hashes at or below it), page by page under the repopulation lock: a Redis
// that lost its data or failed over to a replica lost markers with it, and the copy accepts
// writes again from the moment the repopulation sets its generation. A writer holding a row
// read before an erasure (a heal that waited out the outage) would otherwise create the
// erased user's hash again. It runs in every repopulation, before its snapshot: a write that
// landed before it is deleted here, one landing after finds the marker.
func (s *Store) restoreErased(ctx context.Context, lk *repopLock) error {
	const page = 1000
	after := ""
	for {
		if err := lk.keep(ctx); err != nil {
			return err
		}
		rows, _ := s.pg.Query(ctx, `SELECT user_id, version FROM forgotten_users WHERE version > 0 AND user_id > $1
ORDER BY user_id LIMIT $2`, after, page)
		var users []string
		versions := make(map[string]int64, page)
		var id string
		var v int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error {
			users = append(users, id)
			versions[id] = v
			return nil
		}); err != nil {
			return fmt.Errorf("read erased users' versions: %w", err)
		}
		if len(users) == 0 {
			return nil
		}
		if _, err := s.eraseHashes(ctx, users, versions, true); err != nil {
			return fmt.Errorf("restore the erasure markers of the redis copy: %w", err)
		}
		if len(users) < page {
			return nil
		}
		after = users[len(users)-1]
	}
}

// forgetRedisChunk is how many deletions forgetRedis sends per round trip. A run erases up
// to 100,000 users: sent at once, they were one pipeline of that many commands and replies,
// held in memory together, queued on the client's shared connection ahead of everything
// else it sends, and failed (a write timeout, a node's failover) as one.
const forgetRedisChunk = 1000

// ForgetReport is what Forget erased, printed as JSON by `recsys users forget`.
type ForgetReport struct {
	Users int `json:"users"`
	// ForgottenAtMs is the erasure time: every event of the users the API received up to it
	// is gone (raw rows and their effect on the users' features) or will be skipped.
	ForgottenAtMs int64 `json:"forgotten_at_ms"`
	// Deleted counts rows per table (feature_users: the users that had features; event_outbox:
	// the users' events removed from dead rows, which may carry other users' events too;
	// feature_dlq: the entries keyed by the users; feature_dlq_keyless: those without a key
	// whose payload held one of their ids) and, as redis_user_hashes, the users' hashes deleted
	// from the Redis copy (by both passes: the second finds one a late writer of the previous
	// release brought back).
	Deleted map[string]int64 `json:"deleted"`
}

// Forget erases users' data: their raw events, their feature rows and Redis hashes, their
// DLQ entries and their events in dead outbox rows. It first records the users in forgotten_users with an erasure time
// settle from when the record holds them (once it waited for any batch holding one), so every consumer (which rereads the table every ForgottenRefresh) skips
// their events received up to then, wherever those still are (the outbox, Kafka, the DLQ);
// it then waits until that time and deletes. A batch judged by a list read before the erasure
// cannot bring the features back, however long its attempt lasts: the record waits for a
// batch holding one of the users, and a batch that takes a user after the record finds the
// erasure in its own transaction (recordForgotten, forgottenCheckSQL); its dead letters of the
// users are ordered against the record the same way (queueDLQ). Aggregates over all users (item
// statistics, co-visitation lists, global lists, KPI roll-ups) keep their contribution; the
// dedup keys stay until their retention, and hold the user id (event_id, user_id: migration
// 0022), so that a resend of an erased event is still a duplicate.
func (s *Store) Forget(ctx context.Context, users []string, settle time.Duration) (ForgetReport, error) {
	rep := ForgetReport{Users: len(users), ForgottenAtMs: time.Now().Add(settle).UnixMilli(), Deleted: map[string]int64{}}
	if len(users) == 0 {
		return rep, nil
	}
	at, err := s.recordForgotten(ctx, users, settle)
	if err != nil {
		return rep, fmt.Errorf("record forgotten users: %w", err)
	}
	rep.ForgottenAtMs = at
	// Until a moment past the erasure time: a raw row the API stores for an event received
	// just before it is in its table by then.
	t := time.NewTimer(time.Until(time.UnixMilli(at).Add(time.Second)))
	select {
	case <-ctx.Done():
		t.Stop()
		return rep, fmt.Errorf("wait for the consumers to read the erasure (nothing deleted yet; run it again): %w", ctx.Err())
	case <-t.C:
	}
	keys := make([][]byte, len(users))
	for i, u := range users {
		keys[i] = []byte(u)
	}
	// Raw tables have no index on user_id alone (nothing else reads by user): each statement
	// scans its table once for the whole list, so erase users in large lists.
	for _, d := range []struct {
		table, sql string
		who        any
	}{
		{"watches", eraseRawSQL("watches", ""), users},
		{"impression_events", eraseRawSQL("impression_events", ""), users},
		{"legacy_events", eraseRawSQL("legacy_events", ""), users},
		// The Kafka key is the user id, compared as bytes: a poison message's key may not be
		// text.
		{"feature_dlq", `DELETE FROM feature_dlq WHERE msg_key = ANY($1) AND created_at <= to_timestamp($2::bigint / 1000.0)`, keys},
	} {
		tag, err := s.execScan(ctx, d.sql, d.who, at)
		if err != nil {
			return rep, fmt.Errorf("erase users from %s: %w", d.table, err)
		}
		rep.Deleted[d.table] = tag.RowsAffected()
	}
	n, err := s.eraseKeylessDLQ(ctx, users, at)
	rep.Deleted["feature_dlq_keyless"] = n
	if err != nil {
		return rep, fmt.Errorf("erase users from feature_dlq's entries without a key: %w", err)
	}
	// Dead outbox rows are never published, so the relay's retention never deletes them. Rows
	// that go dead after this lose the users' events then, in the relay (the erasure is
	// committed by now, see outbox.eraseForgotten).
	n, err = outbox.NewStore(s.pg).EraseDead(ctx, users, time.UnixMilli(at))
	rep.Deleted["event_outbox"] = n
	if err != nil {
		return rep, err
	}
	n, hashes, err := s.forgetUsers(ctx, users)
	rep.Deleted["feature_users"] = n
	rep.Deleted["redis_user_hashes"] = hashes
	if err != nil {
		return rep, err
	}
	// A writer of the Redis copy that read the user's row before the deletion and writes it
	// after (the API's read-through of an expired hash, the consumer's journal heal, a
	// repopulation's page) finds the erasure marker forgetUsers set, whenever it lands
	// (writeScript). The previous release's writers do not check it (a rollout, a
	// rollback): for them, delete the hash once more when such a write has usually landed,
	// and after every running repopulation (it copies a snapshot page by page, minutes for a
	// large store) has ended.
	t = time.NewTimer(redisSecondPass)
	select {
	case <-ctx.Done():
		t.Stop()
		return rep, fmt.Errorf("second pass over the redis copy (run it again): %w", ctx.Err())
	case <-t.C:
	}
	if err := s.awaitRepopulation(ctx, repopulationWaitMax); err != nil {
		return rep, err
	}
	hashes, err = s.forgetRedis(ctx, users)
	rep.Deleted["redis_user_hashes"] += hashes
	if err != nil {
		return rep, err
	}
	// The raw rows of events received before the erasure whose transaction committed after
	// the first pass: the API takes a request's events up to --ingest.write-timeout after
	// receiving them and commits them within as long again (up to 2 s with the default 1 s),
	// past the first pass's 1 s margin. Only recent rows can be such (created_at is their
	// transaction's start, after the receive), so the BRIN index on created_at keeps this
	// pass to the newest blocks.
	for _, table := range []string{"watches", "impression_events", "legacy_events"} {
		tag, err := s.pg.Exec(ctx, eraseRawSQL(table, "created_at >= to_timestamp(($2::bigint - $3) / 1000.0)"), users, at,
			lateCommitWindow.Milliseconds())
		if err != nil {
			return rep, fmt.Errorf("erase users' late rows from %s: %w", table, err)
		}
		rep.Deleted[table] += tag.RowsAffected()
	}
	return rep, nil
}

// eraseKeylessDLQ deletes the DLQ entries without a Kafka key created up to the erasure
// time (at, ms) whose payload holds one of the users' ids as a JSON string value
// (payloadStrings), and returns how many went. Such an entry is a message another producer
// published without a key, or one the consumer stored without its key after PostgreSQL
// refused it whole: the deletion by key missed it, and it kept the user's raw event (their id,
// items, times) for good. A value equal to a user's id goes whatever its member (an item id
// that equals the user's id, too): a dead letter is deleted rather than a user's data kept.
// Entries keyed by another user are that user's, and are kept. The table is read once, in id
// order, keylessDLQPage entries at a time, each entry's first keylessDLQBytes; the entries a
// batch stores after the erasure is recorded are checked when stored (queueDLQ).
func (s *Store) eraseKeylessDLQ(ctx context.Context, users []string, at int64) (int64, error) {
	erased := make(map[string]bool, len(users))
	for _, u := range users {
		erased[u] = true
	}
	var deleted, after int64
	for {
		var ids []int64
		var id int64
		var payload []byte
		var n, got int64
		err := postgres.Untimed(ctx, s.pg, func(tx pgx.Tx) error {
			// A page may pass many keyed entries by (no index on the key): without the
			// session's statement_timeout, as the deletion by key.
			rows, _ := tx.Query(ctx, `SELECT id, substring(payload FROM 1 FOR $4) FROM feature_dlq
WHERE id > $1 AND (msg_key IS NULL OR msg_key = ''::bytea) AND created_at <= to_timestamp($2::bigint / 1000.0)
ORDER BY id LIMIT $3`, after, at, keylessDLQPage, keylessDLQBytes)
			_, err := pgx.ForEachRow(rows, []any{&id, &payload}, func() error {
				n++
				after = id
				for _, v := range payloadStrings(payload, 0) {
					if erased[v] {
						ids = append(ids, id)
						break
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("read entries: %w", err)
			}
			if len(ids) == 0 {
				return nil
			}
			tag, err := tx.Exec(ctx, `DELETE FROM feature_dlq WHERE id = ANY($1)`, ids)
			if err != nil {
				return fmt.Errorf("delete entries: %w", err)
			}
			got = tag.RowsAffected()
			return nil
		})
		if err != nil {
			return deleted, err
		}
		deleted += got
		if n < keylessDLQPage {
			return deleted, nil
		}
	}
}

// keylessDLQPage is how many DLQ entries without a key eraseKeylessDLQ reads at a time, and
// keylessDLQBytes how much of each payload: a Kafka message is up to 1 MiB by default, so a
// page holds at most ~100 MiB.
const (
	keylessDLQPage  = 100
	keylessDLQBytes = 1 << 20
)

// recordForgotten records the users in forgotten_users, in a transaction that holds each
// user's feature row, or its key when there is none, when it commits: a consumer batch
// writing one of them commits before it, or sees the erasure in its own transaction and
// writes nothing (forgottenCheckSQL in apply.go has the argument). Such a batch may run for
// --consumer.drain-timeout and longer, so the record waits for it without the session's
// lock_timeout and statement_timeout (ctx still stops it). The erasure time it returns is
// settle from when the record holds the users, not from before that wait: the consumers
// learn of the erasure only at the commit, and a wait past an erasure time fixed earlier
// left them none of settle to read it, so an undecodable message of the users that one
// dead-lettered meanwhile (a list without the erasure) was created after that time and
// outlived the DLQ's clearing.
func (s *Store) recordForgotten(ctx context.Context, users []string, settle time.Duration) (at int64, err error) {
	sorted := slices.Clone(users)
	slices.Sort(sorted) // a batch locks its users in this order: neither waits for the other in a cycle
	sorted = slices.Compact(sorted)
	err = postgres.Untimed(ctx, s.pg, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = 0`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE`, sorted); err != nil {
			return fmt.Errorf("lock feature users: %w", err)
		}
		// A user without a row: the insert waits for a batch's uncommitted insert of that user
		// to end, or makes a batch's later insert wait for this transaction; the row itself
		// is deleted before the commit, so nobody ever sees it.
		rows, _ := tx.Query(ctx, `INSERT INTO feature_users (user_id) SELECT unnest($1::text[]) ON CONFLICT (user_id) DO NOTHING RETURNING user_id`, sorted)
		placeholders, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("hold the keys of users without features: %w", err)
		}
		if len(placeholders) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM feature_users WHERE user_id = ANY($1::text[])`, placeholders); err != nil {
				return fmt.Errorf("hold the keys of users without features: %w", err)
			}
		}
		// Under the outbox's erasure lock, taken last (held only until the commit): a relay
		// making rows dead meanwhile either reads the erasure or is done before EraseDead
		// looks (outbox.eraseForgotten).
		if err := outbox.LockErasures(ctx, tx); err != nil {
			return err
		}
		at = time.Now().Add(settle).UnixMilli()
		_, err = tx.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) SELECT unnest($1::text[]), $2
ON CONFLICT (user_id) DO UPDATE SET forgotten_at_ms = greatest(forgotten_users.forgotten_at_ms, EXCLUDED.forgotten_at_ms), forgotten_at = now()`,
			sorted, at)
		return err
	})
	return at, err
}

// execScan runs one of Forget's statements that read a whole table (the raw tables and the
// DLQ have no index by user): on a production table that takes minutes, far past the
// session's statement_timeout (--pg.statement-timeout, 5 s by default), which cancelled
// every erasure of a real deployment after the users were recorded and before any row went.
// ctx (Ctrl-C) still stops it.
func (s *Store) execScan(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := postgres.Untimed(ctx, s.pg, func(tx pgx.Tx) error {
		var err error
		tag, err = tx.Exec(ctx, sql, args...)
		return err
	})
	return tag, err
}

// eraseRawSQL deletes a raw table's rows of the users $1 received up to the erasure ($2, ms;
// later events are the user's return), and matching extra when it is not "".
func eraseRawSQL(table, extra string) string {
	q := "DELETE FROM " + table + " WHERE user_id = ANY($1) AND server_received_ts_ms <= $2"
	if table == "legacy_events" { // no receive time: its insert time stands for it
		q = "DELETE FROM " + table + " WHERE user_id = ANY($1) AND created_at <= to_timestamp($2::bigint / 1000.0)"
	}
	if extra != "" {
		q += " AND " + extra
	}
	return q
}

// lateCommitWindow is how far before the erasure time the second pass over the raw tables
// looks for rows committed late: a request waits at most --ingest.write-timeout for a writer
// and its transaction as long again (1 s each by default).
const lateCommitWindow = time.Minute

// redisSecondPass is how long after the deletion Forget deletes the users' Redis hashes
// again: longer than a read-through or a journal heal usually takes from its PostgreSQL read
// to its Redis write. Not a bound (a heal held up by a Redis outage takes longer): the
// erasure marker is what keeps such a write out; this pass is for writers without it.
const redisSecondPass = 2 * time.Second

// repopulationWaitMax bounds how long Forget waits for a running repopulation (a large
// store's takes minutes) before it gives up and asks for a rerun.
const repopulationWaitMax = 15 * time.Minute

// awaitRepopulation returns once no repopulation of the Redis copy holds its lock, polling
// every repopulationPoll. A lock that outlives its holder expires (lockTTL), so a crashed
// repopulation delays the return by that much at most.
func (s *Store) awaitRepopulation(ctx context.Context, limit time.Duration) error {
	if s.rd == nil {
		return nil
	}
	deadline := time.Now().Add(limit)
	for {
		n, err := s.rd.Do(ctx, s.rd.B().Exists().Key(s.keys.Lock).Build()).AsInt64()
		if err != nil {
			return fmt.Errorf("check for a repopulation of the redis copy (the data is erased; run it again to clear the copy): %w", err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a repopulation of the redis copy has run for over %s and may copy the users back: run the erasure again once it ends (PostgreSQL is erased)", limit)
		}
		t := time.NewTimer(repopulationPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for a repopulation of the redis copy (the data is erased; run it again to clear the copy): %w", ctx.Err())
		case <-t.C:
		}
	}
}

const repopulationPoll = 250 * time.Millisecond
