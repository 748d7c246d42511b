package infra_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"recsys/pkg/infra"
	"recsys/pkg/testutil"
)

// Checks answers within CheckBudget whichever dependencies hang, and names each as failing.
func TestChecksAnswerWithinBudgetWhenDependenciesHang(t *testing.T) {
	tests := []struct {
		name  string
		need  infra.Need
		wants []string
	}{
		{"postgres", infra.Postgres, []string{"postgres"}},
		{"redis", infra.Redis, []string{"redis"}},
		{"kafka", infra.Kafka, []string{"kafka"}},
		{"all", infra.Postgres | infra.Redis | infra.Kafka, []string{"postgres", "redis", "kafka"}},
		{"none opened", 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := infra.DefaultConfig()
			cfg.PG.DSN = "postgres://u:p@" + testutil.HangingServer(t) + "/db?sslmode=disable"
			cfg.Redis.URL = "redis://" + testutil.HangingServer(t) + "/0"
			cfg.Kafka.Brokers = []string{testutil.HangingServer(t)}
			in, err := infra.Open(context.Background(), cfg, tc.need, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			start := time.Now()
			got := in.Checks(context.Background())
			took := time.Since(start)
			if limit := infra.CheckBudget + 200*time.Millisecond; took > limit {
				t.Errorf("Checks took %s, want at most %s", took, limit)
			}
			if len(got) != len(tc.wants) {
				t.Errorf("checks %v, want exactly %v", got, tc.wants)
			}
			for _, name := range tc.wants {
				if got[name] == nil {
					t.Errorf("check %q passed against a hung server: %v", name, got)
				}
			}
		})
	}
}

// A read-only PostgreSQL (a standby that a failover left the DSN's host on, or one set
// read-only during an incident) answers pings but refuses every write: readiness must say
// so, or relay pods stay ready with nothing they can claim, and api pods report postgres "ok"
// while every /log/* request answers 503.
func TestChecksFailOnAReadOnlyDatabase(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	cfg := infra.DefaultConfig()
	cfg.PG.DSN = dsn
	testutil.SetReadOnly(t, dsn, true)
	in, err := infra.Open(context.Background(), cfg, infra.Postgres, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	got := in.Checks(context.Background())
	if err := got["postgres"]; err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("postgres check on a read-only database = %v, want it failing as read-only", err)
	}
}
