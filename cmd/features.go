package cmd

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/flagenv"
	"recsys/pkg/infra"
	"recsys/pkg/migrate"
	"recsys/pkg/postgres"
)

// storeFlags are the settings the one-shot feature store commands share with the consumer
// role (same flag and variable names, so one environment configures both).
type storeFlags struct {
	infra    infra.Config
	features features.Config
}

const storeNeeds = infra.Postgres | infra.Redis

func (f *storeFlags) register(fs *pflag.FlagSet) {
	f.infra = infra.DefaultConfig()
	f.infra.RegisterFlags(fs, storeNeeds)
	f.features = features.DefaultConfig()
	f.features.RegisterFlags(fs, "consumer.features.")
	flagenv.Alias(fs, "consumer.features.history-size", "STREAM_FEATURE_HISTORY_SIZE")
}

func (f *storeFlags) open(ctx context.Context, log *slog.Logger) (*featurestore.Store, func(), error) {
	if err := f.infra.Validate(storeNeeds); err != nil {
		return nil, nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := f.features.Validate(); err != nil {
		return nil, nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	in, err := infra.Open(ctx, f.infra, storeNeeds, log)
	if err != nil {
		return nil, nil, err
	}
	if err := migrate.CheckSchema(ctx, in.PG); err != nil {
		in.Close()
		return nil, nil, fmt.Errorf("schema check: %w", err)
	}
	// These commands write the Redis copy (a rebuild, a replay, an erasure's deletions): under
	// another prefix than the consumers' they would change a copy nobody reads, and an erasure
	// would leave the users' features served.
	if err := postgres.Agree(ctx, in.PG, infra.KeyPrefixSetting(f.infra)); err != nil {
		in.Close()
		return nil, nil, err
	}
	st := featurestore.New(in.PG, in.Redis, f.infra.Redis.KeyPrefix, f.features, log)
	st.SetUserTTL(f.infra.Redis.UserTTL)
	return st, in.Close, nil
}

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newFeaturesCmd(lc *logConfig) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "features",
		Short: "Maintain the feature store (PostgreSQL durable state, Redis serving copy)",
	}
	cmd.AddCommand(newFeaturesRebuildCmd(lc), newFeaturesVerifyCmd(lc))
	return cmd
}

func newFeaturesVerifyCmd(lc *logConfig) *cobra.Command {
	var sf storeFlags
	var o featurestore.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare a random sample of the Redis feature copy with PostgreSQL; exit 1 on a difference",
		Long: `Compare a random sample of users and items of the Redis serving copy with the durable state
in PostgreSQL, value for value: users' hashes (version and documents), items' statistics, and
items' co-visitation lists whole (every neighbour, its strength, and the list's version).
Safe while the consumers run: a key that differs is read again after --grace and counts
only if the copy is older than PostgreSQL was at the first read, or newer than the second,
so writes in flight do not count. A copy being repopulated, or of another
generation, is reported without comparing values. Prints a JSON report and exits 1 unless the
copy is complete and every key compared is equal; the fix for a copy that differs is
` + "`recsys features rebuild`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			if o.Sample < 1 {
				return fmt.Errorf("--sample %d: want at least 1", o.Sample)
			}
			st, closeFn, err := sf.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			defer closeFn()
			rep, err := st.Verify(cmd.Context(), o)
			if err != nil {
				return fmt.Errorf("verify redis copy: %w", err)
			}
			if err := printJSON(cmd, rep); err != nil {
				return err
			}
			switch {
			case !rep.Ready || rep.Generation != rep.CopyGeneration:
				return fmt.Errorf("the redis copy is incomplete (ready %v, generation %q against postgres %q): a repopulation is pending or running", rep.Ready, rep.CopyGeneration, rep.Generation)
			case rep.MismatchCount > 0:
				return fmt.Errorf("%d keys of the redis copy differ from postgres: run `recsys features rebuild`", rep.MismatchCount)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Sample, "sample", 1000, "users and items (each) compared, drawn at random")
	cmd.Flags().DurationVar(&o.Grace, "grace", 2*time.Second, "how long a key that differs may take to catch up before it counts (writes in flight)")
	sf.register(cmd.Flags())
	return cmd
}

