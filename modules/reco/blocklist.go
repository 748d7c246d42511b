package reco

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
)

// blocklist is the set of blocked items (table blocked_items, written by `recsys items
// block`) as this process last read it: every list it serves leaves them out
// (ranking.Snapshot.Blocked). It is read every --reco.blocked-refresh; while PostgreSQL is
// unreachable the last set read stays in force. Each read is mirrored into Redis, so that a
// process started while PostgreSQL is unreachable takes the list from there instead of
// serving taken-down items until PostgreSQL is back.
type blocklist struct {
	load  func(context.Context) ([]string, error)
	store mirror // nil: no mirror (unit tests without Redis)
	items atomic.Pointer[[]string]
	at    atomic.Int64 // Unix ms of the last successful read from PostgreSQL; 0: never
	// mirrored is true while the list in force came from the Redis mirror.
	mirrored atomic.Bool
}

// mirror keeps a copy of the blocked items where API processes can read it without
// PostgreSQL.
type mirror interface {
	save(ctx context.Context, ids []string) error
	read(ctx context.Context) (ids []string, found bool, err error)
}

func pgBlocklist(pg *pgxpool.Pool) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		rows, err := pg.Query(ctx, `SELECT item_id FROM blocked_items ORDER BY item_id`)
		if err != nil {
			return nil, fmt.Errorf("read blocked items: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read blocked items: %w", err)
		}
		return ids, nil
	}
}

// redisMirror stores the list as one JSON array. Every process writes it after each read, so
// a copy lost with Redis' data is back within --reco.blocked-refresh.
type redisMirror struct {
	rd  rueidis.Client
	key string
}

func (m redisMirror) save(ctx context.Context, ids []string) error {
	v, err := json.Marshal(ids)
	if err != nil {
		return fmt.Errorf("mirror blocked items to redis: %w", err)
	}
	if err := m.rd.Do(ctx, m.rd.B().Set().Key(m.key).Value(string(v)).Build()).Error(); err != nil {
		return fmt.Errorf("mirror blocked items to redis: %w", err)
	}
	return nil
}

func (m redisMirror) read(ctx context.Context) ([]string, bool, error) {
	v, err := m.rd.Do(ctx, m.rd.B().Get().Key(m.key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read blocked items from redis: %w", err)
	}
	var ids []string
	if err := json.Unmarshal([]byte(v), &ids); err != nil {
		return nil, false, fmt.Errorf("decode blocked items from redis: %w", err)
	}
	return ids, true, nil
}

// refresh reads the list from PostgreSQL and mirrors it. When PostgreSQL fails before this
// process ever read it, the mirror's list is put in force meanwhile.
func (b *blocklist) refresh(ctx context.Context, timeout time.Duration) error {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	ids, err := b.load(lctx)
	cancel()
	if err != nil {
		if b.at.Load() == 0 && b.store != nil {
			mctx, cancel := context.WithTimeout(ctx, timeout)
			mids, found, merr := b.store.read(mctx)
			cancel()
			if merr == nil && found {
				b.items.Store(&mids)
				b.mirrored.Store(true)
			}
			err = errors.Join(err, merr)
		}
		return err
	}
	b.items.Store(&ids)
	b.at.Store(time.Now().UnixMilli())
	b.mirrored.Store(false)
	if b.store != nil {
		mctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return b.store.save(mctx, ids)
	}
	return nil
}

// current returns the blocked items (nil before the first read); callers must not modify it.
func (b *blocklist) current() []string {
	if p := b.items.Load(); p != nil {
		return *p
	}
	return nil
}

// blockedTimeout bounds one read of the list: a hung connection must not stop the refresh for
// good, leaving a list that grows stale without an error.
func blockedTimeout(cfg *Config) time.Duration {
	return max(cfg.BlockedRefresh, cfg.PGTimeout, time.Second)
}
