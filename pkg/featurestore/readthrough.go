package featurestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// Empty documents of a user without events (a user hash always holds all three).
const (
	emptyHistory     = "[]"
	emptyWatched     = "{}"
	emptyImpressions = "{}"
)

// ErrNotWrittenBack means ReadThroughUser read the user from PostgreSQL but Redis refused or
// did not answer the write back (out of memory, a read-only replica after a failover, a
// timeout): the fields and found it returns with it are valid, only the copy still lacks them.
var ErrNotWrittenBack = errors.New("read-through user not written back to redis")

// ReadThroughUser puts userID's documents back into the Redis copy from PostgreSQL, with
// expiry ttl (the writers' user TTL, RecordedUserTTL), and returns them. With a user TTL
// (SetUserTTL) users without events for that long leave Redis, so a reader that finds a
// user's hash absent, while the copy is otherwise complete, calls this. found reports whether
// PostgreSQL has the user. A user PostgreSQL does not know gets no hash (f is zero): an empty
// hash per unknown id grew Redis with the rate of random or per-request user ids (bots, a
// request id sent as user_id) until maxmemory evicted or refused real features. Readers
// remember such users in their own process instead (modules/reco absentUsers).
//
// The write is the consumer's merge (the higher version wins, under the copy's generation),
// so a read racing a newer write of the consumer never replaces it, and one of a row `users
// forget` deleted after the read is refused by the erasure marker, however late it lands. When only the write fails
// the error wraps ErrNotWrittenBack and f and found are still set: a reader can rank the user
// with them rather than read them from PostgreSQL a second time.
func (s *Store) ReadThroughUser(ctx context.Context, userID string, ttl time.Duration) (f UserFields, found bool, err error) {
	var gen int64
	var version *int64
	var hh, ww, ii, rr *string
	err = s.pg.QueryRow(ctx, `SELECT m.generation, u.version, u.history, u.watched, u.impressions, u.impressions_recent
FROM feature_meta m LEFT JOIN feature_users u ON u.user_id = $1`, userID).Scan(&gen, &version, &hh, &ww, &ii, &rr)
	if errors.Is(err, pgx.ErrNoRows) {
		return f, false, nil // nothing applied yet: there is no copy to complete
	}
	if err != nil {
		return f, false, fmt.Errorf("read user %q through to postgresql: %w", userID, err)
	}
	if version == nil {
		return f, false, nil
	}
	wr := &redisWrite{readThrough: true, users: []userRow{{id: userID, version: *version, h: *hh, w: *ww, i: *ii, r: *rr}}, userTTL: ttl}
	if s.rd != nil {
		var ee *epochError
		if err := s.exec(ctx, strconv.FormatInt(gen, 10), wr); err != nil && !errors.As(err, &ee) {
			u := wr.users[0]
			return UserFields{u.h, u.w, u.i, u.r}, true, fmt.Errorf("%w: user %q: %w", ErrNotWrittenBack, userID, err)
		}
		// Another generation: the copy is being replaced, and its repopulation writes the user.
	}
	u := wr.users[0]
	return UserFields{u.h, u.w, u.i, u.r}, true, nil
}

// RecordedUserTTL is the longest user TTL the copy's writers recorded since the copy was last
// replaced (0: users do not expire, or no writer recorded one). Readers read an absent user
// through only when it is set, so --redis.user-ttl needs setting only where features are
// written. The longest, not the last: writers that disagree (consumers during a rollout that
// changes it) each leave hashes that expire, and a writer without a TTL recording 0 made
// readers rank every user whose hash had expired as one without events.
func RecordedUserTTL(ctx context.Context, rd rueidis.Client, keys Keys) (time.Duration, error) {
	v, err := rd.Do(ctx, rd.B().Hget().Key(keys.Meta).Field("ut").Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read recorded user ttl: %w", err)
	}
	return time.Duration(v) * time.Millisecond, nil
}
