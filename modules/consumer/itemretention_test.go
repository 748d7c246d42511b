package consumer_test

import (
	"context"
	"testing"
	"time"

	"recsys/modules/consumer"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
)

// retentionKind is what the consumer's item and user retention tests differ by.
type retentionKind struct {
	what          string // "item": the counter, the error stage, the messages
	table, column string
	stale         time.Duration // how long ago the stale row was last written
	enable        func(*consumer.Config)
	watched       func(row string) (user, item string) // a watch writing row
	key           func(featurestore.Keys, string) string
}

// applyAged applies evs and makes the rows of table that match where look last written age
// ago.
func applyAged(t *testing.T, e *env, table, where string, age time.Duration, evs ...featurestore.Event) {
	t.Helper()
	ctx := context.Background()
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-age).UnixMilli()
	if _, err := e.pool.Exec(ctx, `UPDATE `+table+` SET last_active_ms = $1 WHERE `+where, old); err != nil {
		t.Fatal(err)
	}
}

// testConsumerTrims: with k's retention the consumer's housekeeping trims the rows nobody
// wrote for that long (and their Redis keys) and counts them; a row written since stays.
func testConsumerTrims(t *testing.T, k retentionKind) {
	e := newEnv(t)
	ctx := context.Background()
	watch := func(id, row string) featurestore.Event {
		user, item := k.watched(row)
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user,
			TsMs: e.start, ItemID: item, WatchTimeSec: 30}}
	}
	applyAged(t, e, k.table, k.column+` = 'stale'`, k.stale, watch("r1", "stale"), watch("r2", "fresh"))
	cfg := e.config()
	k.enable(cfg)
	c := e.startWith(t, cfg, nil)
	waitFor(t, "the stale "+k.what+" trimmed", 30*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_"+k.what+"s_trimmed_total") == 1
	})
	var ids []string
	rows, err := e.pool.Query(ctx, `SELECT `+k.column+` FROM `+k.table+` ORDER BY `+k.column)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if len(ids) != 1 || ids[0] != "fresh" {
		t.Errorf("%s holds %v, want [fresh]", k.table, ids)
	}
	keys := featurestore.NewKeys(e.Prefix)
	waitFor(t, "the copy repopulated", 30*time.Second, func() bool {
		n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(k.key(keys, "fresh")).Build()).AsInt64()
		return err == nil && n == 1
	})
	if n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(k.key(keys, "stale")).Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("the stale %s's hash is still in the copy (%d, %v)", k.what, n, err)
	}
	if n := counter(c.set, `reco_feature_consumer_errors_total{stage="`+k.what+`_retention"}`); n != 0 {
		t.Errorf("%v %s retention errors", n, k.what)
	}
}

// With --consumer.item-retention the consumer's housekeeping trims the items nobody touched
// for that long (their rows and Redis keys) and counts them; an item touched since stays.
func TestConsumerTrimsInactiveItems(t *testing.T) {
	testConsumerTrims(t, retentionKind{what: "item", table: "feature_items", column: "item_id", stale: 100 * 24 * time.Hour,
		enable:  func(c *consumer.Config) { c.ItemRetention = 90 * 24 * time.Hour },
		watched: func(item string) (string, string) { return "u-" + item, item },
		key:     featurestore.Keys.Item})
}

// A retention turned off (0) trims nothing, but the housekeeping still finishes the second
// Redis passes of what was trimmed before: left, their rows in feature_*_trimmed were never
// processed, and a hash written back late by a writer that read the row before its trim
// stayed in the copy.
func TestConsumerFinishesSecondPassesWithTheRetentionOff(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keys := featurestore.NewKeys(e.Prefix)
	late := map[string]string{"feature_items_trimmed": keys.Item("gone"), "feature_users_trimmed": keys.User("gone")}
	for table, key := range late {
		if _, err := e.pool.Exec(ctx, `INSERT INTO `+table+` VALUES ('gone', now() - interval '2 minutes')`); err != nil {
			t.Fatal(err)
		}
		if err := e.rd.Do(ctx, e.rd.B().Hset().Key(key).FieldValue().FieldValue("v", "1").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := e.config()
	cfg.ItemRetention, cfg.UserRetention = 0, 0
	e.startWith(t, cfg, nil)
	for table, key := range late {
		waitFor(t, table+"'s second pass", 30*time.Second, func() bool {
			var n int
			err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n)
			return err == nil && n == 0
		})
		if n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(key).Build()).AsInt64(); err != nil || n != 0 {
			t.Errorf("%s still in the copy after the second pass (%d, %v)", key, n, err)
		}
	}
}
