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
//
// PostgreSQL's tops have no index (migration 0007), so reading them scans every item: a trim
// of a large catalog (pg_class's estimate above refillInlineRows) leaves the lists short and
// refills them once, when its pass reaches the end of the table, instead of scanning the
// table in every pass that trims a listed item (seconds each on tens of millions of items,
// past the session's statement_timeout: the pass failed, again and again).
func TestTrimRefillsTheGlobalLists(t *testing.T) {
	for _, tc := range []struct {
		name  string
		large bool
		// page is the trim's page size; after, whether keep-1 and keep-2 are in the lists
		// after each pass (the gone items' ids sort first: the first pass trims them).
		page  int
		after []bool
	}{
		{name: "small catalog, in the pass", page: 2, after: []bool{true}},
		{name: "large catalog, at the end of the cycle", large: true, page: 2, after: []bool{false, false, true}},
		{name: "large catalog, one page", large: true, page: 1000, after: []bool{true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool, rd := servers(t)
			prefix := testutil.Unique("trimtop") + ":"
			cfg := testConfig()
			cfg.TopListSize, cfg.FreshSize = 2, 2
			st := featurestore.New(pool, rd, prefix, cfg, nil)
			if tc.large {
				st.SetTrimRefillInlineRows(-2)
			}
			keys := featurestore.NewKeys(prefix)
			now := time.Now().UnixMilli()
			past := now - (100 * day).Milliseconds()
			// keep-1 and keep-2 were first seen and watched before gone-1 and gone-2, so the
			// lists' places are the gone items': the fresh ones by first seen, the popular ones
			// by weight (full watches against a tenth of one).
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
			// keep-1 and keep-2 are shown now (active, never watched since); their popularity
			// stays.
			applyMirrored(t, st, []featurestore.Event{trimImpression("m1", "u7", now, "keep-1", "keep-2")})
			for _, key := range []string{keys.Fresh, keys.PopLong, keys.PopShort} {
				if inList(t, rd, key, "keep-1") || !inList(t, rd, key, "gone-1") {
					t.Fatalf("fixture: %s does not hold the gone items only", key)
				}
			}
			ageItems(t, pool, past, "gone-1", "gone-2")
			for pass, full := range tc.after {
				n, err := st.TrimItems(ctx, retention, tc.page)
				if want := map[bool]int{true: 2}[pass == 0]; err != nil || n != want {
					t.Fatalf("pass %d trimmed %d (%v), want %d", pass, n, err, want)
				}
				for _, key := range []string{keys.Fresh, keys.PopLong, keys.PopShort} {
					for _, id := range []string{"keep-1", "keep-2"} {
						if got := inList(t, rd, key, id); got != full {
							t.Errorf("after pass %d: %s in %s: %v, want %v", pass, id, key, got, full)
						}
					}
				}
			}
			verifyCopy(t, st)
		})
	}
}
