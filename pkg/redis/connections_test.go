package redis

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/rueidis"

	"recsys/pkg/testutil"
)

// TestOpenUsesConfiguredConnections counts, on a Redis of the test's own, the connections a
// client opens once concurrent commands on many keys have gone through it: rueidis spreads
// them over its pipelined connections by key slot. 1 must be one connection, not rueidis'
// default (as many as cores, at most 4), which PipelineMultiplex 0 would select.
func TestOpenUsesConfiguredConnections(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("connections=%d", n), func(t *testing.T) {
			srv := testutil.StartPrivate(t, "redis")
			cfg := DefaultConfig()
			cfg.URL, cfg.Connections = srv.URL, n
			cl, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx := context.Background()
			var wg sync.WaitGroup
			for i := range 200 {
				wg.Go(func() {
					if err := cl.Do(ctx, cl.B().Get().Key(fmt.Sprintf("k%d", i)).Build()).Error(); err != nil && !rueidis.IsRedisNil(err) {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			list, err := cl.Do(ctx, cl.B().ClientList().Build()).ToString()
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(strings.TrimSpace(list), "\n") + 1; got != n {
				t.Fatalf("%d connections to Redis, want %d:\n%s", got, n, list)
			}
		})
	}
}
