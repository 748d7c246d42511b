package cmd

import (
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// The banner names every service as embedded or external, so a `make run` with an exported
// DATABASE_URL does not claim to run on throwaway services, and never prints a password.
func TestDevBannerNamesEmbeddedAndExternalServices(t *testing.T) {
	got := devBanner("http://127.0.0.1:8080", []devService{
		{name: "PostgreSQL", where: "postgres://app:REDACTED@db.internal:5432/recsys", source: "DATABASE_URL"},
		{name: "Kafka (kfake)", where: "127.0.0.1:40000"},
		{name: "Redis (miniredis)", where: "127.0.0.1:40001"},
	})
	for _, want := range []string{
		"EXTERNAL  PostgreSQL",
		"postgres://app:REDACTED@db.internal:5432/recsys (from DATABASE_URL; its data is kept)",
		"embedded  Kafka (kfake)",
		"embedded  Redis (miniredis)",
		"curl -s 'http://127.0.0.1:8080/reco?user_id=u1&session_id=s1&k=10'",
		"'$(date +%s000)'",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("banner lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "embedded  PostgreSQL") {
		t.Errorf("banner calls an external PostgreSQL embedded:\n%s", got)
	}
}

// SIGHUP (a closed terminal) stops recsys gracefully, so `recsys dev` removes its throwaway
// PostgreSQL; under nohup, which ignores SIGHUP, it must stay ignored (test/e2e checks the
// process).
func TestShutdownSignalsHandleHangupUnlessIgnored(t *testing.T) {
	has := func() bool { return slices.Contains(shutdownSignals(), os.Signal(syscall.SIGHUP)) }
	if !signal.Ignored(syscall.SIGHUP) && !has() {
		t.Error("SIGHUP does not start the graceful shutdown: its default action ends the process at once")
	}
	signal.Ignore(syscall.SIGHUP)
	defer signal.Reset(syscall.SIGHUP)
	if has() {
		t.Error("SIGHUP is handled although the process ignores it (nohup)")
	}
}

// An embedded (empty) PostgreSQL next to a real Kafka or Redis, say with one variable of
// scripts/services.sh's left exported: the consumer repopulated the real Redis copy from the
// empty database, deleting its features, and consumed the real topics into the throwaway
// database, committing offsets the real consumers then skipped. Dev mode refuses to start.
func TestDevRefusesEmbeddedPostgresWithRealKafkaOrRedis(t *testing.T) {
	tests := []struct {
		name             string
		pg, kafka, redis string
		wantErr          []string
	}{
		{name: "all embedded", pg: "default", kafka: "default", redis: "default"},
		{name: "all real", pg: "DATABASE_URL", kafka: "KAFKA_BOOTSTRAP_SERVERS", redis: "ONLINE_CACHE_REDIS_URL"},
		{name: "real postgres only", pg: "flag", kafka: "default", redis: "default"},
		{name: "real redis", pg: "default", kafka: "default", redis: "ONLINE_CACHE_REDIS_URL",
			wantErr: []string{"Redis (from ONLINE_CACHE_REDIS_URL) is a real server", "unset ONLINE_CACHE_REDIS_URL", "--pg.dsn"}},
		{name: "real kafka by flag", pg: "default", kafka: "flag", redis: "default",
			wantErr: []string{"Kafka (from --kafka.brokers) is a real server", "drop --kafka.brokers"}},
		{name: "both", pg: "default", kafka: "RECSYS_KAFKA_BROKERS", redis: "RECSYS_REDIS_URL",
			wantErr: []string{"Kafka (from RECSYS_KAFKA_BROKERS) and Redis (from RECSYS_REDIS_URL) are real servers",
				"unset RECSYS_KAFKA_BROKERS and unset RECSYS_REDIS_URL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := devMixErr(tt.pg, tt.kafka, tt.redis)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted an embedded PostgreSQL next to a real server")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

// The banner's URL is built from the address the server got (Go reports all interfaces as
// [::]), and must be one curl reaches.
func TestDevBaseURL(t *testing.T) {
	for addr, want := range map[string]string{
		":8080":           "http://127.0.0.1:8080",
		"0.0.0.0:8080":    "http://127.0.0.1:8080",
		"[::]:43213":      "http://127.0.0.1:43213",
		"127.0.0.1:18080": "http://127.0.0.1:18080",
		"[::1]:8080":      "http://[::1]:8080",
		"localhost:8080":  "http://localhost:8080",
	} {
		if got := devBaseURL(addr); got != want {
			t.Errorf("devBaseURL(%q) = %q, want %q", addr, got, want)
		}
	}
}
