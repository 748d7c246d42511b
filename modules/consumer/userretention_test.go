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
	e := newEnv(t)
	ctx := context.Background()
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	watch := func(id, user string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user,
			TsMs: e.start, ItemID: "item", WatchTimeSec: 30}}
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{watch("r1", "stale"), watch("r2", "fresh")}}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-400 * 24 * time.Hour).UnixMilli()
	if _, err := e.pool.Exec(ctx, `UPDATE feature_users SET last_active_ms = $1 WHERE user_id = 'stale'`, old); err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.UserRetention = 365 * 24 * time.Hour
	c := e.startWith(t, cfg, nil)
	waitFor(t, "the stale user trimmed", 30*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_users_trimmed_total") == 1
	})
	var users []string
	rows, err := e.pool.Query(ctx, `SELECT user_id FROM feature_users ORDER BY user_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		users = append(users, id)
	}
	if len(users) != 1 || users[0] != "fresh" {
		t.Errorf("feature_users holds %v, want [fresh]", users)
	}
	keys := featurestore.NewKeys(e.Prefix)
	waitFor(t, "the copy repopulated", 30*time.Second, func() bool {
		n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(keys.User("fresh")).Build()).AsInt64()
		return err == nil && n == 1
	})
	if n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(keys.User("stale")).Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("the stale user's hash is still in the copy (%d, %v)", n, err)
	}
	if n := counter(c.set, `reco_feature_consumer_errors_total{stage="user_retention"}`); n != 0 {
		t.Errorf("%v user retention errors", n)
	}
}

// A backlog of inactive users (a deployment of one-off visitors) is deleted by passes chained
// within one housekeeping run, not a page per 30 s: the first run, at start, trims all 35.
func TestConsumerChainsUserTrimPassesOnABacklog(t *testing.T) {
	t.Cleanup(consumer.SetUserTrimPage(10)) // runs after the consumer's stop, registered below
	e := newEnv(t)
	ctx := context.Background()
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	var evs []featurestore.Event
	for i := range 36 {
		evs = append(evs, featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression,
			EventID: fmt.Sprintf("m%d", i), UserID: fmt.Sprintf("u%02d", i), TsMs: e.start, Items: []string{"item"}}})
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-400 * 24 * time.Hour).UnixMilli()
	if _, err := e.pool.Exec(ctx, `UPDATE feature_users SET last_active_ms = $1 WHERE user_id <> 'u35'`, old); err != nil {
		t.Fatal(err)
	}
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
