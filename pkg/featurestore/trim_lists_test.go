package featurestore_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// The copy's global lists hold the top of each (--features.top-list-size, fresh-size): an item
// cut below the top is not in the list. Trimming an item that was in a list leaves a place
// that the next item of PostgreSQL's top takes, in the copy as well: nothing else would put
// that item back (a first seen never moves again, a popularity only once the item is
// watched), and the copy's list would shrink with every trim until a repopulation, unlike
// PostgreSQL's (which the api reads when the copy is down) and `features verify`'s check.
func TestTrimRefillsTheGlobalLists(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("trimtop") + ":"
	cfg := testConfig()
	cfg.TopListSize, cfg.FreshSize = 2, 2
	st := featurestore.New(pool, rd, prefix, cfg, nil)
	keys := featurestore.NewKeys(prefix)
	now := time.Now().UnixMilli()
	past := now - (100 * day).Milliseconds()
	// keep-1 and keep-2 were first seen and watched before gone-1 and gone-2, so the lists'
	// places are the gone items': the fresh ones by first seen, the popular ones by weight
	// (full watches against a tenth of one).
	partial := func(id, user, item string, ts int64) featurestore.Event {
		ev := trimWatch(id, user, item, ts)
		pct, ended := 10.0, false
		ev.PercentWatched, ev.Ended = &pct, &ended
		return ev
	}
	applyMirrored(t, st, []featurestore.Event{
		partial("k1", "u1", "keep-1", past),
		partial("k2", "u2", "keep-2", past+1000),
		trimWatch("g1", "u3", "gone-1", past+60_000),
		trimWatch("g2", "u4", "gone-2", past+61_000),
	})
	// keep-1 and keep-2 are shown now (active, never watched since); their popularity stays.
	applyMirrored(t, st, []featurestore.Event{trimImpression("m1", "u7", now, "keep-1", "keep-2")})
	for _, key := range []string{keys.Fresh, keys.PopLong, keys.PopShort} {
		if inList(t, rd, key, "keep-1") || !inList(t, rd, key, "gone-1") {
			t.Fatalf("fixture: %s does not hold the gone items only", key)
		}
	}
	ageItems(t, pool, past, "gone-1", "gone-2")
	if n, err := st.TrimItems(ctx, retention, 1000); err != nil || n != 2 {
		t.Fatalf("trimmed %d (%v), want 2", n, err)
	}
	for _, key := range []string{keys.Fresh, keys.PopLong, keys.PopShort} {
		for _, id := range []string{"keep-1", "keep-2"} {
			if !inList(t, rd, key, id) {
				t.Errorf("%s is not in %s after the items above it were trimmed", id, key)
			}
		}
	}
	verifyCopy(t, st)
}
