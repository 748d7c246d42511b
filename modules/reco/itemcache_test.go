package reco

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"
	"unsafe"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// cloningReader returns every id as a new string, as decoding a Redis reply does.
type cloningReader struct{ itemReader }

func (r cloningReader) Neighbours(ctx context.Context, items []string, n int, nowMs int64) (map[string][]ranking.Scored, error) {
	m, err := r.itemReader.Neighbours(ctx, items, n, nowMs)
	for _, l := range m {
		for i := range l {
			l[i].ItemID = strings.Clone(l[i].ItemID)
		}
	}
	return m, err
}

// TestItemIDsAreShared: the same item in two cached lists and in a decoded history is one
// string (ranking then compares pointers, not bytes), the interning is bounded, and the
// item's statistics are one copy shared by both lists.
func TestItemIDsAreShared(t *testing.T) {
	m := fixture(t)
	now := time.Now().UnixMilli()
	// u1 and u2 both watched "x" next to a different item: "x" is in both items' lists.
	for _, ev := range []features.Interaction{watchEv("u1", "a", now-3000, "e1"), watchEv("u1", "x", now-2000, "e2"),
		watchEv("u2", "b", now-3000, "e3"), watchEv("u2", "x", now-1000, "e4")} {
		m.apply(ev)
	}
	c := newItemCache(cloningReader{m}, time.Minute, 1000)
	// Separate loads, as two requests' cache misses would be.
	la, err := c.lists(context.Background(), []string{strings.Clone("a")}, 50, now)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := c.lists(context.Background(), []string{strings.Clone("b")}, 50, now)
	if err != nil {
		t.Fatal(err)
	}
	find := func(l []*listEntry, id string) string {
		for _, x := range l[0].l {
			if x.ItemID == id {
				return x.ItemID
			}
		}
		t.Fatalf("%s not in list %v", id, l[0].l)
		return ""
	}
	xa, xb := find(la, "x"), find(lb, "x")
	if unsafe.StringData(xa) != unsafe.StringData(xb) {
		t.Fatal("the same neighbour in two lists is two strings")
	}
	// Its statistics are one copy too, equal to what the reader returns.
	stats := func(l []*listEntry, id string) *ranking.ItemStats {
		for _, x := range l[0].l {
			if x.ItemID == id {
				return x.Stats
			}
		}
		return nil
	}
	sa, sb := stats(la, "x"), stats(lb, "x")
	if sa == nil || sa != sb {
		t.Fatalf("statistics of the same neighbour in two lists: %p and %p, want one shared copy", sa, sb)
	}
	want, ok := m.st.ItemStats("x", now)
	// Popularity decays with the clock: the cache decays it to its own load time, which can be
	// a millisecond past now, so it matches to a relative 1e-6, not bit for bit.
	if !ok || sa.Impressions != want.Impressions || sa.Watches != want.Watches || sa.FirstSeenMs != want.FirstSeenMs ||
		math.Abs(sa.PopLong-want.PopLong) > 1e-6*math.Abs(want.PopLong) {
		t.Fatalf("shared statistics %+v, reader has %+v", *sa, want)
	}
	d := newDecodeCache(1 << 20)
	d.intern = c.names.get
	hist := `[{"item_id":"x","ts_ms":1,"quality":1}]`
	du, err := d.decode("u9", userFields{hist, "", ""})
	if err != nil {
		t.Fatal(err)
	}
	if len(du.history) != 1 || unsafe.StringData(du.history[0].ItemID) != unsafe.StringData(xa) {
		t.Fatalf("decoded history %v does not share the cached string", du.history)
	}

	n := newNames(2)
	for _, s := range []string{"p", "q", "r", "s"} {
		n.get(strings.Clone(s))
	}
	if len(n.m) > 2 {
		t.Fatalf("names holds %d strings, bound 2", len(n.m))
	}
	if got := n.get("s"); got != "s" {
		t.Fatalf("get(s) = %q", got)
	}
}
