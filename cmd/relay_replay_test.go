package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "24h", want: now.Add(-24 * time.Hour)},
		{in: " 90m ", want: now.Add(-90 * time.Minute)},
		{in: "2026-01-02", want: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)},
		{in: "2026-01-02T15:04:05+02:00", want: time.Date(2026, 1, 2, 13, 4, 5, 0, time.UTC)},
		{in: "-1h", wantErr: "--since: duration must be positive"},
		{in: "yesterday", wantErr: "--since"},
	} {
		got, err := parseSince(tt.in, now)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseSince(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func runRelayReplay(t *testing.T, args ...string) (outbox.ReplayResult, string, error) {
	t.Helper()
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"relay", "replay"}, args...))
	err := root.ExecuteContext(context.Background())
	var res outbox.ReplayResult
	if err == nil {
		if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
			t.Fatalf("output is not the JSON report: %v\n%s", jerr, out.String())
		}
	}
	return res, out.String(), err
}

// `recsys relay replay` requeues only the dead rows it is asked for, reports them as JSON, and
// changes nothing with --dry-run.
func TestRelayReplayCommand(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, status, attempts, last_error, payload_format, event_count)
VALUES ('d1', 'watch', 't', 'u1', '{}', 3, 'dead', 3, 'boom', 1, 1),
       ('d2', 'impression', 't', 'u2', '{}', 3, 'dead', 3, 'boom', 1, 1),
       ('p1', 'watch', 't', 'u3', '{}', 3, 'published', 1, NULL, 1, 1),
       ('d3', 'watch', 't', '~lane/4', '\x00', 3, 'dead', 3, 'boom', 2, 3)`); err != nil {
		t.Fatal(err)
	}
	statusOf := func(eventID string) string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT status FROM event_outbox WHERE event_id = $1`, eventID).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	res, _, err := runRelayReplay(t, "--pg.dsn", dsn, "--status", "dead", "--event-type", "watch", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || res.Matched != 2 || res.Events != 4 || res.Requeued != 0 || res.ByEventType["watch"] != 2 || statusOf("d1") != "dead" {
		t.Fatalf("dry run = %+v (d1 %s); want 2 watch rows (a single and a batch row of 3: 4 events) matched, nothing changed", res, statusOf("d1"))
	}

	t.Setenv("DATABASE_URL", dsn) // the legacy variable works as --pg.dsn
	res, _, err = runRelayReplay(t, "--status", "dead", "--event-type", "watch", "--limit", "1", "--since", "1h")
	if err != nil {
		t.Fatal(err)
	}
	if res.Requeued != 1 || len(res.IDs) != 1 || res.Since == nil || statusOf("d1") != "pending" || statusOf("d3") != "dead" {
		t.Fatalf("replay = %+v (d1 %s, d3 %s); want the oldest dead watch (d1) requeued only", res, statusOf("d1"), statusOf("d3"))
	}
	if statusOf("d2") != "dead" || statusOf("p1") != "published" {
		t.Fatal("replay touched rows outside its filter")
	}
	if res.LastID != res.IDs[0] {
		t.Fatalf("last_id = %d, want the requeued row's id %d", res.LastID, res.IDs[0])
	}

	// The cursor: the next run starts past the last row handled.
	_, out, err := runRelayReplay(t, "--status", "dead", "--after-id", strconv.FormatInt(res.LastID, 10))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"after_id": `+strconv.FormatInt(res.LastID, 10)) || !strings.Contains(out, `"last_id"`) {
		t.Fatalf("report %s lacks after_id %d or last_id", out, res.LastID)
	}
	if statusOf("d2") != "pending" || statusOf("d3") != "pending" {
		t.Fatalf("replay --after-id %d left d2 %s, d3 %s; want both (past the cursor) requeued", res.LastID, statusOf("d2"), statusOf("d3"))
	}

	for _, bad := range [][]string{{"--status", "pending"}, {"--limit", "0"}, {"--since", "soon"}, {"--after-id", "-1"},
		// Types no row has: the run matched nothing and looked done.
		{"--event-type", "watches"}, {"--event-type", "view"}, {"--event-type", "Impression"}} {
		if _, _, err := runRelayReplay(t, bad...); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("replay %v: err %v, want an error naming %s", bad, err, bad[0])
		}
	}
}

// The report has every field the help lists, also when nothing matched and no filter was
// given: event_type and since null (any), ids and by_event_type empty, never left out or null
// for a script to trip on.
func TestRelayReplayReportShapeWithoutFilters(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	for _, tc := range []struct {
		args []string
		want map[string]string // field: its JSON
	}{
		{[]string{"--dry-run"}, map[string]string{"event_type": "null", "since": "null", "ids": "[]", "by_event_type": "{}"}},
		{nil, map[string]string{"event_type": "null", "since": "null", "ids": "[]", "by_event_type": "{}"}},
		{[]string{"--event-type", "watch", "--since", "2026-01-02"}, map[string]string{"event_type": `"watch"`, "since": `"2026-01-02T00:00:00Z"`}},
	} {
		_, out, err := runRelayReplay(t, append([]string{"--pg.dsn", dsn}, tc.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"status", "event_type", "since", "after_id", "limit", "dry_run", "matched", "requeued", "events",
			"by_event_type", "ids", "skipped", "last_id"} {
			if _, ok := got[f]; !ok {
				t.Errorf("replay %v: report lacks %q:\n%s", tc.args, f, out)
			}
		}
		for f, want := range tc.want {
			if string(got[f]) != want {
				t.Errorf("replay %v: %q is %s, want %s", tc.args, f, got[f], want)
			}
		}
	}
}
