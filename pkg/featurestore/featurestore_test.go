package featurestore_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/ranking"
	"recsys/pkg/redis"
	"recsys/pkg/testutil"
)

func testConfig() features.Config {
	c := features.DefaultConfig()
	c.HistorySize = 20
	c.WatchedCap = 40
	c.ImpressionMemory = 30
	c.CovisWindow = 5
	c.NeighboursPerItem = 200 // no trimming here; TestMergePairsMatchesMemoryStore and TestNeighbourTrim cover trims
	c.TopListSize = 300
	c.FreshSize = 300
	return c
}

func testOpts() ranking.SnapshotOptions {
	return ranking.SnapshotOptions{HistoryItems: 10, NeighboursPerItem: 15, TrendingN: 25, PopularN: 25, FreshN: 1000}
}

// servers is a test's own migrated database and private Redis (the shared Redis carries
// other packages' load tests).
func servers(t testing.TB) (*pgxpool.Pool, rueidis.Client) {
	t.Helper()
	return testutil.Pool(t, testutil.MigratedDatabase(t)), redisClient(t, testutil.StartPrivate(t, "redis").URL)
}

func redisClient(t testing.TB, url string) rueidis.Client {
	t.Helper()
	cfg := redis.DefaultConfig()
	cfg.URL = url
	cl, err := redis.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// deleteKeys removes every key under prefix from the shared Redis.
func deleteKeys(t *testing.T, rd rueidis.Client, prefix string) {
	t.Helper()
	if keys := testutil.RedisKeys(t, rd, prefix+"*"); len(keys) > 0 {
		if err := rd.Do(context.Background(), rd.B().Del().Key(keys...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}

func toEvents(evs []events.Any) []featurestore.Event {
	out := make([]featurestore.Event, len(evs))
	for i, e := range evs {
		out[i] = featurestore.FromEvent(e)
	}
	return out
}

// TestSnapshotsMatchMemoryStore applies one stream (with duplicates, in random batch sizes) to
// MemoryStore and to PostgreSQL + Redis, and checks that RedisLoader and PGLoader return the
// same Snapshot as MemoryStore for every user, after incremental Redis writes and after a
// forced rebuild of the copy. It runs with each format of the impression counters, and with
// their overlay on a stream of mostly impressions (a feed's) and on the standard one.
func TestSnapshotsMatchMemoryStore(t *testing.T) {
	rd := redisClient(t, testutil.StartPrivate(t, "redis").URL) // the shared one carries other packages' load tests
	for _, c := range []struct {
		format   featurestore.ImpressionsFormat
		overlay  bool
		impShare float64
	}{
		{format: featurestore.ImpressionsObject},
		{format: featurestore.ImpressionsArray},
		{format: featurestore.ImpressionsArray, overlay: true},
		{format: featurestore.ImpressionsArray, overlay: true, impShare: 0.9},
	} {
		name := string(c.format)
		if c.overlay {
			name += fmt.Sprintf("-overlay-impressions-%.0f%%", 100*cmp.Or(c.impShare, 0.3))
		}
		t.Run(name, func(t *testing.T) { snapshotsMatchMemoryStore(t, rd, c.format, c.overlay, c.impShare) })
	}
}

func snapshotsMatchMemoryStore(t *testing.T, rd rueidis.Client, format featurestore.ImpressionsFormat, overlay bool, impShare float64) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	prefix := testutil.Unique("fst") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	cfg := testConfig()

	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 7, Users: 25, Items: 80, Events: 2500, StartMs: start, StepMs: 60_000, Prefix: "p", ImpressionShare: impShare}))
	mem := features.NewMemoryStore(cfg)
	for _, e := range evs {
		mem.Apply(e.Interaction)
	}

	st := featurestore.New(pool, rd, prefix, cfg, nil)
	st.SetUserChunk(2048) // several user statements per batch, as with full users
	st.SetImpressionsFormat(format)
	st.SetImpressionsOverlay(overlay)
	r := rand.New(rand.NewPCG(1, 2))
	overlaid := 0 // users whose counters' raises were left in their overlay by some batch
	for i, first := 0, true; i < len(evs); {
		n := 1 + r.IntN(150)
		b := &featurestore.Batch{Events: append([]featurestore.Event(nil), evs[i:min(i+n, len(evs))]...)}
		// Redeliver a few earlier events inside the batch: they must change nothing.
		for j := 0; j < 3 && i > 0; j++ {
			b.Events = append(b.Events, evs[r.IntN(i)])
		}
		a, err := st.Apply(ctx, b)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		if got, want := a.NewCount(), min(n, len(evs)-i); got != want {
			t.Fatalf("batch at %d: %d new events, want %d", i, got, want)
		}
		err = st.WriteRedis(ctx, a)
		if first {
			// No copy yet: the write is refused and marks the copy for repopulation.
			if !errors.Is(err, featurestore.ErrRedisBehind) {
				t.Fatalf("first write: %v, want ErrRedisBehind", err)
			}
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatalf("repopulate: %v", err)
			}
			first = false
		} else if err != nil {
			t.Fatalf("write redis: %v", err)
		}
		var n0 int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE impressions_recent NOT IN ('') AND impressions_recent NOT LIKE '%:'`).Scan(&n0); err != nil {
			t.Fatal(err)
		}
		overlaid = max(overlaid, n0)
		i += n
	}
	if overlay != (overlaid > 0) {
		t.Fatalf("overlay %v: %d users with raises in their overlay", overlay, overlaid)
	}
	if overlay && impShare > 0 && overlaid < 10 {
		t.Fatalf("overlays carried raises for at most %d users at once", overlaid)
	}
	var inFormat int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE left(impressions, 1) = $1`, map[featurestore.ImpressionsFormat]string{
		featurestore.ImpressionsObject: "{", featurestore.ImpressionsArray: "["}[format]).Scan(&inFormat); err != nil || inFormat < 20 {
		t.Fatalf("%d users with counters in the %s form (%v)", inFormat, format, err)
	}
	var pending int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_redis_pending`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending > 1 { // the last batch's row is deleted by the next transaction
		t.Errorf("%d journal rows left after successful writes", pending)
	}

	now := evs[len(evs)-1].TsMs + 3_600_000
	rl := featurestore.NewRedisLoader(rd, prefix, cfg)
	pl := featurestore.NewPGLoader(pool, prefix, cfg)
	compare := func(stage string) {
		t.Helper()
		users := []string{"nobody"}
		for i := range 25 {
			users = append(users, fmt.Sprintf("puser%03d", i))
		}
		// Decayed to now, and as stored (relative to the landmarks, as servers cache them).
		stored := testOpts()
		stored.Stored = true
		for _, u := range users {
			for _, opts := range []ranking.SnapshotOptions{testOpts(), stored} {
				want := mem.Snapshot(u, now, opts)
				got, err := rl.Snapshot(ctx, u, now, opts)
				if err != nil {
					t.Fatalf("%s: redis snapshot %s: %v", stage, u, err)
				}
				what := fmt.Sprintf("%s redis %s stored=%v", stage, u, opts.Stored)
				fstest.EqualSnapshots(t, what, want, got)
				if got.Stored != opts.Stored || got.Landmarks != want.Landmarks {
					t.Fatalf("%s: stored %v landmarks %+v, want %v %+v", what, got.Stored, got.Landmarks, opts.Stored, want.Landmarks)
				}
				got, err = pl.Snapshot(ctx, u, now, opts)
				if err != nil {
					t.Fatalf("%s: postgres snapshot %s: %v", stage, u, err)
				}
				what = fmt.Sprintf("%s postgres %s stored=%v", stage, u, opts.Stored)
				fstest.EqualSnapshots(t, what, want, got)
				if got.Stored != opts.Stored || got.Landmarks != want.Landmarks {
					t.Fatalf("%s: stored %v landmarks %+v, want %v %+v", what, got.Stored, got.Landmarks, opts.Stored, want.Landmarks)
				}
			}
		}
		if want := mem.Snapshot("puser001", now, testOpts()); len(want.Neighbours) == 0 || len(want.Trending) == 0 || len(want.History) == 0 {
			t.Fatalf("%s: degenerate test data: %+v", stage, want)
		}
	}
	if s, _ := rl.Snapshot(ctx, "puser003", now, testOpts()); true {
		t.Logf("hist=%d nb=%d trend=%d pop=%d fresh=%d items=%d watched=%d imp=%d", len(s.History), len(s.Neighbours), len(s.Trending), len(s.Popular), len(s.Fresh), len(s.Items), len(s.Watched), len(s.Impressions))
	}
	compare("incremental")
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatalf("forced repopulate: %v", err)
	}
	compare("rebuilt")
}

// A served list that only raises a user's overlay reads neither the base nor the history and
// watched set; when the user's Redis hash turns out to be behind (expired, a write missed), the write reads the user from
// PostgreSQL and sends it whole, and the copy reads as PostgreSQL does.
func TestBehindCopyOfRaisedUserIsRead(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("behind") + ":"
	cfg := testConfig()
	st := featurestore.New(pool, rd, prefix, cfg, nil)
	st.SetImpressionsOverlay(true)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	list := func(n int, items ...string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression, EventID: fmt.Sprintf("e%d", n),
			UserID: "u", TsMs: start + int64(n)*1000, Items: items}}
	}
	apply := func(evs ...featurestore.Event) error {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		return st.WriteRedis(ctx, a)
	}
	watch := featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: "w", UserID: "u", TsMs: start, ItemID: "z", WatchTimeSec: 30}}
	if err := apply(watch, list(1, "a", "b")); !errors.Is(err, featurestore.ErrRedisBehind) {
		t.Fatalf("first write: %v, want ErrRedisBehind (no copy yet)", err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := apply(list(2, "b", "c")); err != nil { // the overlay alone
		t.Fatal(err)
	}
	keys := featurestore.NewKeys(prefix)
	if err := rd.Do(ctx, rd.B().Del().Key(keys.User("u")).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := apply(list(3, "c", "d")); err != nil {
		t.Fatalf("write to a behind copy: %v", err)
	}
	var base, overlay string
	if err := pool.QueryRow(ctx, `SELECT impressions, impressions_recent FROM feature_users WHERE user_id = 'u'`).Scan(&base, &overlay); err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(overlay, ":") || base == "" {
		t.Fatalf("the last lists did not go to the overlay alone: base %q overlay %q", base, overlay)
	}
	now := start + 3_600_000
	want, err := featurestore.NewPGLoader(pool, prefix, cfg).Snapshot(ctx, "u", now, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	got, err := featurestore.NewRedisLoader(rd, prefix, cfg).Snapshot(ctx, "u", now, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	fstest.EqualSnapshots(t, "redis vs postgres", want, got)
	if c := got.Impressions["c"].Count; c != 2 || len(got.Impressions) != 4 {
		t.Fatalf("counters %v, want a..d with c shown twice", got.Impressions)
	}
	// Neither was the history nor the watched set, which the copy got back too.
	if len(got.History) != 1 || got.History[0].ItemID != "z" || !got.Watched["z"] {
		t.Fatalf("history %v, watched %v: want the watch of z", got.History, got.Watched)
	}
}

// readerOrder is the order readers take neighbours in: strongest first, ties by item id.
func readerOrder(a, b ranking.Scored) int {
	if a.Score != b.Score {
		return cmp.Compare(b.Score, a.Score)
	}
	return strings.Compare(a.ItemID, b.ItemID)
}

// Neighbour lists past 2M rows are cut back to their top M in PostgreSQL and in Redis.
func TestNeighbourTrim(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := "trim:"
	cfg := testConfig()
	cfg.NeighboursPerItem = 3
	cfg.CovisWindow = 10
	st := featurestore.New(pool, rd, prefix, cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 11, Users: 5, Items: 30, Events: 600, StartMs: start, StepMs: 1000, Prefix: "t", NoLegacy: true}))
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(evs); i += 50 {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: evs[i:min(i+50, len(evs))]})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.WriteRedis(ctx, a); err != nil && !errors.Is(err, featurestore.ErrRedisBehind) {
			t.Fatal(err)
		}
		if ready, _ := st.RedisReady(ctx); !ready {
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	rows, err := pool.Query(ctx, `SELECT n.item_id, n.neighbours, i.nb_count FROM feature_neighbours n
LEFT JOIN feature_items i ON i.item_id = n.item_id`)
	if err != nil {
		t.Fatal(err)
	}
	lists := map[string][]ranking.Scored{}
	maxRows := 0
	for rows.Next() {
		var item string
		var blob []byte
		var nbCount *int
		if err := rows.Scan(&item, &blob, &nbCount); err != nil {
			t.Fatal(err)
		}
		l, err := featurestore.DecodeNeighbours(blob)
		if err != nil {
			t.Fatalf("item %s: %v", item, err)
		}
		if nbCount == nil || *nbCount != len(l) {
			t.Errorf("item %s: nb_count %v, list of %d", item, nbCount, len(l))
		}
		if !slices.IsSortedFunc(l, readerOrder) {
			t.Errorf("item %s: list not in strength order: %v", item, l)
		}
		lists[item] = l
		maxRows = max(maxRows, len(l))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if maxRows > 2*cfg.NeighboursPerItem || maxRows < cfg.NeighboursPerItem {
		t.Errorf("largest neighbour list %d entries, want between M=%d and 2M", maxRows, cfg.NeighboursPerItem)
	}
	// Redis holds exactly the neighbours PostgreSQL kept, with their strengths.
	for item, l := range lists {
		zs, err := rd.Do(ctx, rd.B().Zrange().Key(prefix+"nb:"+item).Min("0").Max("-1").Withscores().Build()).AsZScores()
		if err != nil {
			t.Fatal(err)
		}
		got := make([]ranking.Scored, len(zs))
		for i, z := range zs {
			got[i] = ranking.Scored{ItemID: z.Member, Score: z.Score}
		}
		slices.SortFunc(got, readerOrder)
		if !slices.Equal(got, l) {
			t.Errorf("item %s: redis %v, postgres %v", item, got, l)
		}
	}
}
