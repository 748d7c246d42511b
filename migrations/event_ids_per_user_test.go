package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// TestEventIDsPerUserMigration runs 0022 over dedup and exactly-once records written under
// global ids: each row gets the user of its raw event (by its kind for event_dedup, through
// event_dedup for feature_applied), rows whose raw event is gone get an empty user, and the keys take
// the user, so another user's event of the same id is new while the same user's is still a
// conflict. The down migration keeps one row per id, and refuses while two users' outbox rows
// share an id.
func TestEventIDsPerUserMigration(t *testing.T) {
	m, dsn, since := before(t, 22)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	exec := func(sql string, args ...any) error {
		t.Helper()
		_, err := pool.Exec(ctx, sql, args...)
		return err
	}
	must := func(sql string, args ...any) {
		t.Helper()
		if err := exec(sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// One event of each kind, each id accepted once (global keys); "ev-watch" is also the id
	// of a legacy event of another table, to check the kind picks the table. "ev-gone" lost
	// its raw row to retention; "ev-ext" was applied but never accepted by this API. The raw
	// and dedup rows are written in one transaction, as the API writes them (the backfill
	// matches them by created_at).
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inTx := func(sql string) {
		t.Helper()
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	inTx(`INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, positions, item_ids)
		VALUES ('ev-imp', 'u-imp', 's', 'r', 1, now(), 1, '{0}', '{a}')`)
	inTx(`INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
		VALUES ('ev-watch', 'u-watch', 's', 'r', 'a', 1, 1, now(), 1)`)
	inTx(`INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms) VALUES ('ev-leg', 'u-leg', 'a', 'view', 1, 1000),
		('ev-watch', 'u-other', 'a', 'view', 1, 1000)`)
	inTx(`INSERT INTO event_dedup (event_id, event_type) VALUES ('ev-imp', 'impression'), ('ev-watch', 'watch'), ('ev-leg', 'legacy'), ('ev-gone', 'watch')`)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	must(`INSERT INTO feature_applied (event_id) VALUES ('ev-imp'), ('ev-watch'), ('ev-leg'), ('ev-gone'), ('ev-ext')`)
	must(`INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, status)
		VALUES ('ev-dead', 'watch', 't', 'u1', '\x00', 25, 'dead')`)

	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	rows := func(table string) []string {
		t.Helper()
		return queryStrings(t, pool, `SELECT event_id || '=' || user_id FROM `+table+` ORDER BY 1`)
	}
	if got, want := rows("event_dedup"), []string{"ev-gone=", "ev-imp=u-imp", "ev-leg=u-leg", "ev-watch=u-watch"}; !slices.Equal(got, want) {
		t.Errorf("event_dedup after 0022: %q, want %q", got, want)
	}
	if got, want := rows("feature_applied"), []string{"ev-ext=", "ev-gone=", "ev-imp=u-imp", "ev-leg=u-leg", "ev-watch=u-watch"}; !slices.Equal(got, want) {
		t.Errorf("feature_applied after 0022: %q, want %q", got, want)
	}
	keys := func(table string) string {
		t.Helper()
		return strings.Join(queryStrings(t, pool, `SELECT c.relname || ' (' || (SELECT string_agg(a.attname, ', ' ORDER BY k.ord)
			FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) || ')'
			FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '`+table+`'::regclass AND i.indisunique ORDER BY 1`), "; ")
	}
	for table, want := range map[string]string{
		"event_dedup":     "event_dedup_pkey (event_id, user_id)",
		"feature_applied": "feature_applied_pkey (event_id, user_id)",
		"event_outbox":    "event_outbox_event_id_event_type_msg_key_key (event_id, event_type, msg_key); event_outbox_pkey (id)",
	} {
		if got := keys(table); got != want {
			t.Errorf("unique indexes of %s:\n%s\nwant\n%s", table, got, want)
		}
	}

	// The same id from another user is another event; from the same user it is a conflict.
	for _, tc := range []struct {
		name, sql string
		conflict  bool
	}{
		{"dedup, other user", `INSERT INTO event_dedup (event_id, user_id, event_type) VALUES ('ev-imp', 'u-b', 'impression')`, false},
		{"dedup, same user", `INSERT INTO event_dedup (event_id, user_id, event_type) VALUES ('ev-imp', 'u-imp', 'watch')`, true},
		{"applied, other user", `INSERT INTO feature_applied (event_id, user_id) VALUES ('ev-imp', 'u-b')`, false},
		{"applied, same user", `INSERT INTO feature_applied (event_id, user_id) VALUES ('ev-imp', 'u-imp')`, true},
		{"applied by an older consumer", `INSERT INTO feature_applied (event_id) VALUES ('ev-new')`, false},
		{"dead letter, other user", `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, status)
			VALUES ('ev-dead', 'watch', 't', 'u2', '\x00', 25, 'dead')`, false},
		{"dead letter, same user", `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, status)
			VALUES ('ev-dead', 'watch', 't', 'u1', '\x00', 25, 'dead')`, true},
	} {
		err := exec(tc.sql)
		if conflict := err != nil && strings.Contains(err.Error(), "23505"); conflict != tc.conflict || (err != nil && !conflict) {
			t.Errorf("%s: %v, want conflict %t", tc.name, err, tc.conflict)
		}
	}

	// Down: the outbox rows of two users with one id stop it, unchanged.
	if err := m.Down(ctx, since); err == nil || !strings.Contains(err.Error(), "two users") {
		t.Fatalf("down with two users' dead letters of one id = %v, want a refusal", err)
	}
	if n := queryStrings(t, pool, `SELECT count(*)::text FROM event_outbox`); !slices.Equal(n, []string{"2"}) {
		t.Fatalf("outbox rows after the refused down: %v", n)
	}
	// golang-migrate marked the target version dirty; the file's transaction rolled back, so
	// the schema is still 0022's (docs/rollback.md: force, fix, run down again).
	if v, dirty, err := m.Version(); err != nil || !dirty || v != 21 {
		t.Fatalf("after the refused down: version %d dirty %t (%v), want 21 dirty", v, dirty, err)
	}
	if err := m.Force(ctx, 22); err != nil {
		t.Fatal(err)
	}
	must(`DELETE FROM event_outbox WHERE msg_key = 'u2'`)
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	if got, want := queryStrings(t, pool, `SELECT event_id FROM event_dedup ORDER BY 1`), []string{"ev-gone", "ev-imp", "ev-leg", "ev-watch"}; !slices.Equal(got, want) {
		t.Errorf("event_dedup after the down migration: %q, want %q (one row per id)", got, want)
	}
	if got, want := queryStrings(t, pool, `SELECT event_id FROM feature_applied ORDER BY 1`), []string{"ev-ext", "ev-gone", "ev-imp", "ev-leg", "ev-new", "ev-watch"}; !slices.Equal(got, want) {
		t.Errorf("feature_applied after the down migration: %q, want %q (one row per id)", got, want)
	}
	for table, want := range map[string]string{
		"event_dedup":     "event_dedup_pkey (event_id)",
		"feature_applied": "feature_applied_pkey (event_id)",
		"event_outbox":    "event_outbox_event_id_event_type_key (event_id, event_type); event_outbox_pkey (id)",
	} {
		if got := keys(table); got != want {
			t.Errorf("unique indexes of %s after the down migration:\n%s\nwant\n%s", table, got, want)
		}
	}
}

// TestEventIDsPerUserMigrationTakesTheDedupRowsEvent: a raw table may hold an older event
// with the id of a dedup row, of another user: with --ingest.raw-retention longer than
// --ingest.dedup-retention (or 0, keep), the id's first key expired, and the global key then
// accepted another user's event with it. Each dedup row must take the user of the event it
// was written with (in the same transaction), never the older event's: the dedup and the
// exactly-once records of the newer event would otherwise carry the wrong user, and its
// user's resend (or redelivery) would be stored and applied again. With several ids, an
// arbitrary pick among the raw rows of an id gets some of them wrong whichever way it leans.
func TestEventIDsPerUserMigrationTakesTheDedupRowsEvent(t *testing.T) {
	m, dsn, _ := before(t, 22)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	must := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var want []string
	for i := range 8 {
		id := fmt.Sprintf("ev-%d", i)
		// The first event's dedup key is gone (retention); its raw row stays. Half the ids
		// store the older event first, half the newer one, so no physical order favours the
		// right row.
		old := func() {
			must(`INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms, created_at)
				VALUES ($1, 'u-old', 's', 'r', 'a', 1, 1, now(), 1, now() - interval '40 days')`, id)
			must(`INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, positions, item_ids, created_at)
				VALUES ($1, 'u-old', 's', 'r', 1, now(), 1, '{0}', '{a}', now() - interval '40 days')`, id+"-imp")
			must(`INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms, created_at)
				VALUES ($1, 'u-old', 'a', 'view', 1, 1000, now() - interval '40 days')`, id+"-leg")
		}
		// The newer event: its raw row and its dedup row in one transaction, as the API writes.
		newer := func() {
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // committed below
			for _, sql := range []string{
				`INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
					VALUES ($1, 'u-new', 's', 'r', 'a', 1, 1, now(), 1)`,
				`INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, positions, item_ids)
					VALUES ($1 || '-imp', 'u-new', 's', 'r', 1, now(), 1, '{0}', '{a}')`,
				`INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms) VALUES ($1 || '-leg', 'u-new', 'a', 'view', 1, 1000)`,
				`INSERT INTO event_dedup (event_id, event_type) VALUES ($1, 'watch'), ($1 || '-imp', 'impression'), ($1 || '-leg', 'legacy')`,
				`INSERT INTO feature_applied (event_id) VALUES ($1), ($1 || '-imp'), ($1 || '-leg')`,
			} {
				if _, err := tx.Exec(ctx, sql, id); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 0 {
			old()
			newer()
		} else {
			newer()
			old()
		}
		want = append(want, id+"=u-new", id+"-imp=u-new", id+"-leg=u-new")
	}
	slices.Sort(want)
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"event_dedup", "feature_applied"} {
		got := queryStrings(t, pool, `SELECT event_id || '=' || user_id FROM `+table)
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Errorf("%s after 0022: %q, want %q", table, got, want)
		}
	}
}
