package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"recsys/migrations"
	"recsys/pkg/flagenv"
	"recsys/pkg/infra"
	"recsys/pkg/migrate"
	"recsys/pkg/postgres"
)

// How long `recsys migrate` waits for the database to accept connections, and how often it tries.
var migrateConnectWait, migrateConnectRetry = 30 * time.Second, time.Second

func newMigrateCmd(lc *logConfig) *cobra.Command {
	var dsn string
	lockTimeout, lockRetryFor := migrate.DefaultLockTimeout, migrate.DefaultLockRetryFor
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, revert and check the embedded schema migrations",
		Long: `Apply, revert and check the embedded PostgreSQL schema migrations (golang-migrate).
Concurrent "migrate up" runs from several pods are serialised by an advisory lock.
A database that does not accept connections yet is retried for up to 30 s, each attempt
bounded by 5 s (or the DSN's connect_timeout), so a server that never answers fails the run.
A migration waits at most --migrate.lock-timeout for each table lock (writers of the table
queue behind it meanwhile); one that gives up is rolled back whole and run again, for up to
--migrate.lock-retry-for, leaving the schema clean if it never gets its locks.
Stopped (SIGTERM, Ctrl-C) while a migration runs, it cancels it: the migration rolls back and
the version is left clean at the one before.
Roles never migrate implicitly; they stay unready while the schema is behind the binary,
and the relay and consumer start their work only once it has caught up. A schema ahead of
the binary is accepted unless one of its migrations recorded that it breaks binaries this
old (docs/rollback.md, "Marking a breaking migration"): then the relay and consumer refuse
to start, the api stays unready and the tools other than migrate refuse.`,
	}
	cmd.PersistentFlags().StringVar(&dsn, "pg.dsn", "", "PostgreSQL URL (secret)")
	flagenv.Alias(cmd.PersistentFlags(), "pg.dsn", "DATABASE_URL")
	flagenv.Secret(cmd.PersistentFlags(), "pg.dsn")
	cmd.PersistentFlags().DurationVar(&lockTimeout, "migrate.lock-timeout", lockTimeout, "longest wait of a migration for each lock it takes (its lock_timeout; 0: unbounded); every later query of that table waits behind it meanwhile")
	cmd.PersistentFlags().DurationVar(&lockRetryFor, "migrate.lock-retry-for", lockRetryFor, "how long up and down retry a migration that gave up waiting for a lock (nothing of it applied) before failing with the schema clean")
	open := func(ctx context.Context) (*migrate.Migrator, error) {
		if dsn == "" {
			return nil, errors.New(postgres.DSNRequired)
		}
		// PostgreSQL takes whole milliseconds up to INT_MAX.
		if lockTimeout < 0 || lockTimeout > math.MaxInt32*time.Millisecond {
			return nil, fmt.Errorf("--migrate.lock-timeout must be between 0 and %s, got %s", math.MaxInt32*time.Millisecond, lockTimeout)
		}
		if lockRetryFor < 0 {
			return nil, fmt.Errorf("--migrate.lock-retry-for must be >= 0, got %s", lockRetryFor)
		}
		log, err := lc.logger(os.Stderr)
		if err != nil {
			return nil, err
		}
		if _, err := postgres.ParseDSN(dsn); err != nil {
			return nil, fmt.Errorf("database url: %w", err)
		}
		infra.WarnUnverifiedPostgres(log, dsn)
		var m *migrate.Migrator
		err = waitForDatabase(ctx, log, func() (err error) {
			m, err = migrate.Open(dsn)
			return err
		})
		if err != nil {
			return nil, err
		}
		m.Log, m.LockTimeout, m.LockRetryFor = log, lockTimeout, lockRetryFor
		return m, nil
	}
	inspect := func(ctx context.Context) (st migrate.State, err error) {
		if dsn == "" {
			return st, errors.New(postgres.DSNRequired)
		}
		log, err := lc.logger(os.Stderr)
		if err != nil {
			return st, err
		}
		if _, err := postgres.ParseDSN(dsn); err != nil {
			return st, fmt.Errorf("database url: %w", err)
		}
		infra.WarnUnverifiedPostgres(log, dsn)
		err = waitForDatabase(ctx, log, func() (err error) {
			st, err = migrate.Inspect(ctx, dsn)
			return err
		})
		return st, err
	}
	withMigrator := func(fn func(cmd *cobra.Command, m *migrate.Migrator, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			m, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer m.Close()
			if err := fn(cmd, m, args); err != nil {
				return err
			}
			v, dirty, err := m.Version()
			if err != nil {
				return err
			}
			printState(cmd.OutOrStdout(), migrate.State{Version: v, Dirty: dirty})
			return nil
		}
	}
	cmd.AddCommand(&cobra.Command{
		Use:         "up",
		Short:       "Apply every pending migration",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{warnUnreadAnnotation: "true"},
		RunE: withMigrator(func(cmd *cobra.Command, m *migrate.Migrator, _ []string) error {
			return m.Up(cmd.Context())
		}),
	}, newMigrateDownCmd(withMigrator), &cobra.Command{
		Use:   "version",
		Short: "Print the applied version, whether it is dirty and whether a migration is running",
		Args:  cobra.NoArgs,
		// Read directly: a Migrator would wait for a running migration to end.
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := inspect(cmd.Context())
			if err != nil {
				return err
			}
			printState(cmd.OutOrStdout(), st)
			return nil
		},
	}, &cobra.Command{
		Use:   "force V",
		Short: "Set the version to V without running migrations (after fixing a failed one by hand)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.Atoi(args[0])
			if err != nil || v < -1 {
				return fmt.Errorf("force V: V must be an integer >= -1, got %q", args[0])
			}
			// Refused before opening a Migrator, which would wait for the run to end and
			// then force over the version it recorded.
			st, err := inspect(cmd.Context())
			if err != nil {
				return err
			}
			if st.Running {
				return fmt.Errorf("force version %d: %w", v, migrate.ErrRunning)
			}
			return withMigrator(func(cmd *cobra.Command, m *migrate.Migrator, _ []string) error {
				return m.Force(cmd.Context(), v)
			})(cmd, args)
		},
	}, newMigrateCheckCmd(lc, &dsn))
	return cmd
}

