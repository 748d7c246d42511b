package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// The Redis copy that batch after batch of writes built holds what a repopulation from
// PostgreSQL writes: every user, item, neighbour list and top list, field for field. The
// stream is small with small bounds, so every cut happens many times (histories, watched sets,
// impression counters, neighbour lists, top lists), with redeliveries in random batches.
//
// With crossed=true the batches' writes reach Redis out of commit order (up to four of them
// shuffled), as those of several consumers, or of one consumer's lanes, can: the copy must not
// depend on it. Without the neighbour lists' versions, a neighbour a later batch cut came back
// when an earlier batch's write landed after it.
func TestStreamedCopyEqualsRepopulation(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.HistorySize, cfg.WatchedCap, cfg.ImpressionMemory = 5, 8, 6
	cfg.CovisWindow, cfg.NeighboursPerItem = 6, 3
	cfg.TopListSize, cfg.FreshSize = 10, 10
	for _, c := range []struct{ overlay, crossed bool }{{false, false}, {true, false}, {true, true}} {
		overlay := c.overlay
		t.Run(fmt.Sprintf("overlay=%v/crossed=%v", overlay, c.crossed), func(t *testing.T) {
			pool, rd := servers(t)
			prefix := fmt.Sprintf("strm%v%v:", overlay, c.crossed)
			st := featurestore.New(pool, rd, prefix, cfg, nil)
			st.SetImpressionsFormat(featurestore.ImpressionsArray)
			st.SetImpressionsOverlay(overlay)
			start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
			evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 12, Items: 40, Events: 3000, StartMs: start,
				StepMs: 20_000, Prefix: fmt.Sprintf("m%v%v", overlay, c.crossed), ImpressionShare: 0.6}))
			r := rand.New(rand.NewPCG(3, 4))
			write := func(a *featurestore.Applied) { writeCopy(t, st, a) }
			var held []*featurestore.Applied
			for i := 0; i < len(evs); {
				n := 1 + r.IntN(80)
				b := &featurestore.Batch{Events: slices.Clone(evs[i:min(i+n, len(evs))])}
				for j := 0; j < 2 && i > 0; j++ {
					b.Events = append(b.Events, evs[r.IntN(i)])
				}
				i += n
				a, err := st.Apply(ctx, b)
				if err != nil {
					t.Fatal(err)
				}
				if !c.crossed {
					write(a)
					continue
				}
				if held = append(held, a); len(held) == 4 || i >= len(evs) || r.IntN(3) == 0 {
					r.Shuffle(len(held), func(x, y int) { held[x], held[y] = held[y], held[x] })
					for _, a := range held {
						write(a)
					}
					held = held[:0]
				}
			}
			streamed := dumpCopy(t, rd, prefix)

			other := "re" + prefix
			if err := featurestore.New(pool, rd, other, cfg, nil).Repopulate(ctx, false); err != nil {
				t.Fatal(err)
			}
			repopulated := dumpCopy(t, rd, other)
			kinds := map[string]int{}
			for k := range repopulated {
				kinds[strings.SplitN(k, ":", 2)[0]]++
			}
			t.Logf("%d keys repopulated, by kind %v", len(repopulated), kinds)
			for _, k := range slices.Sorted(maps.Keys(repopulated)) {
				if got, want := streamed[k], repopulated[k]; got != want {
					t.Errorf("%s:\n streamed    %s\n repopulated %s", k, got, want)
				}
			}
			for _, k := range slices.Sorted(maps.Keys(streamed)) {
				if _, ok := repopulated[k]; !ok {
					t.Errorf("%s: streamed %s, not in the repopulated copy", k, streamed[k])
				}
			}
		})
	}
}

// writeCopy mirrors an applied batch into Redis; a copy that is behind (the first batch
// creates the generation) is repopulated, as the consumer does.
func writeCopy(t *testing.T, st *featurestore.Store, a *featurestore.Applied) {
	t.Helper()
	ctx := context.Background()
	if err := st.WriteRedis(ctx, a); errors.Is(err, featurestore.ErrRedisBehind) {
		if err := st.Repopulate(ctx, false); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

// dumpCopy reads every data key under prefix (not the copy's bookkeeping: meta, ready
// marker, lock) as text, sorted: a hash's fields, a sorted set's members with their scores.
func dumpCopy(t *testing.T, rd rueidis.Client, prefix string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, key := range testutil.RedisKeys(t, rd, prefix+"*") {
		name := strings.TrimPrefix(key, prefix)
		if name == "meta" || name == "ready" || name == "run_id" || name == "repopulating" {
			continue
		}
		typ, err := rd.Do(ctx, rd.B().Type().Key(key).Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		switch typ {
		case "hash":
			h, err := rd.Do(ctx, rd.B().Hgetall().Key(key).Build()).AsStrMap()
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range slices.Sorted(maps.Keys(h)) {
				parts = append(parts, f+"="+h[f])
			}
		case "zset":
			zs, err := rd.Do(ctx, rd.B().Zrange().Key(key).Min("0").Max("-1").Withscores().Build()).AsZScores()
			if err != nil {
				t.Fatal(err)
			}
			for _, z := range zs {
				parts = append(parts, fmt.Sprintf("%s=%v", z.Member, z.Score))
			}
			slices.Sort(parts)
		default:
			t.Fatalf("%s: unexpected type %s", key, typ)
		}
		out[name] = strings.Join(parts, " ")
	}
	return out
}
