package consumer_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

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
			r := e.startWith(t, e.config(), slog.New(slog.NewJSONHandler(&logs, nil)))
			waitFor(t, "consumer started", 30*time.Second, func() bool { return strings.Contains(logs.String(), "feature consumer started") })
			if r.stop(); r.err != nil {
				t.Fatal(r.err)
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
