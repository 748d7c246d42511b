package reco

import (
	"context"
	"strings"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// An API pod whose key prefix or topics differ from those the deployment recorded (the
// consumers') stays unready, naming the setting and both values: with another prefix it would
// serve a copy no consumer updates (or none at all, from PostgreSQL), with other topics its
// autologged impressions would reach no consumer. A rollout of such a pod stalls instead.
func TestIntegrationRecoUnreadyWhileASettingDisagrees(t *testing.T) {
	for _, tc := range []struct{ flag, recorded string }{
		{"redis.key-prefix", "other-deployment:"},
		{"kafka.topic-impressions", "recsys.impressions.v2"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			dsn := testutil.MigratedDatabase(t)
			pool := testutil.Pool(t, dsn)
			if _, err := pool.Exec(context.Background(), `INSERT INTO deployment_settings (name, value) VALUES ($1, $2)`,
				tc.flag, tc.recorded); err != nil {
				t.Fatal(err)
			}
			s := newStack(t, dsn, testutil.RedisURL(t), nil)
			var err error
			s.waitFor("readiness to fail", 10*time.Second, func() bool {
				err = s.mod.Ready(context.Background())
				return err != nil && strings.Contains(err.Error(), tc.recorded)
			})
			if !strings.Contains(err.Error(), "--"+tc.flag) {
				t.Errorf("readiness error %q does not name --%s", err, tc.flag)
			}
			// The operator corrects the record (docs/runbook.md): the pod becomes ready
			// without a restart.
			if _, err := pool.Exec(context.Background(), `DELETE FROM deployment_settings WHERE name = $1`, tc.flag); err != nil {
				t.Fatal(err)
			}
			s.waitFor("readiness once the record is corrected", 3*agreeRetry, func() bool {
				err = s.mod.Ready(context.Background())
				return err == nil || !strings.Contains(err.Error(), tc.recorded)
			})
		})
	}
}

// A pod that agrees records its values where none were, and is ready.
func TestIntegrationRecoAgreeingSettingsReady(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	s := newStack(t, dsn, testutil.RedisURL(t), nil)
	s.seed(userWatchedA(s))
	s.waitServing()
	s.waitFor("the settings recorded", 10*time.Second, func() bool {
		var v string
		_ = s.pg.QueryRow(context.Background(), `SELECT value FROM deployment_settings WHERE name = 'redis.key-prefix'`).Scan(&v)
		return v == s.prefix
	})
	if err := s.mod.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
}
