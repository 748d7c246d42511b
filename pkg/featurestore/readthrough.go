package featurestore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// Empty documents: a user PostgreSQL does not know is written back with these, for at most
// absentTTL: long enough that a visitor's requests cost one lookup, short enough that one-off
// visitors (anonymous ids, bots) do not fill Redis for a whole user TTL.
const (
	emptyHistory     = "[]"
	emptyWatched     = "{}"
	emptyImpressions = "{}"
	absentTTL        = time.Hour
)

// ErrNotWrittenBack means ReadThroughUser read the user from PostgreSQL but Redis refused or
// did not answer the write back (out of memory, a read-only replica after a failover, a
// timeout): the fields and found it returns with it are valid, only the copy still lacks them.
var ErrNotWrittenBack = errors.New("read-through user not written back to redis")

// ReadThroughUser puts userID's documents back into the Redis copy from PostgreSQL, with
// expiry ttl (the writers' user TTL, RecordedUserTTL), and returns them. With a user TTL
// (SetUserTTL) users without events for that long leave Redis, so a reader that finds a
// user's hash absent, while the copy is otherwise complete, calls this. A user PostgreSQL does
// not know is written as an empty hash (version 0) that expires within absentTTL, so a user
// without events costs one lookup per hour rather than one per request; their first applied
// event (version 1 or more) replaces it. found reports whether PostgreSQL has the user.
//
// The write is the consumer's merge (the higher version wins, under the copy's generation),
// so a read racing a newer write of the consumer never replaces it. When only the write fails
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
	wr := &redisWrite{readThrough: true, users: []userRow{{id: userID, h: emptyHistory, w: emptyWatched, i: emptyImpressions}},
		userTTL: min(cmp.Or(ttl, absentTTL), absentTTL)}
	if version != nil {
		wr.users[0] = userRow{id: userID, version: *version, h: *hh, w: *ww, i: *ii, r: *rr}
		wr.userTTL = ttl
		found = true
	}
	if s.rd != nil {
		var ee *epochError
		if err := s.exec(ctx, strconv.FormatInt(gen, 10), wr); err != nil && !errors.As(err, &ee) {
			u := wr.users[0]
			return UserFields{u.h, u.w, u.i, u.r}, found, fmt.Errorf("%w: user %q: %w", ErrNotWrittenBack, userID, err)
		}
		// Another generation: the copy is being replaced, and its repopulation writes the user.
	}
	u := wr.users[0]
	return UserFields{u.h, u.w, u.i, u.r}, found, nil
}

// RecordedUserTTL is the user TTL the copy's writers last recorded (0: users do not expire,
// or no writer recorded one). Readers read an absent user through only when it is set, so
// --redis.user-ttl needs setting only where features are written.
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