// waitForDatabase runs connect until it succeeds: a database that is still starting
// (compose's first start, a restarted pod) is waited for, within bounds, rather than failing
// a one-shot Job or service.
func waitForDatabase(ctx context.Context, log *slog.Logger, connect func() error) error {
	deadline := time.Now().Add(migrateConnectWait)
	for {
		err := connect()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect for %s: %w", migrateConnectWait, err)
		}
		log.Warn("database not reachable yet, retrying", "err", flagenv.RedactText(err.Error()), "retry_in_s", migrateConnectRetry.Seconds())
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(migrateConnectRetry):
		}
	}
}

// printState prints the line every migrate command ends with. Dirty is also the state of a
// version whose migration is still running, so it says which.
func printState(w io.Writer, st migrate.State) {
	note := ""
	switch {
	case st.Dirty && st.Running:
		note = "; a migration is running now (dirty until it ends)"
	case st.Dirty:
		note = "; no migration is running: the last one failed or was killed"
	}
	fmt.Fprintf(w, "version %d dirty=%t (binary expects %d%s)\n", st.Version, st.Dirty, migrate.Latest(), note)
}

func newMigrateDownCmd(withMigrator func(func(*cobra.Command, *migrate.Migrator, []string) error) func(*cobra.Command, []string) error) *cobra.Command {
	to := -1
	c := &cobra.Command{
		Use:   "down N | down --to-version V",
		Short: "Revert the last N migrations, or those above version V (safe to repeat)",
		Long: `Revert the last N migrations, or every migration above version V (an N above the applied
migrations is refused, reverting nothing). Prefer --to-version:
run twice (a repeated step, a retried Job), "down 1" reverts one more migration and drops
what it holds, while "down --to-version V" does nothing once the schema is at V.`,
		Args: cobra.MaximumNArgs(1),
		RunE: withMigrator(func(cmd *cobra.Command, m *migrate.Migrator, args []string) error {
			switch {
			case cmd.Flags().Changed("to-version") && to < 0:
				return fmt.Errorf("down --to-version V: V must be >= 0, got %d", to)
			case len(args) == 1 && to >= 0:
				return errors.New("down: give N or --to-version V, not both")
			case to >= 0:
				return m.DownTo(cmd.Context(), uint(to))
			case len(args) == 0:
				return errors.New("down: give N (migrations to revert) or --to-version V (version to return to)")
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return fmt.Errorf("down N: N must be a positive integer, got %q", args[0])
			}
			return m.Down(cmd.Context(), n)
		}),
	}
	c.Flags().IntVar(&to, "to-version", -1, "revert every migration above this version (0: all); a schema at or below it is left alone")
	return c
}

func newMigrateCheckCmd(lc *logConfig, dsn *string) *cobra.Command {
	var dir, out, dbURL string
	var skipDB bool
	c := &cobra.Command{
		Use:   "check",
		Short: "Check naming, ordering and checksums, and compare with the database (JSON report; exit 1 on any issue)",
		Long: `Check the migrations: file naming (NNNN_name.up.sql/.down.sql), strict ordering,
SHA-256 checksums, and, with a database, what is applied: drift (an applied file was changed),
missing (applied but not in this binary), dirty, and pending (not an error).
Prints the JSON report and exits 1 when there is any issue.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var fsys fs.FS = migrations.FS
			shown := "embedded"
			if dir != "" {
				fsys, shown = os.DirFS(dir), dir
			}
			url, reason := *dsn, ""
			if dbURL != "" {
				url = dbURL
			}
			switch {
			case skipDB:
				url, reason = "", "flag --skip-db-check is set"
			case url == "":
				reason = "DATABASE_URL is not set"
			default:
				log, err := lc.logger(os.Stderr)
				if err != nil {
					return err
				}
				infra.WarnUnverifiedPostgres(log, url)
			}
			r, err := migrate.Check(cmd.Context(), fsys, shown, url, reason)
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent(r, "", "  ")
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			if out != "" {
				if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("write report: %w", err)
				}
			}
			if r.Summary.Status != "ok" {
				return &exitError{code: 1, err: fmt.Errorf("migration check failed with %d issue(s)", r.Summary.IssuesCount)}
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "migrations-dir", "", "check this folder instead of the migrations embedded in the binary")
	c.Flags().StringVar(&dbURL, "database-url", "", "database to compare with (default: --pg.dsn / DATABASE_URL; secret)")
	flagenv.Secret(c.Flags(), "database-url")
	c.Flags().BoolVar(&skipDB, "skip-db-check", false, "check the files only")
	c.Flags().StringVar(&out, "output-json", "", "also write the report to this file")
	return c
}
