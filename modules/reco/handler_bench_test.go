package reco

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

// BenchmarkRecoHandler is the CPU cost of one /reco in this process (validation, snapshot
// assembly from cached item features, ranking, JSON), on the in-memory fixture: the part of
// a request's time that is not Redis or the network.
func BenchmarkRecoHandler(b *testing.B) {
	t := &testing.T{}
	h := newHarness(t, nil)
	if err := h.r.serving.refreshGlobal(b.Context()); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UnixMilli()
	for i, it := range []string{"a", "p01", "p02", "p03", "p04", "p05", "p06", "p07", "p08", "p09"} {
		h.redis.apply(watchEv("bench", it, now-int64(10-i)*1000, fmt.Sprintf("bench-%d", i)))
	}
	req := httptest.NewRequest(http.MethodGet, "/reco?user_id=bench&session_id=s&k=20&x_autolog_impressions=false", nil)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := testutil.SelfCPU()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.e.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
	// Process CPU time per request: unlike ns/op it does not grow when other processes
	// compete for the cores.
	b.ReportMetric(float64(testutil.SelfCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkRecoHandlerWorld is BenchmarkRecoHandler on BenchmarkRecoHTTP's world (5000 users
// with 12 watches over 2000 items, the same generator) held in memory, with every item's
// neighbour list already cached and the users' states
// decoded: the process' CPU for one /reco without Redis and the network, for users in turn. Deterministic enough to count instructions (callgrind), which
// the shared 2-core machine's wall clock is not:
//
//	GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind reco.test -test.run XXX \
//	  -test.bench RecoHandlerWorld -test.benchtime 600x -test.cpu 1   (and 200x: the difference / 400)
func BenchmarkRecoHandlerWorld(b *testing.B) {
	t := &testing.T{}
	h := newHarness(t, func(c *Config) { c.ItemCacheTTL = time.Minute })
	now := time.Now().UnixMilli()
	_ = benchWatches(now, "", func(in features.Interaction, _ bool) error {
		h.redis.apply(in)
		return nil
	})
	if err := h.r.serving.refreshGlobal(b.Context()); err != nil {
		b.Fatal(err)
	}
	all := make([]string, benchItems)
	for i := range all {
		all[i] = fmt.Sprintf("item-%04d", i)
	}
	cs := h.r.serving.redis.(*cachedSource)
	if _, err := cs.items.lists(b.Context(), all, h.r.cfg.Ranking.NeighboursPerItem); err != nil {
		b.Fatal(err)
	}
	// The users' states as the production decode cache holds them (decoded once, shared
	// by requests; ids interned like the cached lists'), so the loop measures the serving
	// path, not the in-memory store's copying.
	users := decodedUsers{}
	reqs := make([]*http.Request, benchUsers)
	for i := range reqs {
		id := fmt.Sprintf("load-user-%d", i+1)
		snap := h.redis.st.Snapshot(id, now, ranking.SnapshotOptions{})
		for j := range snap.History {
			snap.History[j].ItemID = cs.items.names.get(snap.History[j].ItemID)
		}
		users[id] = snap
		reqs[i] = httptest.NewRequest(http.MethodGet, "/reco?user_id="+id+"&session_id=s&k=20&x_autolog_impressions=false", nil)
	}
	cs.user = users
	runtime.GC() // the world's garbage is not the loop's
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := testutil.SelfCPU()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.e.ServeHTTP(rec, reqs[i%len(reqs)])
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
	b.ReportMetric(float64(testutil.SelfCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// decodedUsers serves users' states decoded in advance, like redisUser with its decode cache
// on an unchanged user.
type decodedUsers map[string]ranking.Snapshot

func (u decodedUsers) Snapshot(_ context.Context, userID string, nowMs int64, _ ranking.SnapshotOptions) (ranking.Snapshot, error) {
	d := u[userID]
	return ranking.Snapshot{UserID: userID, NowMs: nowMs, History: d.History, Watched: d.Watched, Impressions: d.Impressions}, nil
}
