package cmd

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"recsys/pkg/featurestore"
)

func newUsersCmd(lc *logConfig) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Manage users' data (erasure)",
	}
	cmd.AddCommand(newUsersForgetCmd(lc))
	return cmd
}

// maxForgetUsers bounds one run: the ids travel as one array parameter per statement.
const maxForgetUsers = 100_000

func newUsersForgetCmd(lc *logConfig) *cobra.Command {
	var sf storeFlags
	var fromFile string
	var settle time.Duration
	cmd := &cobra.Command{
		Use:   "forget [--from-file F] USER_ID...",
		Short: "Erase users' data (right to erasure): raw events, features, Redis copy, DLQ entries, dead outbox rows; prints JSON",
		Long: `Erase everything recsys keeps about the users: their raw impressions, watches and legacy
events, their feature rows in PostgreSQL and hashes in the Redis copy, their DLQ entries, and
their events in dead outbox rows (which are never published, so never deleted otherwise); the
relay takes them out of rows still pending then that go dead later.
The users are first recorded in forgotten_users with an erasure time --settle from when the
record holds them (it first waits for a consumer batch holding one of them); every
consumer rereads that table every 5 s and skips the users' events received up to that time,
wherever they still are (the outbox, Kafka; replay-dlq deletes such DLQ entries), so they do
not bring the data back, and stores none of their undecodable messages in the DLQ (checked
in the batch's transaction, so a batch held up past the erasure stores none either). A batch that read the table before the erasure cannot either,
however long it runs: recording the erasure waits for a batch holding one of the users, and
a batch that takes one of them later sees the erasure in its own transaction and drops the
user's events. At the erasure time the rows are deleted, and the Redis hashes once
more 2 s later, after any repopulation of the Redis copy that is running ends (it copies a
snapshot that may still hold the users; the command waits up to 15 minutes for it, then
fails asking for a rerun). Events received after it (the user came back) apply as usual.
Safe while everything runs.

Kept: aggregates over all users (item statistics, co-visitation lists, trending and popular
lists, KPI roll-ups), which hold no user id; the dedup keys, each an event id with its user
id (migration 0022), until --ingest.dedup-retention and --consumer.dedup-retention, so a
resend of an erased event is still a duplicate; and the users' forgotten_users rows. Kafka
keeps the users' events until the topics' retention; pending outbox rows are published (the
consumers skip the users' events) and deleted once published (after --relay.retention).

The raw tables and the dead outbox rows are scanned once per run, whatever the number of
users (without --pg.statement-timeout, which such a scan outlasts; Ctrl-C stops it): erase users in lists
(up to 100,000 per run), e.g. once a day. Prints {"users", "forgotten_at_ms", "deleted":
{store: count}}: rows per table (feature_dlq: the entries keyed by the users;
feature_dlq_keyless: the entries without a key whose payload holds one of their ids as a
JSON string value; event_outbox: the users' events taken out of dead rows; feature_users:
the users that had features) and redis_user_hashes, the hashes deleted from the Redis copy.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			users, err := forgetList(args, fromFile)
			if err != nil {
				return err
			}
			if settle < 2*featurestore.ForgottenRefresh {
				return fmt.Errorf("--settle %s: want at least %s (twice the consumers' reread interval, so that they skip the users' undecodable messages before the DLQ is cleared)", settle, 2*featurestore.ForgottenRefresh)
			}
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			st, closeFn, err := sf.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			defer closeFn()
			rep, err := st.Forget(cmd.Context(), users, settle)
			if perr := printJSON(cmd, rep); perr != nil && err == nil {
				err = perr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&fromFile, "from-file", "", "file of user ids to erase, one per line taken as it stands (spaces are part of the id; empty lines are skipped) besides those given as arguments")
	cmd.Flags().DurationVar(&settle, "settle", 20*time.Second, "erasure time from the recording of the erasure: how long the consumers get to read it before the rows go (at least 10s)")
	sf.register(cmd.Flags())
	return cmd
}

// forgetList is the users of the arguments and of the file, each once, in order.
func forgetList(args []string, file string) ([]string, error) {
	users := append([]string(nil), args...)
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("--from-file: %w", err)
		}
		defer f.Close()
		// A line is an id as it stands: /log/* accepts spaces in ids, so trimming made such a
		// user impossible to erase from a file. The scanner drops the line end (\n or \r\n);
		// a byte order mark (files saved as "UTF-8 with BOM") is not part of the first id.
		sc := bufio.NewScanner(f)
		for first := true; sc.Scan(); first = false {
			u := sc.Text()
			if first {
				u = strings.TrimPrefix(u, "\uFEFF")
			}
			if u != "" {
				users = append(users, u)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("--from-file: %w", err)
		}
	}
	seen := make(map[string]bool, len(users))
	out := users[:0]
	for _, u := range users {
		// The API counts characters, not bytes (pkg/events).
		switch {
		case u == "":
			return nil, fmt.Errorf("empty user id: no event of it was ever accepted")
		case utf8.RuneCountInString(u) > 128:
			return nil, fmt.Errorf("user id %.20q... is longer than 128 characters: no event of it was ever accepted", u)
		}
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	switch {
	case len(out) == 0:
		return nil, fmt.Errorf("no user to erase: give user ids as arguments or --from-file")
	case len(out) > maxForgetUsers:
		return nil, fmt.Errorf("%d users: at most %d per run", len(out), maxForgetUsers)
	}
	return out, nil
}
