package consumer_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
)

// With --consumer.item-retention the consumer's housekeeping trims the items nobody touched
// for that long (their rows and Redis keys) and counts them; an item touched since stays.
func TestConsumerTrimsInactiveItems(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	watch := func(id, user, item string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user,
			TsMs: e.start, ItemID: item, WatchTimeSec: 30}}
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{watch("r1", "u1", "stale"), watch("r2", "u2", "fresh")}}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-100 * 24 * time.Hour).UnixMilli()
	if _, err := e.pool.Exec(ctx, `UPDATE feature_items SET last_active_ms = $1 WHERE item_id = 'stale'`, old); err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.ItemRetention = 90 * 24 * time.Hour
	c := e.startWith(t, cfg, nil)
	waitFor(t, "the stale item trimmed", 30*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_items_trimmed_total") == 1
	})
	var items []string
	rows, err := e.pool.Query(ctx, `SELECT item_id FROM feature_items ORDER BY item_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		items = append(items, id)
	}
	if len(items) != 1 || items[0] != "fresh" {
		t.Errorf("feature_items holds %v, want [fresh]", items)
	}
	keys := featurestore.NewKeys(e.Prefix)
	waitFor(t, "the copy repopulated", 30*time.Second, func() bool {
		n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(keys.Item("fresh")).Build()).AsInt64()
		return err == nil && n == 1
	})
	if n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(keys.Item("stale")).Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("the stale item's hash is still in the copy (%d, %v)", n, err)
	}
	if n := counter(c.set, `reco_feature_consumer_errors_total{stage="item_retention"}`); n != 0 {
		t.Errorf("%v item retention errors", n)
	}
}
