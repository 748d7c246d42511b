package consumer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"recsys/modules/consumer"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
)

// With --consumer.user-retention the consumer's housekeeping trims the users without an event
// for that long (their rows and Redis hashes) and counts them; a user active since stays.
func TestConsumerTrimsInactiveUsers(t *testing.T) {
	testConsumerTrims(t, retentionKind{what: "user", table: "feature_users", column: "user_id", stale: 400 * 24 * time.Hour,
		enable:  func(c *consumer.Config) { c.UserRetention = 365 * 24 * time.Hour },
		watched: func(user string) (string, string) { return user, "item" },
		key:     featurestore.Keys.User})
}

// A backlog of inactive users (a deployment of one-off visitors) is deleted by passes chained
// within one housekeeping run, not a page per 30 s: the first run, at start, trims all 35.
func TestConsumerChainsUserTrimPassesOnABacklog(t *testing.T) {
	t.Cleanup(consumer.SetUserTrimPage(10)) // runs after the consumer's stop, registered below
	e := newEnv(t)
	ctx := context.Background()
	var evs []featurestore.Event
	for i := range 36 {
		evs = append(evs, featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression,
			EventID: fmt.Sprintf("m%d", i), UserID: fmt.Sprintf("u%02d", i), TsMs: e.start, Items: []string{"item"}}})
	}
	applyAged(t, e, "feature_users", `user_id <> 'u35'`, 400*24*time.Hour, evs...)
	cfg := e.config()
	cfg.UserRetention = 365 * 24 * time.Hour
	c := e.startWith(t, cfg, nil)
	// Well before the second housekeeping run (30 s after the first).
	waitFor(t, "the backlog trimmed by the first run", 20*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_users_trimmed_total") == 35
	})
	var left int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_users`).Scan(&left); err != nil || left != 1 {
		t.Errorf("%d users left (%v), want 1 (u35)", left, err)
	}
}
