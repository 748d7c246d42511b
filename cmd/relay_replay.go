package cmd

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
)

func newRelayReplayCmd(lc *logConfig) *cobra.Command {
	var (
		dsn, since string
		f          = outbox.ReplayFilter{Status: outbox.StatusDead, Limit: 1000}
	)
	cmd := &cobra.Command{
		Use:   "replay --status dead [--event-type T] [--since D] [--after-id ID] [--limit N] [--dry-run]",
		Short: "Requeue dead (or published) outbox rows for the relays to publish again; prints JSON",
		Long: `Requeue event_outbox rows in one status so the running relays publish them again: they
become pending with attempts 0, due now, and the relays are notified. Rows are taken oldest
first (by id), at most --limit per run. For more, run it again with --after-id set to the
"last_id" it printed, until "requeued" and "skipped" are 0: rows that go dead again at once
(an event no retry can publish) are then not picked again ahead of the rows behind them. Rows
held by another transaction at that moment (a relay's claim scanning their lane) are skipped
and counted in "skipped", and last_id stays before the first of them, so the next run takes
them.

--status dead is the runbook case (rows that used up their attempts, e.g. while a topic was
missing); --status published publishes retained rows again (e.g. after a topic was lost), and
consumers see duplicates they deduplicate on (event_id, user_id). The two are never mixed.
--since takes a duration back from now (24h, 90m) or an RFC 3339 time / date
(2026-01-02T15:04:05Z, 2026-01-02) and matches rows created at or after it; an event
dead-lettered out of a batch row (its own dead row) was created when it was split out.
--dry-run prints what would be requeued and changes nothing.

Replay works on rows: a batch row (one per topic and lane per group commit) is requeued with
all its events. --event-type matches the row's event_type: batch rows are "impression" or
"watch", and legacy events ride in "watch" rows; single-event rows carry their event's type, so
"legacy" matches rows written before migration 0008 and legacy events dead-lettered out of a
batch row. --limit counts rows.

Prints {"status", "event_type", "since", "after_id", "limit", "dry_run", "matched",
"requeued", "events", "by_event_type", "ids", "skipped", "last_id"}, every field present
(event_type and since null when not given, ids and by_event_type empty): matched, requeued,
skipped, by_event_type and ids are rows, events is the number of events those rows carry,
last_id is the next run's --after-id (the largest id up to which every matching row was
requeued; --after-id itself when nothing matched or the first row was skipped).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				f.Since = t
			}
			var errs []error
			if dsn == "" {
				errs = append(errs, errors.New(postgres.DSNRequired))
			}
			if err := f.Validate(); err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			pool, err := pgCommand(cmd.Context(), lc, dsn)
			if err != nil {
				return err
			}
			defer pool.Close()
			res, err := outbox.NewStore(pool).Replay(cmd.Context(), f)
			if err != nil {
				return err
			}
			return printJSON(cmd, res)
		},
	}
	dsnFlag(cmd, &dsn)
	fs := cmd.Flags()
	fs.StringVar(&f.Status, "status", f.Status, "status of the rows to requeue: dead or published")
	fs.StringVar(&f.EventType, "event-type", "", "only rows of this event_type (impression, watch; legacy events ride in watch batch rows, legacy matches single legacy rows: pre-0008 or dead-lettered)")
	fs.StringVar(&since, "since", "", "only rows created at or after this: a duration back from now (24h) or an RFC 3339 time or date (a dead-lettered event's row is created when it is split out)")
	fs.Int64Var(&f.AfterID, "after-id", 0, "only rows with a larger id: the last_id of the previous run, so repeated runs move past rows that go dead again")
	fs.IntVar(&f.Limit, "limit", f.Limit, fmt.Sprintf("most rows to requeue (1-%d)", outbox.MaxReplayLimit))
	fs.BoolVar(&f.DryRun, "dry-run", false, "print what would be requeued without changing anything")
	return cmd
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time, or a date (UTC).
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since: duration must be positive, got %s", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since: %q is neither a duration (24h) nor an RFC 3339 time or date (2026-01-02)", s)
}
