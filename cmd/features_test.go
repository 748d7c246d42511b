package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

func runFeatures(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"features"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// `recsys features verify` fails on a copy that is not complete, and passes once `recsys
// features rebuild` made it; both print the JSON report. (TestVerify in pkg/featurestore
// covers the comparisons.)
func TestFeaturesVerifyCommand(t *testing.T) {
	conn := []string{"--pg.dsn", testutil.MigratedDatabase(t), "--redis.url", testutil.StartPrivate(t, "redis").URL, "--redis.key-prefix", "fv:"}
	report := func(out string) featurestore.VerifyReport {
		t.Helper()
		var r featurestore.VerifyReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("output is not the JSON report: %v\n%s", err, out)
		}
		return r
	}
	out, err := runFeatures(t, append([]string{"verify", "--grace", "0s"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("verify of an empty copy: %v", err)
	}
	if r := report(out); r.Ready {
		t.Fatalf("an empty copy reported ready: %+v", r)
	}
	if _, err := runFeatures(t, append([]string{"rebuild"}, conn...)...); err != nil {
		t.Fatal(err)
	}
	out, err = runFeatures(t, append([]string{"verify", "--sample", "10"}, conn...)...)
	if err != nil {
		t.Fatalf("verify after a rebuild: %v\n%s", err, out)
	}
	if r := report(out); !r.OK() {
		t.Fatalf("report after a rebuild: %+v", r)
	}
	if _, err := runFeatures(t, append([]string{"verify", "--sample", "0"}, conn...)...); err == nil || !strings.Contains(err.Error(), "--sample") {
		t.Fatalf("--sample 0: %v", err)
	}
}

// --batch-size below 1 is refused naming the flag, before anything is opened (it used to
// become 5000 silently).
func TestFeaturesRebuildRefusesBatchSize(t *testing.T) {
	for _, size := range []string{"0", "-5"} {
		_, err := runFeatures(t, "rebuild", "--from-events", "--batch-size", size, "--pg.dsn", "postgres://nowhere.invalid/x")
		if err == nil || !strings.Contains(err.Error(), "--batch-size") {
			t.Fatalf("--batch-size %s: %v", size, err)
		}
	}
}

// A replay that fails after applying entries prints its report before the error: the entries
// it applied are applied, and an operator deciding whether to run it again needs to know
// which (it printed nothing, as if nothing had happened).
func TestReplayDLQReportsWhatItAppliedBeforeFailing(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	pct := 50.0
	w := &events.Watch{Common: events.Common{EventID: "event-replay-1", UserID: "u1", SessionID: "s", RequestID: "r",
		TsMs: time.Now().Add(-time.Hour).UnixMilli()}, EventType: "watch", ItemID: "i1", WatchTimeSec: 30, PercentWatched: &pct}
	payload, err := events.Encode(w)
	if err != nil {
		t.Fatal(err)
	}
	// Marking the entry replayed fails (as on a database that went away after the apply).
	for _, q := range []string{
		`INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, headers, payload, error) VALUES ('t', 0, 1, '{"event_type":"watch"}', $1, 'earlier error')`,
		`CREATE FUNCTION refuse_dlq_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'dlq update refused by the test'; END $$`,
		`CREATE TRIGGER refuse_dlq_update BEFORE UPDATE ON feature_dlq FOR EACH ROW EXECUTE FUNCTION refuse_dlq_update()`,
	} {
		var args []any
		if strings.HasPrefix(q, "INSERT") {
			args = append(args, payload)
		}
		if _, err := pool.Exec(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"consume", "replay-dlq", "--pg.dsn", dsn, "--redis.url", testutil.StartPrivate(t, "redis").URL, "--redis.key-prefix", "rd:"})
	err = root.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "mark dlq replayed") {
		t.Fatalf("replay with the marking refused: %v", err)
	}
	var rep featurestore.ReplayReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("no report before the error: %v\n%q", err, out.String())
	}
	if rep.Examined != 1 || rep.Applied != 1 || len(rep.Entries) != 1 || rep.Entries[0].Outcome != "applied" {
		t.Fatalf("report %+v: want the entry reported applied", rep)
	}
}

// `recsys consume replay-dlq` with no pending entry reports "entries": [], not null: scripts
// iterate over it.
func TestReplayDLQReportsNoEntriesAsAnEmptyList(t *testing.T) {
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"consume", "replay-dlq", "--pg.dsn", testutil.MigratedDatabase(t), "--redis.url", testutil.RedisURL(t),
		"--redis.key-prefix", testutil.Unique("rde") + ":"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out.String())
	}
	if string(got["entries"]) != "[]" || string(got["examined"]) != "0" {
		t.Errorf("report %s, want no entry examined and \"entries\": []", out.String())
	}
}
