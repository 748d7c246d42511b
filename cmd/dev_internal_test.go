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
