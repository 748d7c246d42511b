package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"recsys/pkg/flagenv"
	"recsys/pkg/infra"
	"recsys/pkg/migrate"
	"recsys/pkg/postgres"
)

func newItemsCmd(lc *logConfig) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "items",
		Short: "Block items from every list (takedowns), unblock them, list the blocked ones",
		Long: `Blocked items (table blocked_items) are left out of every list /reco and /recommend
serve, whatever source names them (co-visitation, trending, popular, fresh): content taken down
for legal or moderation reasons, or withdrawn from the catalog. Every API process rereads the
list every --reco.blocked-refresh (2 s), so a block takes effect within that; while
PostgreSQL is unreachable a process keeps the list it read last. The items' features and
events stay, so unblocking restores them as they were.`,
	}
	cmd.AddCommand(newItemsBlockCmd(lc, true), newItemsBlockCmd(lc, false), newItemsBlockedCmd(lc))
	return cmd
}

// blockedItem is one row of blocked_items as the commands print it.
type blockedItem struct {
	ItemID    string    `json:"item_id"`
	Reason    string    `json:"reason"`
	BlockedAt time.Time `json:"blocked_at"`
}

// pgCommand opens a small pool on --pg.dsn for a one-shot command and checks the schema. It
// warns, as infra.Open does for the roles, when the connection does not verify the server.
func pgCommand(ctx context.Context, lc *logConfig, dsn string) (*pgxpool.Pool, error) {
	if dsn == "" {
		return nil, errors.New(postgres.DSNRequired)
	}
	log, err := lc.logger(os.Stderr)
	if err != nil {
		return nil, err
	}
	infra.WarnUnverifiedPostgres(log, dsn)
	pc := postgres.DefaultConfig()
	pc.DSN, pc.MaxConns, pc.MinConns = dsn, 2, 0
	pool, err := postgres.Open(ctx, pc)
	if err != nil {
		return nil, err
	}
	if err := migrate.CheckSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("schema check: %w", err)
	}
	return pool, nil
}

func dsnFlag(cmd *cobra.Command, dsn *string) {
	fs := cmd.Flags()
	fs.StringVar(dsn, "pg.dsn", "", "PostgreSQL URL (secret)")
	flagenv.Alias(fs, "pg.dsn", "DATABASE_URL")
	flagenv.Secret(fs, "pg.dsn")
}

func newItemsBlockCmd(lc *logConfig, block bool) *cobra.Command {
	var dsn, reason string
	use, short := "unblock ITEM_ID...", "Let items be recommended again; prints {\"unblocked\": n}"
	if block {
		use, short = "block [--reason R] ITEM_ID...", "Leave items out of every list from the next refresh (2 s); prints {\"blocked\": n}"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := itemIDs(args)
			if err != nil {
				return err
			}
			pool, err := pgCommand(cmd.Context(), lc, dsn)
			if err != nil {
				return err
			}
			defer pool.Close()
			if block {
				// Blocking an item again without --reason (a list of takedowns re-run, a
				// moderation script) keeps the reason recorded with it, the takedown's
				// reference: only a new --reason replaces it.
				tag, err := pool.Exec(cmd.Context(), `INSERT INTO blocked_items (item_id, reason) SELECT unnest($1::text[]), $2
ON CONFLICT (item_id) DO UPDATE SET reason = CASE WHEN EXCLUDED.reason = '' THEN blocked_items.reason ELSE EXCLUDED.reason END`, ids, reason)
				if err != nil {
					return fmt.Errorf("block items: %w", err)
				}
				return printJSON(cmd, map[string]int64{"blocked": tag.RowsAffected()})
			}
			tag, err := pool.Exec(cmd.Context(), `DELETE FROM blocked_items WHERE item_id = ANY($1)`, ids)
			if err != nil {
				return fmt.Errorf("unblock items: %w", err)
			}
			return printJSON(cmd, map[string]int64{"unblocked": tag.RowsAffected()})
		},
	}
	dsnFlag(cmd, &dsn)
	if block {
		cmd.Flags().StringVar(&reason, "reason", "", "why (kept with the block, shown by `recsys items blocked`; blocking an item again without it keeps the recorded reason)")
	}
	return cmd
}

// itemIDs checks the ids as the API does (1-128 characters, counted as characters: an id of
// multi-byte letters the API accepted must be blockable) and returns each once: one statement
// cannot upsert a row twice (a list through xargs may repeat an id).
func itemIDs(ids []string) ([]string, error) {
	for _, id := range ids {
		if id == "" || utf8.RuneCountInString(id) > 128 {
			return nil, fmt.Errorf("item id %.20q: want 1-128 characters, as the API accepts", id)
		}
	}
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

func newItemsBlockedCmd(lc *logConfig) *cobra.Command {
	var dsn string
	cmd := &cobra.Command{
		Use:   "blocked",
		Short: "List the blocked items as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := pgCommand(cmd.Context(), lc, dsn)
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := pool.Query(cmd.Context(), `SELECT item_id, reason, blocked_at FROM blocked_items ORDER BY item_id`)
			if err != nil {
				return fmt.Errorf("list blocked items: %w", err)
			}
			items, err := pgx.CollectRows(rows, pgx.RowToStructByPos[blockedItem])
			if err != nil {
				return fmt.Errorf("list blocked items: %w", err)
			}
			if items == nil {
				items = []blockedItem{}
			}
			return printJSON(cmd, items)
		},
	}
	dsnFlag(cmd, &dsn)
	return cmd
}
