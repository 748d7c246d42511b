package consumer_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// A consumer whose key prefix or topics differ from the deployment's (another pod recorded
// them first) refuses to consume, naming the setting and both values: with another prefix it
// would keep a second Redis copy /reco never reads and leave the real one stale for its
// partitions' users, with other topics it would apply nothing the API writes.
func TestIntegrationConsumerRefusesSettingsOtherPodsDisagreeWith(t *testing.T) {
	for _, tc := range []struct {
		flag, recorded string
		here           func(e *env) string
	}{
		{"redis.key-prefix", "other-deployment:", func(e *env) string { return e.Prefix }},
		{"kafka.topic-watches", "recsys.watches.v2", func(e *env) string { return e.TopicWatch }},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			e := newEnv(t)
			if _, err := e.pool.Exec(context.Background(), `INSERT INTO deployment_settings (name, value) VALUES ($1, $2)`,
				tc.flag, tc.recorded); err != nil {
				t.Fatal(err)
			}
			r := e.startConsumer(t)
			var err error
			select {
			case err = <-r.done:
				r.cancel = nil
			case <-time.After(30 * time.Second):
				t.Fatalf("the consumer runs with --%s %q while the deployment recorded %q", tc.flag, tc.here(e), tc.recorded)
			}
			if err == nil {
				t.Fatal("Run returned nil, want the disagreement")
			}
			for _, want := range []string{"--" + tc.flag, tc.here(e), tc.recorded, "docs/runbook.md"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

// A consumer that agrees records nothing new and runs; a second one with the same settings
// too (the first pod's values are the deployment's).
func TestIntegrationConsumerAgreeingSettingsRun(t *testing.T) {
	e := newEnv(t)
	a, b := e.startConsumer(t), e.startConsumer(t)
	waitFor(t, "both consumers ready", 60*time.Second, func() bool {
		return a.mod.Ready(context.Background()) == nil && b.mod.Ready(context.Background()) == nil
	})
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM deployment_settings WHERE
  (name, value) IN (('redis.key-prefix', $1), ('kafka.topic-watches', $2), ('kafka.topic-impressions', $3))`,
		e.Prefix, e.TopicWatch, e.TopicImp).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("%d of the 3 settings recorded with the consumers' values", n)
	}
}

// The decay half-lives of the flags differ from those the stored features decay with: the
// stored ones win (the sums are relative to them), so the consumer warns at start, naming the
// flag, both values and the fix, rather than ignoring the change in silence.
func TestIntegrationConsumerWarnsOfHalfLivesTheStoredFeaturesOverride(t *testing.T) {
	e := newEnv(t)
	if _, err := e.pool.Exec(context.Background(), `INSERT INTO feature_meta (lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms)
VALUES (0, 0, 0, $1, $2, $3)`, float64(e.fcfg.PopShortHalfLife.Milliseconds()), float64((7 * 24 * time.Hour).Milliseconds()),
		float64(e.fcfg.CovisHalfLife.Milliseconds())); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	e.startWith(t, e.config(), slog.New(slog.NewJSONHandler(&logs, nil)))
	want := "pop-long-half-life is " + e.fcfg.PopLongHalfLife.String() + " but the stored features decay with 168h0m0s"
	waitFor(t, "the half-life warning", 30*time.Second, func() bool { return strings.Contains(logs.String(), want) })
	if strings.Contains(logs.String(), "pop-short-half-life is") || strings.Contains(logs.String(), "covis-half-life is") {
		t.Errorf("warned about half-lives that agree:\n%s", logs.String())
	}
}
