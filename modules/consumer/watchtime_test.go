package consumer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore/fstest"
)

// Watch times the contract accepts (≥ 0, no upper bound) whose item sum would overflow
// float8: two watches of 1e308 s, in two transactions of the stream and in two batches of a
// rebuild from events. Both apply (no dead letter: PostgreSQL refused the sum before), and
// the rebuild reproduces the stream's state.
func TestHugeWatchTimesApplyInStreamAndRebuild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxInFlight = 1
	pct := 50.0
	huge := func(i int, user string) *events.Watch {
		return &events.Watch{Common: events.Common{EventID: fmt.Sprintf("evt-huge-%04d", i), UserID: user, SessionID: "s", RequestID: "r",
			TsMs: e.start + int64(i)}, EventType: "watch", ItemID: "huge-item", WatchTimeSec: 1e308, PercentWatched: &pct}
	}
	first := append([]events.Any{huge(1, "u1")}, e.generate(5, 800)...)
	second := append([]events.Any{huge(2, "u2")}, e.generate(6, 800)...)
	e.insertRaw(t, append(append([]events.Any{}, first...), second...))
	e.produce(t, first)
	c := e.startConsumer(t)
	e.waitApplied(t, len(first), 60*time.Second)
	e.produce(t, second)
	e.waitApplied(t, len(first)+len(second), 60*time.Second)
	c.stop()
	ctx := context.Background()
	var dlq int
	var sec float64
	if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM feature_dlq), watch_time_sec FROM feature_items WHERE item_id = 'huge-item'`).
		Scan(&dlq, &sec); err != nil {
		t.Fatal(err)
	}
	if dlq != 0 || sec != 2*features.MaxWatchTimeSec {
		t.Fatalf("%d dlq rows, item watch time %v; want 0 and %v", dlq, sec, 2*features.MaxWatchTimeSec)
	}
	streamed := e.tables(t, e.start)
	fstest.EqualTables(t, e.rebuilt(t, e.start), streamed)
}