func newFeaturesRebuildCmd(lc *logConfig) *cobra.Command {
	var sf storeFlags
	var fromEvents bool
	var batch int
	cmd := &cobra.Command{
		Use:   "rebuild",
		Short: "Rebuild the Redis feature copy from PostgreSQL (--from-events: recompute PostgreSQL from the raw events first)",
		Long: `Rebuild the Redis feature copy from the durable state in PostgreSQL. The copy's generation is
bumped first, so the copy is replaced (not merged) while consumers keep running; readers
fall back to PostgreSQL until it is complete.

With --from-events the durable state itself is recomputed from the raw event tables
(impressions, watches, legacy_events) through the same feature update code as the stream,
in event-time order: the feature tables are emptied first (the DLQ is kept). Every feature
of events older than the ingest retention (--ingest.raw-retention, 30 days by default) is
lost, since their raw rows are gone. Stop the consumers during such a rebuild. Only one runs
at a time: a second fails before changing anything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			if fromEvents && batch < 1 {
				return fmt.Errorf("--batch-size %d: want at least 1", batch)
			}
			st, closeFn, err := sf.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			defer closeFn()
			t0 := time.Now()
			out := map[string]any{"from_events": fromEvents}
			if fromEvents {
				n, err := st.RebuildFromEvents(cmd.Context(), batch, func(n int) {
					log.Info("rebuild progress", "events", n, "duration_s", time.Since(t0).Seconds())
				})
				if err != nil {
					return fmt.Errorf("rebuild from events: %w", err)
				}
				out["events"] = n
			} else if err := st.Repopulate(cmd.Context(), true); err != nil {
				return fmt.Errorf("rebuild redis copy: %w", err)
			}
			out["status"] = "ok"
			out["duration_s"] = time.Since(t0).Seconds()
			return printJSON(cmd, out)
		},
	}
	cmd.Flags().BoolVar(&fromEvents, "from-events", false, "recompute the PostgreSQL feature state from the raw event tables first")
	cmd.Flags().IntVar(&batch, "batch-size", 5000, "events applied per transaction with --from-events")
	sf.register(cmd.Flags())
	return cmd
}

func newReplayDLQCmd(lc *logConfig) *cobra.Command {
	var sf storeFlags
	var o featurestore.ReplayOptions
	cmd := &cobra.Command{
		Use:   "replay-dlq",
		Short: "Re-apply pending feature consumer dead letters (idempotently)",
		Long: `Re-decode the pending entries of feature_dlq, oldest first, and apply those that decode now
(after a fix of the payload or of the code) through the same feature update as the stream.
Applying is idempotent: an event whose user's event_id was applied before counts as a duplicate.
Applied entries are marked replayed and written to Redis; entries that still fail (do not
decode, or PostgreSQL refuses their update) stay pending with their new error. Entries of users
erased by 'users forget' that the API received before the erasure are deleted, not applied
(ignored in the report). Prints a JSON
report; its last_id, passed as --after, goes on past entries that keep failing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			if o.Limit < 1 {
				return fmt.Errorf("--limit must be >= 1, got %d", o.Limit)
			}
			st, closeFn, err := sf.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			defer closeFn()
			rep, err := st.ReplayDLQ(cmd.Context(), o)
			if err != nil {
				// What was applied before the failure is applied (and marked replayed
				// unless marking failed): the report says so, as users forget's does.
				if rep.Examined > 0 {
					_ = printJSON(cmd, rep)
				}
				return fmt.Errorf("replay dlq: %w", err)
			}
			return printJSON(cmd, rep)
		},
	}
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "decode and report only; change nothing")
	cmd.Flags().IntVar(&o.Limit, "limit", 1000, "most entries to replay, oldest first")
	cmd.Flags().Int64Var(&o.After, "after", 0, "replay only entries with a larger id (the last_id of a previous report)")
	sf.register(cmd.Flags())
	return cmd
}
