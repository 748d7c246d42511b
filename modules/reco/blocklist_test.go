package reco

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// memMirror is a mirror in memory.
type memMirror struct {
	mu    sync.Mutex
	ids   []string
	found bool
	saves int
}

func (m *memMirror) save(_ context.Context, ids []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ids, m.found = slices.Clone(ids), true
	m.saves++
	return nil
}

func (m *memMirror) read(context.Context) ([]string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.ids), m.found, nil
}

func TestBlocklistRefresh(t *testing.T) {
	down := func(context.Context) ([]string, error) { return nil, errDown }
	up := func(ids ...string) func(context.Context) ([]string, error) {
		return func(context.Context) ([]string, error) { return ids, nil }
	}
	hung := func(ctx context.Context) ([]string, error) { <-ctx.Done(); return nil, ctx.Err() }
	for _, tc := range []struct {
		name         string
		loads        []func(context.Context) ([]string, error) // one per refresh
		mirror       *memMirror
		want         []string
		wantMirrored bool
		wantSaved    []string
	}{
		{"postgresql read and mirrored", []func(context.Context) ([]string, error){up("a", "b")}, &memMirror{}, []string{"a", "b"}, false, []string{"a", "b"}},
		{"postgresql down from the start: the mirror's list", []func(context.Context) ([]string, error){down}, &memMirror{ids: []string{"x"}, found: true}, []string{"x"}, true, []string{"x"}},
		{"postgresql hung from the start: the mirror's list", []func(context.Context) ([]string, error){hung}, &memMirror{ids: []string{"x"}, found: true}, []string{"x"}, true, []string{"x"}},
		{"postgresql down later: its last list stays", []func(context.Context) ([]string, error){up("a"), down}, &memMirror{ids: []string{"x"}, found: true}, []string{"a"}, false, []string{"a"}},
		{"postgresql back: its list replaces the mirror's", []func(context.Context) ([]string, error){down, up("a")}, &memMirror{ids: []string{"x"}, found: true}, []string{"a"}, false, []string{"a"}},
		{"no mirror yet", []func(context.Context) ([]string, error){down}, &memMirror{}, nil, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &blocklist{store: tc.mirror}
			for _, l := range tc.loads {
				b.load = l
				done := make(chan struct{})
				go func() {
					defer close(done)
					_ = b.refresh(context.Background(), 50*time.Millisecond)
				}()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("refresh did not return: a hung read stops the refresh for good")
				}
			}
			if got := b.current(); !slices.Equal(got, tc.want) {
				t.Errorf("blocked items %v, want %v", got, tc.want)
			}
			if got := b.mirrored.Load(); got != tc.wantMirrored {
				t.Errorf("from the mirror: %v, want %v", got, tc.wantMirrored)
			}
			if got, _, _ := tc.mirror.read(context.Background()); !slices.Equal(got, tc.wantSaved) {
				t.Errorf("mirror holds %v, want %v", got, tc.wantSaved)
			}
		})
	}
}

// A process started while PostgreSQL is unreachable leaves the items of the Redis mirror out
// of its lists: before, it served taken-down items until PostgreSQL came back.
func TestBlockedItemsFromTheMirrorWhilePostgresIsDown(t *testing.T) {
	h := newHarness(t, nil)
	if got := h.get("/reco?user_id=cold&session_id=s&k=50&x_autolog_impressions=false").items(); !slices.Contains(got, "p00") {
		t.Fatalf("p00 is not in the cold list %v: the test needs it there", got)
	}
	h.r.blocked = &blocklist{load: func(context.Context) ([]string, error) { return nil, errors.New("postgres unreachable") },
		store: &memMirror{ids: []string{"p00"}, found: true}}
	h.run()
	eventually(t, 5*time.Second, "the mirror's list in force", func() bool { return len(h.r.blocked.current()) == 1 })
	if got := h.get("/reco?user_id=cold&session_id=s&k=50&x_autolog_impressions=false").items(); slices.Contains(got, "p00") {
		t.Errorf("blocked p00 served while PostgreSQL is down: %v", got)
	}
	if hz := h.r.HealthDetails(context.Background()); hz["blocked_items"].(map[string]any)["from_redis_mirror"] != true {
		t.Errorf("health %v, want from_redis_mirror true", hz["blocked_items"])
	}
}

func TestRedisMirrorRoundTrip(t *testing.T) {
	rd := testutil.RedisClient(t, testutil.RedisURL(t))
	m := redisMirror{rd: rd, key: featurestore.NewKeys(testutil.Unique("blk") + ":").Blocked}
	ctx := context.Background()
	t.Cleanup(func() { rd.Do(context.Background(), rd.B().Del().Key(m.key).Build()) })
	if _, found, err := m.read(ctx); err != nil || found {
		t.Fatalf("empty redis: found %v, %v", found, err)
	}
	for _, ids := range [][]string{{"a", "b\nc", "ü"}, {}} {
		if err := m.save(ctx, ids); err != nil {
			t.Fatal(err)
		}
		got, found, err := m.read(ctx)
		if err != nil || !found || !slices.Equal(got, ids) {
			t.Errorf("read back %q (found %v, %v), want %q", got, found, err, ids)
		}
	}
}
