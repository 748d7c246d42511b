package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

type recoBody struct {
	RequestID string   `json:"request_id"`
	Items     []string `json:"items"`
	Strategy  string   `json:"strategy"`
}

func getReco(t *testing.T, base, user string) recoBody {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	q := url.Values{"user_id": {user}, "session_id": {"rt-session"}, "k": {"10"}, "x_autolog_impressions": {"false"}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/reco?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /reco: %v", err)
	}
	defer resp.Body.Close()
	var r recoBody
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /reco: %d %v", resp.StatusCode, err)
	}
	return r
}

func postWatch(t *testing.T, base, user, item string, tsMs int64) {
	t.Helper()
	code, err := sendWatch(base, fmt.Sprintf("rt-%s-%s-%d", user, item, tsMs), user, item, tsMs)
	if err != nil || code != 200 {
		t.Fatalf("POST /log/watch: %d %v", code, err)
	}
}

// sendWatch posts one watch and returns the status code.
func sendWatch(base, eventID, user, item string, tsMs int64) (int, error) {
	body, _ := json.Marshal(map[string]any{
		"event_id": eventID, "user_id": user, "session_id": "rt-session",
		"request_id": "rt-request", "ts_ms": tsMs, "item_id": item, "watch_time_sec": 120, "percent_watched": 95, "ended": true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/log/watch", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func indexIn(items []string, id string) int {
	for i, x := range items {
		if x == id {
			return i
		}
	}
	return -1
}

// The product's real-time property through the whole path (api → outbox → relay → Kafka →
// consumer → PostgreSQL and Redis → /reco): after POST /log/watch of X by U, U's next /reco
// excludes X and ranks X's co-visitation neighbours first, within one second.
func TestRealtimeWatchChangesNextRecommendation(t *testing.T) {
	p := Start(t, StackEnv(t, testutil.MigratedDatabase(t)), "all")
	p.WaitReadyz(t, 200, 90*time.Second)

	// Other users built X's neighbourhood: most went on from rt-x to rt-y, some to rt-z; a
	// popular catalogue around it gives a cold user something else to see.
	now := time.Now().UnixMilli()
	ts := now - 10*60_000
	next := func() int64 { ts += 1000; return ts }
	for u := 0; u < 8; u++ {
		user := fmt.Sprintf("rt-seed-y%d", u)
		postWatch(t, p.Base, user, "rt-x", next())
		postWatch(t, p.Base, user, "rt-y", next())
	}
	for u := 0; u < 4; u++ {
		user := fmt.Sprintf("rt-seed-z%d", u)
		postWatch(t, p.Base, user, "rt-x", next())
		postWatch(t, p.Base, user, "rt-z", next())
	}
	for u := 0; u < 12; u++ {
		for i := 0; i < 6; i++ {
			postWatch(t, p.Base, fmt.Sprintf("rt-pop%d", u), fmt.Sprintf("rt-p%d", (u+i)%10), next())
		}
	}
	// Every seed user's history has reached the serving store.
	deadline := time.Now().Add(60 * time.Second)
	for _, u := range []string{"rt-seed-y7", "rt-seed-z3", "rt-pop11"} {
		for {
			if r := getReco(t, p.Base, u); r.Strategy == "co_vis_popularity_hybrid" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("seed events of %s not applied within 60s", u)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	const user = "rt-user"
	before := getReco(t, p.Base, user)
	if before.Strategy != "cold_start_trending" {
		t.Fatalf("before the watch: %+v", before)
	}

	postWatch(t, p.Base, user, "rt-x", time.Now().UnixMilli())
	watched := time.Now()
	var last recoBody
	for {
		last = getReco(t, p.Base, user)
		if indexIn(last.Items, "rt-x") < 0 && len(last.Items) >= 2 && last.Items[0] == "rt-y" && last.Items[1] == "rt-z" {
			break
		}
		if time.Since(watched) > 5*time.Second {
			t.Fatalf("5s after the watch the list is %v (%s), before it was %v", last.Items, last.Strategy, before.Items)
		}
		time.Sleep(10 * time.Millisecond)
	}
	lag := time.Since(watched)
	t.Logf("watch visible in /reco after %s: %v (%s), before %v", lag.Round(time.Millisecond), last.Items, last.Strategy, before.Items)
	if lag > time.Second {
		t.Fatalf("the watch took %s to change the list, want within 1s", lag)
	}
}
