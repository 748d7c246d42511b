package featurestore_test

import (
	"context"
	"strings"
	"testing"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

func TestCheckRedisConfig(t *testing.T) {
	rd := redisClient(t, testutil.StartPrivate(t, "redis").URL)
	st := featurestore.New(nil, rd, "", features.DefaultConfig(), nil)
	ctx := context.Background()
	// As the services script (and compose) start Redis: nothing to report.
	if msgs, err := st.CheckRedisConfig(ctx); err != nil || len(msgs) != 0 {
		t.Fatalf("Redis as the services script starts it: %q, %v; want no report", msgs, err)
	}
	for _, tc := range []struct {
		name, listpack, policy string
		want                   []string // a substring of each report, in order
	}{
		{"redis defaults", "128", "noeviction", []string{"zset-max-listpack-entries is 128"}},
		{"one above", "17", "noeviction", []string{"set it to 16"}},
		{"recommended", "16", "noeviction", nil},
		{"no listpacks", "0", "noeviction", nil},
		{"allkeys eviction", "16", "allkeys-lru", []string{"maxmemory-policy is allkeys-lru"}},
		{"both", "64", "allkeys-lfu", []string{"zset-max-listpack-entries is 64", "set noeviction"}},
		{"volatile eviction", "16", "volatile-lru", nil}, // only user hashes may expire, and /reco reads them back
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range map[string]string{"zset-max-listpack-entries": tc.listpack, "maxmemory-policy": tc.policy} {
				if err := rd.Do(ctx, rd.B().ConfigSet().ParameterValue().ParameterValue(k, v).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			msgs, err := st.CheckRedisConfig(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(tc.want) {
				t.Fatalf("reports %q, want %d", msgs, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(msgs[i], w) {
					t.Errorf("report %q, want one containing %q", msgs[i], w)
				}
			}
		})
	}
}

func TestCheckRedisConfigWithoutRedis(t *testing.T) {
	st := featurestore.New(nil, nil, "", features.DefaultConfig(), nil)
	if msgs, err := st.CheckRedisConfig(context.Background()); err != nil || len(msgs) != 0 {
		t.Fatalf("no Redis: %q, %v", msgs, err)
	}
}
