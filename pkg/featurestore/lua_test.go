package featurestore

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// The scripts also run on miniredis (recsys dev); the real-Redis behaviour is covered by the
// integration tests.
func TestScriptsOnMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rd, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	ctx := context.Background()
	cfg := features.DefaultConfig()
	s := New(nil, rd, "p:", cfg, nil)
	if err := rd.Do(ctx, rd.B().Hset().Key("p:meta").FieldValue().FieldValue("ep", "1").FieldValue("lm:s", "0").FieldValue("lm:l", "0").
		FieldValue("lm:c", "0").FieldValue("hl:s", "3600000").FieldValue("hl:l", "3600000").FieldValue("hl:c", "3600000").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	w := &redisWrite{
		users: []userRow{{id: "u", version: 2, h: `[{"item_id":"a","ts_ms":10,"quality":1}]`, w: `{"a":10}`, i: `{}`}},
		items: []itemRow{{id: "a", wat: 1, fs: 10, ps: 2, pl: 2, fresh: true}, {id: "b", wat: 3, fs: 5, ps: 1, pl: 1, fresh: true}},
		nb:    []nbWrite{{item: "a", add: []scoredRow{{id: "b", w: 0.5}}}},
	}
	if err := s.exec(ctx, "1", w); err != nil {
		t.Fatal(err)
	}
	// An older version and smaller counters change nothing.
	stale := &redisWrite{users: []userRow{{id: "u", version: 1, h: `[]`, w: `{}`, i: `{}`}}, items: []itemRow{{id: "a", wat: 0, fs: 20, ps: 1, pl: 1}}}
	if err := s.exec(ctx, "1", stale); err != nil {
		t.Fatal(err)
	}
	if err := s.exec(ctx, "0", stale); err == nil {
		t.Fatal("a write of another generation was accepted")
	}
	if err := rd.Do(ctx, rd.B().Set().Key("p:ready").Value("1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	snap, err := NewRedisLoader(rd, "p:", cfg).Snapshot(ctx, "u", time.Hour.Milliseconds(), ranking.SnapshotOptions{HistoryItems: 5, NeighboursPerItem: 5, TrendingN: 5, PopularN: 5, FreshN: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.History) != 1 || !snap.Watched["a"] || len(snap.Neighbours["a"]) != 1 || snap.Neighbours["a"][0].Score != 0.25 {
		t.Errorf("snapshot %+v", snap)
	}
	if len(snap.Trending) != 2 || snap.Trending[0].ItemID != "a" || snap.Trending[0].Score != 1 || snap.Items["a"].Watches != 1 || snap.Items["a"].FirstSeenMs != 10 {
		t.Errorf("lists/items %+v %+v", snap.Trending, snap.Items)
	}
	if len(snap.Fresh) != 2 || snap.Fresh[0].ItemID != "a" {
		t.Errorf("fresh %+v", snap.Fresh)
	}
}
