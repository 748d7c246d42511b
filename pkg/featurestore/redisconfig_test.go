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
	if msg, err := st.CheckRedisConfig(ctx); err != nil || msg != "" {
		t.Fatalf("Redis as the services script starts it: %q, %v; want no report", msg, err)
	}
	for _, tc := range []struct {
		value string
		want  string // substring of the report; "" for none
	}{
		{"128", "zset-max-listpack-entries is 128"}, // Redis' default
		{"17", "set it to 16"},
		{"16", ""},
		{"0", ""},
	} {
		t.Run(tc.value, func(t *testing.T) {
			if err := rd.Do(ctx, rd.B().ConfigSet().ParameterValue().ParameterValue("zset-max-listpack-entries", tc.value).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			msg, err := st.CheckRedisConfig(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" && msg != "" || !strings.Contains(msg, tc.want) {
				t.Fatalf("report %q, want one containing %q", msg, tc.want)
			}
		})
	}
}

func TestCheckRedisConfigWithoutRedis(t *testing.T) {
	st := featurestore.New(nil, nil, "", features.DefaultConfig(), nil)
	if msg, err := st.CheckRedisConfig(context.Background()); err != nil || msg != "" {
		t.Fatalf("no Redis: %q, %v", msg, err)
	}
}
