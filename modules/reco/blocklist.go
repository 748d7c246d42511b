package reco

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// blocklist is the set of blocked items (table blocked_items, written by `recsys items
// block`) as this process last read it: every list it serves leaves them out
// (ranking.Snapshot.Blocked). It is read every --reco.blocked-refresh; while PostgreSQL is
// unreachable the last set read stays in force (a process that never read it serves
// without it, and says so in /healthz and its metrics).
type blocklist struct {
	load  func(context.Context) ([]string, error)
	items atomic.Pointer[[]string]
	at    atomic.Int64 // Unix ms of the last successful read; 0: never
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

func (b *blocklist) refresh(ctx context.Context) error {
	ids, err := b.load(ctx)
	if err != nil {
		return err
	}
	b.items.Store(&ids)
	b.at.Store(time.Now().UnixMilli())
	return nil
}

// current returns the blocked items (nil before the first read); callers must not modify it.
func (b *blocklist) current() []string {
	if p := b.items.Load(); p != nil {
		return *p
	}
	return nil
}
