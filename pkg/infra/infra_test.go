package infra_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"recsys/pkg/infra"
)

// hangingServer accepts connections and never answers: a dependency that is up at the TCP
// level but hung, which no connect error reveals.
func hangingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

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
			cfg.PG.DSN = "postgres://u:p@" + hangingServer(t) + "/db?sslmode=disable"
			cfg.Redis.URL = "redis://" + hangingServer(t) + "/0"
			cfg.Kafka.Brokers = []string{hangingServer(t)}
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
