package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
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

// TestBlockedItemsLeaveEveryList: `recsys items block` takes an item out of every list within
// --reco.blocked-refresh, for a cold user (trending) and for a user whose co-visitation
// neighbours name it; `recsys items blocked` lists it with its reason, and `unblock` brings
// it back.
func TestBlockedItemsLeaveEveryList(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	p := Start(t, append(StackEnv(t, dsn), "RECSYS_RECO_BLOCKED_REFRESH=200ms"), "all")
	p.WaitReadyz(t, 200, 90*time.Second)
	now := time.Now().UnixMilli()
	// Watchers of a then b make b a's neighbour and both trending.
	for i := range 4 {
		u := fmt.Sprintf("blk-watcher-%d", i)
		postWatch(t, p.Base, u, "blk-a", now-int64(2000-i))
		postWatch(t, p.Base, u, "blk-b", now-int64(1000-i))
	}
	postWatch(t, p.Base, "blk-fan", "blk-a", now)
	has := func(user, item string) bool { return indexIn(getReco(t, p.Base, user).Items, item) >= 0 }
	deadline := time.Now().Add(20 * time.Second)
	for !(has("blk-cold", "blk-b") && has("blk-fan", "blk-b")) {
		if time.Now().After(deadline) {
			t.Fatalf("blk-b never in the lists: cold %v, fan %v", getReco(t, p.Base, "blk-cold").Items, getReco(t, p.Base, "blk-fan").Items)
		}
		time.Sleep(100 * time.Millisecond)
	}
	env := []string{"DATABASE_URL=" + dsn}
	if out, _, code := toolEnv(t, time.Minute, env, "items", "block", "blk-b", "--reason", "takedown 42"); code != 0 || !strings.Contains(out, `"blocked": 1`) {
		t.Fatalf("items block: exit %d %s", code, out)
	}
	blocked := time.Now()
	for has("blk-cold", "blk-b") || has("blk-fan", "blk-b") {
		if time.Since(blocked) > 5*time.Second {
			t.Fatalf("blk-b still served 5 s after the block: cold %v, fan %v", getReco(t, p.Base, "blk-cold").Items, getReco(t, p.Base, "blk-fan").Items)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("blk-b left the lists %s after the block", time.Since(blocked).Round(time.Millisecond))
	out, _, code := toolEnv(t, time.Minute, env, "items", "blocked")
	var list []blockedRow
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].ItemID != "blk-b" || list[0].Reason != "takedown 42" {
		t.Fatalf("items blocked: exit %d %s", code, out)
	}
	if out, _, code := toolEnv(t, time.Minute, env, "items", "unblock", "blk-b"); code != 0 || !strings.Contains(out, `"unblocked": 1`) {
		t.Fatalf("items unblock: exit %d %s", code, out)
	}
	for !(has("blk-cold", "blk-b") && has("blk-fan", "blk-b")) {
		if time.Since(blocked) > 15*time.Second {
			t.Fatalf("blk-b not back after the unblock")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type blockedRow struct {
	ItemID string `json:"item_id"`
	Reason string `json:"reason"`
}
