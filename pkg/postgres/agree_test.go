package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/postgres"
	"recsys/pkg/testutil"
)

// The first values recorded are the deployment's: the same values agree, another value of a
// setting is a *DisagreeError naming the flag, its variable, both values and the procedure; a
// setting not recorded yet is recorded by whoever asks first.
func TestAgree(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	prefix := postgres.Setting{Flag: "redis.key-prefix", Value: "a:"}
	topic := postgres.Setting{Flag: "kafka.topic-watches", Value: "w1"}
	if err := postgres.Agree(ctx, pool, prefix); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Agree(ctx, pool, prefix, topic); err != nil {
		t.Fatalf("same prefix, topic not recorded yet: %v", err)
	}
	err := postgres.Agree(ctx, pool, postgres.Setting{Flag: "redis.key-prefix", Value: "b:"}, topic)
	var de *postgres.DisagreeError
	if !errors.As(err, &de) || de.Flag != "redis.key-prefix" || de.Here != "b:" || de.Recorded != "a:" {
		t.Fatalf("another prefix: %v", err)
	}
	for _, want := range []string{"--redis.key-prefix", "RECSYS_REDIS_KEY_PREFIX", `"b:"`, `"a:"`, "docs/runbook.md"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %s", err, want)
		}
	}
	if err := postgres.Agree(ctx, pool, postgres.Setting{Flag: "kafka.topic-watches", Value: "w2"}); err == nil {
		t.Fatal("the topic recorded by the second call was not kept")
	}
}

// Pods that start at the same moment with different values do not all pass: one value is
// recorded and every other pod is told.
func TestAgreeConcurrentFirstStarts(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	values := []string{"a:", "b:", "c:", "d:"}
	errs := make([]error, len(values))
	var wg sync.WaitGroup
	for i, v := range values {
		wg.Go(func() {
			errs[i] = postgres.Agree(context.Background(), pool, postgres.Setting{Flag: "redis.key-prefix", Value: v})
		})
	}
	wg.Wait()
	ok, winner := 0, ""
	for i, err := range errs {
		if err == nil {
			ok++
			winner = values[i]
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d different values agreed: %v", ok, len(values), errs)
	}
	// The others are told of the disagreement with the recorded value, not failed by the race
	// (a unique violation, say): that is what their readiness reports.
	for i, err := range errs {
		var de *postgres.DisagreeError
		if err != nil && (!errors.As(err, &de) || de.Here != values[i] || de.Recorded != winner) {
			t.Errorf("pod with %q: %v, want a disagreement with the recorded %q", values[i], err, winner)
		}
	}
}

// The background check retries what PostgreSQL cannot answer yet (down, or a schema without
// the table: not reported, readiness already names the schema), holds a disagreement while
// it lasts, and ends once the settings agree.
func TestAgreementRetriesUntilAVerdict(t *testing.T) {
	disagree := &postgres.DisagreeError{Flag: "redis.key-prefix", Here: "b:", Recorded: "a:"}
	// The recorded value is corrected after two checks that disagree: the pod becomes ready
	// without a restart.
	results := []error{&pgconn.PgError{Code: "42P01"}, errors.New("connection refused"), disagree, disagree, nil}
	var calls int
	var reported, disagreements []error
	var a postgres.Agreement
	a.Run(context.Background(), func(context.Context) error {
		calls++
		if calls == 4 && !errors.Is(a.Err(), disagree) {
			t.Errorf("Err = %v while the settings disagree, want the disagreement", a.Err())
		}
		return results[calls-1]
	}, time.Millisecond, func(err error) { reported = append(reported, err) }, func(err error) { disagreements = append(disagreements, err) })
	if calls != 5 || len(reported) != 1 || !strings.Contains(reported[0].Error(), "connection refused") {
		t.Fatalf("calls %d, reported %v", calls, reported)
	}
	if len(disagreements) != 1 || !errors.Is(disagreements[0], disagree) {
		t.Fatalf("disagreements reported %v, want the one once", disagreements)
	}
	if a.Err() != nil {
		t.Fatalf("Err = %v once the settings agree, want nil", a.Err())
	}
}
