package ingest_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

// TestImpressionEventRows checks the storage of impressions on both write paths: one
// impression_events row per event with its items as parallel arrays in the client's order,
// feed_ids / slots NULL when no item has one and NULL elements where one item lacks it, and
// the impressions view giving back one row per item with every field. Several impressions in
// one group check that each event gets exactly its own slice of the group's items.
func TestImpressionEventRows(t *testing.T) { forEachPath(t, testImpressionEventRows) }

func testImpressionEventRows(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	ctx := context.Background()
	feed, slot := "home", "hero"
	mixed := impression("imp-mixed", "u1", "c", "a", "b")
	mixed.Items[0].Position, mixed.Items[1].Position, mixed.Items[2].Position = 7, 2, 5 // not sorted
	mixed.Items[1].FeedID, mixed.Items[2].Slot = &feed, &slot
	allFeeds := impression("imp-feeds", "u2", "x", "y")
	allFeeds.Items[0].FeedID, allFeeds.Items[1].FeedID = &feed, &feed
	plain := impression("imp-plain-1", "u3", "p")
	plain.Context = nil
	evs := []events.Any{mixed, watch("wat-00001", "u1"), allFeeds, plain}
	for i := range 20 { // a bigger group: the slices of later events start far into the arrays
		evs = append(evs, impression(fmt.Sprintf("imp-bulk-%02d", i), "u4", fmt.Sprintf("b%02d-0", i), fmt.Sprintf("b%02d-1", i)))
	}
	// Ids with the characters of array literal syntax (the statement path sends the item
	// arrays as literals) read back exactly as sent.
	trickyIDs := []string{`a,b`, `{x}`, `"q"`, `back\slash`, ` sp `, `NULL`, `x  y`, `é🙂`}
	tricky := impression("imp-tricky", "u5", trickyIDs...)
	nullWord := "NULL"
	tricky.Items[5].FeedID, tricky.Items[6].Slot = &nullWord, &trickyIDs[3]
	evs = append(evs, tricky)
	res, err := w.Write(ctx, evs, "")
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	var gotFeeds, gotSlots []*string
	if err := pool.QueryRow(ctx, `SELECT item_ids, feed_ids, slots FROM impression_events WHERE event_id = 'imp-tricky'`).Scan(&gotIDs, &gotFeeds, &gotSlots); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotIDs, trickyIDs) {
		t.Errorf("item_ids read back as %q, want %q", gotIDs, trickyIDs)
	}
	if len(gotFeeds) != len(trickyIDs) || gotFeeds[5] == nil || *gotFeeds[5] != "NULL" || gotFeeds[0] != nil ||
		len(gotSlots) != len(trickyIDs) || gotSlots[6] == nil || *gotSlots[6] != trickyIDs[3] || gotSlots[5] != nil {
		t.Errorf("feed_ids %v / slots %v of imp-tricky", gotFeeds, gotSlots)
	}
	drop := func(id string) {
		if _, err := pool.Exec(ctx, `DELETE FROM impression_events WHERE event_id = $1`, id); err != nil {
			t.Fatal(err)
		}
	}
	drop("imp-tricky") // the checks below count the other events
	if res[0].Rows != 3 || res[0].Status != ingest.StatusOK {
		t.Errorf("result of the 3-item impression = %+v", res[0])
	}

	type stored struct{ positions, items, feeds, slots, context string }
	want := map[string]stored{
		"imp-mixed":   {"{7,2,5}", "{c,a,b}", "{NULL,home,NULL}", "{NULL,NULL,hero}", `{"device": "ios"}`},
		"imp-feeds":   {"{0,1}", "{x,y}", "{home,home}", "<null>", `{"device": "ios"}`},
		"imp-plain-1": {"{0}", "{p}", "<null>", "<null>", "<null>"},
	}
	for i := range 20 {
		want[fmt.Sprintf("imp-bulk-%02d", i)] = stored{"{0,1}", fmt.Sprintf("{b%02d-0,b%02d-1}", i, i), "<null>", "<null>", `{"device": "ios"}`}
	}
	rows, err := pool.Query(ctx, `SELECT event_id, positions::text, item_ids::text, COALESCE(feed_ids::text, '<null>'),
		COALESCE(slots::text, '<null>'), COALESCE(context::text, '<null>') FROM impression_events`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]stored{}
	for rows.Next() {
		var id string
		var s stored
		if err := rows.Scan(&id, &s.positions, &s.items, &s.feeds, &s.slots, &s.context); err != nil {
			t.Fatal(err)
		}
		if _, dup := got[id]; dup {
			t.Errorf("two impression_events rows for %s", id)
		}
		got[id] = s
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s stored %+v, want %+v", id, got[id], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d impression_events rows, want %d", len(got), len(want))
	}

	// The view: one row per item, per-event columns repeated.
	if n := count(t, pool, "SELECT count(*) FROM impressions"); n != 3+2+1+40 {
		t.Errorf("impressions view has %d rows, want 46", n)
	}
	var line string
	if err := pool.QueryRow(ctx, `SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s', position, item_id, COALESCE(feed_id, '-'), COALESCE(slot, '-'),
		user_id, ts_ms = $1, server_received_ts_ms = $2), ' ' ORDER BY position) FROM impressions WHERE event_id = 'imp-mixed'`,
		mixed.TsMs, mixed.ServerReceivedTsMs).Scan(&line); err != nil {
		t.Fatal(err)
	}
	if want := "2/a/home/-/u1/t/t 5/b/-/hero/u1/t/t 7/c/-/-/u1/t/t"; line != want {
		t.Errorf("view rows of imp-mixed = %q, want %q", line, want)
	}

	// A resend of the event (other content) is a duplicate and adds no row.
	again := impression("imp-mixed", "u1", "zzz")
	res, err = w.Write(ctx, []events.Any{again}, "")
	if err != nil || res[0].Status != ingest.StatusDuplicate || res[0].Rows != 0 {
		t.Fatalf("resend: %+v, %v", res, err)
	}
	if n := count(t, pool, "SELECT count(*) FROM impression_events WHERE event_id = 'imp-mixed'"); n != 1 {
		t.Errorf("imp-mixed has %d rows after a resend", n)
	}
}
