package consumer_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/modules/consumer"
	"recsys/pkg/testutil"
)

// The consumer warns at start about Redis settings that make the copy costlier or unsafe
// (featurestore.CheckRedisConfig), and says nothing with the settings the services script
// and compose start Redis with.
func TestConsumerWarnsAboutRedisSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		listpack, policy string
		warn             bool
	}{{"128", "allkeys-lru", true}, {"16", "noeviction", false}} {
		t.Run(tc.listpack+"/"+tc.policy, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			for k, v := range map[string]string{"zset-max-listpack-entries": tc.listpack, "maxmemory-policy": tc.policy} {
				if err := e.rd.Do(ctx, e.rd.B().ConfigSet().ParameterValue().ParameterValue(k, v).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			var logs testutil.SyncBuffer
			d := e.deps(t, metrics.NewSet())
			d.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			m, err := consumer.New(e.config(), d)
			if err != nil {
				t.Fatal(err)
			}
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- m.Run(runCtx) }()
			waitFor(t, "consumer started", 30*time.Second, func() bool { return strings.Contains(logs.String(), "feature consumer started") })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for _, w := range []string{`"level":"WARN","msg":"redis zset-max-listpack-entries is 128`, `"level":"WARN","msg":"redis maxmemory-policy is allkeys-lru`} {
				if got := strings.Contains(logs.String(), w); got != tc.warn {
					t.Fatalf("%s logged: %v, want %v; logs:\n%s", w, got, tc.warn, logs.String())
				}
			}
			if strings.Contains(logs.String(), "redis settings not checked") {
				t.Fatalf("settings not read:\n%s", logs.String())
			}
		})
	}
}
