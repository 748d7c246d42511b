package featurestore

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"recsys/pkg/features"
)

// TestOverlayMatchesApply: users served list after list, their counters kept as a base and an
// overlay (in either form, stored and written), read back with the overlay added after every
// batch, equal what applying the events one by one with features.ApplyInto gives, through the
// trims; many batches write the overlay only, and an overlay never passes its limit.
func TestOverlayMatchesApply(t *testing.T) {
	for _, f := range []ImpressionsFormat{ImpressionsObject, ImpressionsArray} {
		t.Run(string(f), func(t *testing.T) {
			cfg := features.DefaultConfig()
			cfg.ImpressionMemory = 40 // trims past 56 entries: often
			r := rand.New(rand.NewPCG(3, 4))
			item := func() string {
				if r.IntN(300) == 0 {
					return `odd"<id>` // a key the encoders escape
				}
				return fmt.Sprintf("item%03d", r.IntN(120))
			}
			batches, overlaid := 0, 0
			for u := range 150 {
				// Half the users start from a base written before overlays existed.
				base, recent := f.encode(nil, nil), ""
				if u%2 == 1 {
					m := map[string]features.ImpressionStat{}
					for range r.IntN(50) {
						m[item()] = features.ImpressionStat{Count: 1 + r.Int64N(3), LastTsMs: r.Int64N(1_000_000)}
					}
					base = ImpressionsObject.encode(m, sortedKeys(m))
				}
				st := features.UserState{}
				var err error
				if st.ImpressionCounts, err = DecodeImpressions(base); err != nil {
					t.Fatal(err)
				}
				ts := int64(1_000_000)
				for range 40 {
					var b Batch
					l := &lazyImpressions{recent: recent} // raise must not need the base
					var d features.Delta
					for i := range 1 + r.IntN(3) {
						ts += r.Int64N(5000) - 1000 // out of order now and then
						ev := features.Interaction{Kind: features.KindImpression, UserID: "u", EventID: fmt.Sprint(i), TsMs: ts}
						for range 1 + r.IntN(10) {
							ev.Items = append(ev.Items, item())
						}
						b.Events = append(b.Events, Event{Interaction: ev})
						features.ImpressionDeltaInto(cfg, ev, &d)
						l.add(i, ev.TsMs, d.UserImpressions)
						st = features.ApplyInto(cfg, st, ev, &d)
					}
					batches++
					if r, ok, err := l.raise(cfg, f); err != nil {
						t.Fatal(err)
					} else if ok {
						overlaid++
						recent = r
					} else {
						l.stored = base
						if base, recent, err = l.fold(cfg, &b, f, true); err != nil {
							t.Fatal(err)
						}
					}
					got, _, _, err := decodeEffectiveImpressions(base, recent, false)
					if err != nil {
						t.Fatal(err)
					}
					if !maps.Equal(got, st.ImpressionCounts) {
						t.Fatalf("user %d: base %s overlay %s\nreads %v\nwant  %v", u, base, recent, got, st.ImpressionCounts)
					}
					o, ok, err := overlayOf(recent, func() uint32 { return baseSum(base) })
					if err != nil || !ok {
						t.Fatalf("user %d: overlay %q does not apply to its base (%v)", u, recent, err)
					}
					if o.deltas == "" {
						continue // just folded
					}
					if deltas, err := DecodeImpressions(o.deltas); err != nil || len(deltas) > overlayLimit(o.n) {
						t.Fatalf("user %d: overlay of %d entries on %d (%v)", u, len(deltas), o.n, err)
					}
				}
			}
			// Small counters (40) against batches of up to 30 items: a fold every other batch
			// or so. At the defaults (300, lists of 20) three lists in four write the overlay.
			if overlaid < batches/3 {
				t.Fatalf("%d of %d batches wrote the overlay only", overlaid, batches)
			}
			t.Logf("%d of %d batches wrote the overlay only", overlaid, batches)
		})
	}
}

// An overlay written against another base (a consumer of an older release rewrote the base
// alone) is ignored by every reader; raises may still go to it (without the base, which is
// not read, nothing tells), and the next fold drops it, giving the base and the batch.
func TestStaleOverlayIsIgnored(t *testing.T) {
	cfg := features.DefaultConfig()
	base := ImpressionsArray.encode(map[string]features.ImpressionStat{"a": {Count: 2, LastTsMs: 5}}, []string{"a"})
	older := ImpressionsArray.encode(map[string]features.ImpressionStat{"a": {Count: 1, LastTsMs: 4}}, []string{"a"})
	deltas := ImpressionsArray.encode(map[string]features.ImpressionStat{"a": {Count: 1, LastTsMs: 5}, "b": {Count: 1, LastTsMs: 5}}, []string{"a", "b"})
	stale := encodeOverlay(older, 1, deltas)
	fresh := encodeOverlay(base, 1, deltas)

	if got, _, _, err := decodeEffectiveImpressions(base, stale, false); err != nil || len(got) != 1 || got["a"].Count != 2 {
		t.Fatalf("with a stale overlay: %v (%v), want the base alone", got, err)
	}
	if got, _, _, err := decodeEffectiveImpressions(base, fresh, false); err != nil || got["a"].Count != 3 || got["b"].Count != 1 {
		t.Fatalf("with its overlay: %v (%v)", got, err)
	}
	if got, err := ApplyImpressionsOverlay(map[string]features.ImpressionStat{"a": {Count: 2, LastTsMs: 5}}, baseSum(older), fresh); err != nil || got["a"].Count != 2 {
		t.Fatalf("ApplyImpressionsOverlay with another base's checksum: %v (%v)", got, err)
	}

	ev := features.Interaction{Kind: features.KindImpression, UserID: "u", EventID: "e", TsMs: 9, Items: []string{"c"}}
	var d features.Delta
	features.ImpressionDeltaInto(cfg, ev, &d)
	l := &lazyImpressions{recent: stale}
	l.add(0, ev.TsMs, d.UserImpressions)
	raised, ok, err := l.raise(cfg, ImpressionsArray)
	if err != nil || !ok {
		t.Fatalf("raise: %v %v", ok, err)
	}
	if got, _, _, err := decodeEffectiveImpressions(base, raised, false); err != nil || len(got) != 1 || got["a"].Count != 2 {
		t.Fatalf("with a raised stale overlay: %v (%v), want the base alone", got, err)
	}
	l.stored = base
	newBase, newRecent, err := l.fold(cfg, &Batch{Events: []Event{{Interaction: ev}}}, ImpressionsArray, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := `["a",2,5,"c",1,9]`; newBase != want || newRecent != encodeOverlay(want, 2, "") {
		t.Fatalf("after a stale overlay: base %s overlay %s, want %s and an empty overlay", newBase, newRecent, want)
	}

	for _, bad := range []string{"x", "zzzzzzzz1:[]", "0000000a:[]", "0000000a-1:[]"} {
		if _, _, _, err := decodeEffectiveImpressions(base, bad, false); err == nil {
			t.Errorf("overlay %q: no error", bad)
		}
	}
}
