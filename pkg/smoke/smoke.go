// Package smoke is the logic behind `recsys smoke`: an end-to-end probe of a running stack.
// It keeps the original smoke_stack tool's flags, steps, report fields and exit rule, and
// fixes its two gaps:
//   - it proves the consumer applied what was ingested (consumer_applied): helper users watch
//     item A then item B (a co-visitation pattern), control users watch item C, then a fresh
//     user watches A; the check passes once that user's /reco no longer contains A (exclusion
//     of watched items) and ranks B (A's co-visitation neighbour) higher than both its own
//     list before the watch and the list of a user without history, polled alongside, both
//     with A left out (so B cannot pass through the global lists, an exploration slot, or
//     the place A's exclusion frees above it). Items and users are
//     unique per run, so reruns on the same database prove the same thing again;
//   - a connection error, a timeout or a malformed answer is a failed check with its reason in
//     the report, never a crash without a report. When /readyz never answers, the later steps
//     are reported as failed ("not run") instead of waiting out their own timeouts.
package smoke

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/apikey"
	"recsys/pkg/flagenv"
)

// Check names, in the order they run.
const (
	CheckReadyz             = "readyz"
	CheckSeedEvents         = "seed_events"
	CheckRecoTraffic        = "reco_traffic"
	CheckWatchTraffic       = "watch_traffic"
	CheckWatchIdempotency   = "watch_idempotency"
	CheckConsumerApplied    = "consumer_applied"
	CheckOutboxSettled      = "outbox_settled"
	CheckRecoMetricsSamples = "reco_metrics_samples"
)

// AllChecks lists every check in run order.
var AllChecks = []string{CheckReadyz, CheckSeedEvents, CheckRecoTraffic, CheckWatchTraffic, CheckWatchIdempotency,
	CheckConsumerApplied, CheckOutboxSettled, CheckRecoMetricsSamples}

// Config holds the flags of `recsys smoke`; durations are given in seconds as in the original.
type Config struct {
	BaseURL            string
	TimeoutSec         float64
	ReadyTimeoutSec    float64
	PollSec            float64
	SeedUsers          int
	SeedItems          int
	SeedRounds         int
	RecoRequests       int
	OutboxTimeoutSec   float64
	MaxOutboxPending   int
	ConsumerTimeoutSec float64
	ConsumerHelpers    int
	OutputJSON         string
	// APIKey is sent as a bearer token on every request; never written to the report.
	APIKey string
}

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{BaseURL: "http://localhost:8080", TimeoutSec: 3, ReadyTimeoutSec: 90, PollSec: 2, SeedUsers: 5, SeedItems: 5,
		SeedRounds: 2, RecoRequests: 30, OutboxTimeoutSec: 120, MaxOutboxPending: 0, ConsumerTimeoutSec: 60, ConsumerHelpers: 3}
}

// RegisterFlags adds the flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.BaseURL, "base-url", c.BaseURL, "API base URL")
	fs.Float64Var(&c.TimeoutSec, "timeout-sec", c.TimeoutSec, "per-request timeout in seconds")
	fs.Float64Var(&c.ReadyTimeoutSec, "ready-timeout-sec", c.ReadyTimeoutSec, "how long to wait for /readyz to answer 200 ready")
	fs.Float64Var(&c.PollSec, "poll-sec", c.PollSec, "pause between polls of /readyz, /healthz and /reco")
	fs.IntVar(&c.SeedUsers, "seed-users", c.SeedUsers, "users of the POST /event seeding (seed-user-<u>)")
	fs.IntVar(&c.SeedItems, "seed-items", c.SeedItems, "items of the POST /event seeding (seed-item-<i>)")
	fs.IntVar(&c.SeedRounds, "seed-rounds", c.SeedRounds, "seeding rounds (round 0 views, later rounds clicks)")
	fs.IntVar(&c.RecoRequests, "reco-requests", c.RecoRequests, "GET /reco requests of the traffic step (each followed by a watch of its first item)")
	fs.Float64Var(&c.OutboxTimeoutSec, "outbox-timeout-sec", c.OutboxTimeoutSec, "how long to wait for the outbox to drain")
	fs.IntVar(&c.MaxOutboxPending, "max-outbox-pending", c.MaxOutboxPending, "pending + publishing outbox rows still counted as settled")
	fs.Float64Var(&c.ConsumerTimeoutSec, "consumer-timeout-sec", c.ConsumerTimeoutSec, "how long to wait for the consumer to apply the probe's watches (visible in /reco)")
	fs.IntVar(&c.ConsumerHelpers, "consumer-helpers", c.ConsumerHelpers, "users who build the co-visitation pattern of the consumer check")
	fs.StringVar(&c.OutputJSON, "output-json", c.OutputJSON, "also write the report to this file")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "API key sent as Authorization: Bearer on every request, needed when the server runs with --http.api-keys-file; "+
		"smoke needs a key with both the client scope (/event, /reco, /log/watch) and the ops scope (/metrics/reco). "+
		"Prefer the environment variable RECSYS_API_KEY to the flag: flags show in process listings")
	flagenv.Secret(fs, "api-key")
}

// Clamp raises numeric settings to sensible minimums, as the original tool does.
func (c *Config) Clamp() {
	c.TimeoutSec = clampSec(c.TimeoutSec, 0.1)
	c.ReadyTimeoutSec = clampSec(c.ReadyTimeoutSec, 1)
	c.PollSec = clampSec(c.PollSec, 0.05)
	c.SeedUsers, c.SeedItems, c.SeedRounds = max(c.SeedUsers, 1), max(c.SeedItems, 1), max(c.SeedRounds, 1)
	c.RecoRequests = max(c.RecoRequests, 1)
	c.OutboxTimeoutSec = clampSec(c.OutboxTimeoutSec, 1)
	c.MaxOutboxPending = max(c.MaxOutboxPending, 0)
	c.ConsumerTimeoutSec = clampSec(c.ConsumerTimeoutSec, 1)
	c.ConsumerHelpers = max(c.ConsumerHelpers, 1)
}

// clampSec keeps a seconds setting between lo and a day: max alone lets NaN through (Go's
// max of NaN is NaN), and NaN or an infinity has no time.Duration.
func clampSec(v, lo float64) float64 {
	if !(v >= lo) {
		return lo
	}
	return min(v, 86400)
}

func secs(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// Traffic counts the traffic step's outcomes.
type Traffic struct {
	RecoOK    int `json:"reco_ok"`
	WatchOK   int `json:"watch_ok"`
	EmptyReco int `json:"empty_reco"`
}

// ConsumerProbe describes the consumer_applied check.
type ConsumerProbe struct {
	User            string   `json:"user"`
	WatchedItem     string   `json:"watched_item"`
	NeighbourItem   string   `json:"neighbour_item"`
	ControlItem     string   `json:"control_item"`
	ListBeforeWatch []string `json:"list_before_watch"`
	ListAfter       []string `json:"list_after"`
	// BaselineUser has no history; BaselineList is its /reco from the last poll. What the
	// probe user's list shares with it comes from the global lists, not from the watch.
	BaselineUser string   `json:"baseline_user"`
	BaselineList []string `json:"baseline_list"`
	Polls        int      `json:"polls"`
	// VisibleAfterMs is the time from the probe user's watch being accepted to the first
	// /reco that showed its effect (an upper bound of the pipeline's freshness, at --poll-sec
	// resolution).
	VisibleAfterMs  *int64 `json:"visible_after_ms"`
	WatchedExcluded bool   `json:"watched_excluded"`
	NeighbourRank   *int   `json:"neighbour_rank"` // 0-based position in the list, null if absent
	// NeighbourRankBefore and NeighbourRankBaseline are B's positions in the probe user's list
	// before the watch and in the baseline user's list, both without A (which the watch
	// excludes); NeighbourRank must beat both.
	NeighbourRankBefore   *int `json:"neighbour_rank_before"`
	NeighbourRankBaseline *int `json:"neighbour_rank_baseline"`
	ControlRank           *int `json:"control_rank"`
	// NeighbourAboveControl says the co-visitation neighbour outranks an item of the same
	// popularity that is not a neighbour: informational, since the ranker may legitimately
	// mix in exploration.
	NeighbourAboveControl bool `json:"neighbour_above_control"`
}

// Report is the smoke report: the original fields, then the additions.
type Report struct {
	TimestampMs           int64             `json:"timestamp_ms"`
	Checks                map[string]string `json:"checks"`
	Traffic               Traffic           `json:"traffic"`
	SeededEvents          int               `json:"seeded_events"`
	OutboxSnapshot        any               `json:"outbox_snapshot"`
	RecoMetricsSampleSize *float64          `json:"reco_metrics_sample_size"`

	BaseURL    string            `json:"base_url"`
	RunID      string            `json:"run_id"`
	Status     string            `json:"status"` // pass | fail
	ElapsedSec float64           `json:"elapsed_sec"`
	Details    map[string]string `json:"details"` // per check: why it failed, or what it saw
	// SeedVisibleAfterMs is how long after seeding /reco first listed items for a new user.
	SeedVisibleAfterMs *int64         `json:"seed_visible_after_ms"`
	Consumer           *ConsumerProbe `json:"consumer,omitempty"`
}

// OK reports whether every check passed.
func (r *Report) OK() bool { return r.Status == "pass" }

// Run runs every step against cfg.BaseURL. It never returns an error for a failing stack:
// failures are in the report.
func Run(ctx context.Context, cfg Config) *Report {
	cfg.Clamp()
	start := time.Now()
	runID := randomHex(6)
	// A base URL may carry a gateway's credentials (https://user:password@host): reports are
	// archived, so they name it without its password.
	r := &Report{Checks: map[string]string{}, Details: map[string]string{}, BaseURL: flagenv.Redact(cfg.BaseURL), RunID: runID}
	for _, c := range AllChecks {
		r.Checks[c] = "fail"
	}
	s := &runner{cfg: cfg, r: r, run: runID, c: &client{base: strings.TrimRight(cfg.BaseURL, "/"), timeout: secs(cfg.TimeoutSec),
		http: &http.Client{}, apiKey: cfg.APIKey}}
	defer s.c.http.CloseIdleConnections()
	if _, err := url.ParseRequestURI(s.c.base); err != nil || !strings.HasPrefix(s.c.base, "http") {
		r.Details[CheckReadyz] = fmt.Sprintf("--base-url %q is not an http(s) URL", r.BaseURL)
		s.notRun(CheckReadyz)
	} else if s.readyz(ctx) {
		s.seed(ctx)
		s.traffic(ctx)
		s.idempotency(ctx)
		s.consumer(ctx)
		s.outbox(ctx)
		s.recoMetrics(ctx)
	} else {
		s.notRun(CheckReadyz)
	}
	r.TimestampMs = time.Now().UnixMilli()
	r.ElapsedSec = float64(time.Since(start).Milliseconds()) / 1000
	r.Status = "pass"
	for _, c := range AllChecks {
		if r.Checks[c] != "pass" {
			r.Status = "fail"
		}
	}
	return r
}

type runner struct {
	cfg Config
	r   *Report
	c   *client
	run string
}

func (s *runner) notRun(after string) {
	for _, c := range AllChecks {
		if c != after && s.r.Details[c] == "" {
			s.r.Details[c] = "not run: " + after + " failed"
		}
	}
}

func (s *runner) set(check string, ok bool, detail string) {
	s.r.Checks[check] = map[bool]string{true: "pass", false: "fail"}[ok]
	if detail != "" {
		s.r.Details[check] = detail
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// readyz polls /readyz until 200 with ready: true.
func (s *runner) readyz(ctx context.Context) bool {
	deadline := time.Now().Add(secs(s.cfg.ReadyTimeoutSec))
	last := ""
	for {
		var body map[string]any
		st, err := s.c.getJSON(ctx, "/readyz", &body)
		switch {
		case err != nil:
			last = err.Error()
		case st == http.StatusOK && body["ready"] == true:
			s.set(CheckReadyz, true, "")
			return true
		default:
			last = fmt.Sprintf("status %d: %s", st, compact(body))
		}
		if time.Now().After(deadline) || !sleep(ctx, secs(s.cfg.PollSec)) {
			s.set(CheckReadyz, false, fmt.Sprintf("not ready within %gs; last answer: %s", s.cfg.ReadyTimeoutSec, last))
			return false
		}
	}
}

// seed posts /event views (round 0) and clicks (later rounds) for seed users and items.
func (s *runner) seed(ctx context.Context) {
	var errs []string
	for round := 0; round < s.cfg.SeedRounds; round++ {
		typ := "click"
		if round == 0 {
			typ = "view"
		}
		for u := 0; u < s.cfg.SeedUsers; u++ {
			for i := 0; i < s.cfg.SeedItems; i++ {
				body := map[string]any{"event_id": "smoke-" + randomHex(12), "user_id": "seed-user-" + strconv.Itoa(u),
					"item_id": "seed-item-" + strconv.Itoa(i), "event_type": typ, "ts": time.Now().UnixMilli()}
				var out map[string]any
				st, err := s.c.postJSON(ctx, "/event", body, &out)
				if err == nil && st == http.StatusOK && (out["status"] == "ok" || out["status"] == "duplicate") {
					s.r.SeededEvents++
				} else if len(errs) < 3 {
					errs = append(errs, describe(st, err, out))
				}
			}
		}
	}
	detail := ""
	if len(errs) > 0 {
		detail = "rejected: " + strings.Join(errs, "; ")
	}
	s.set(CheckSeedEvents, s.r.SeededEvents > 0, detail)
	if s.r.SeededEvents > 0 {
		s.waitSeedVisible(ctx)
	}
}

// waitSeedVisible waits until /reco lists something for a user without history: /event goes
// through the outbox, Kafka and the consumer, so a fresh stack serves empty lists until the
// seeds are applied, and the traffic step would then have nothing to watch. (A seed user is
// no probe: every seeded item is in its own history, and /reco excludes those.)
func (s *runner) waitSeedVisible(ctx context.Context) {
	start := time.Now()
	deadline := start.Add(secs(s.cfg.ConsumerTimeoutSec))
	wait := 50 * time.Millisecond
	for {
		reco, st, err := s.c.reco(ctx, "smoke-"+s.run+"-cold-user", "smoke-"+s.run+"-seed-session", 5, false)
		if err == nil && st == http.StatusOK && len(reco.Items) > 0 {
			ms := time.Since(start).Milliseconds()
			s.r.SeedVisibleAfterMs = &ms
			return
		}
		if time.Now().After(deadline) || !sleep(ctx, wait) {
			s.r.Details[CheckSeedEvents] = strings.TrimSpace(s.r.Details[CheckSeedEvents] + fmt.Sprintf(" seeded events not visible in /reco within %gs", s.cfg.ConsumerTimeoutSec))
			return
		}
		wait = min(wait*2, secs(s.cfg.PollSec))
	}
}

// traffic sends /reco requests and watches the first item of each non-empty answer. The
// original's users (smoke-user-<idx mod 5>) are named per run here: the original served
// watched items again, recsys excludes them, and on a small stack (recsys dev) the same five
// users had watched every item by the third run, so every answer was empty and the check
// failed with nothing wrong.
func (s *runner) traffic(ctx context.Context) {
	var recoErrs, watchErrs []string
	for idx := 0; idx < s.cfg.RecoRequests; idx++ {
		user := "smoke-user-" + s.run + "-" + strconv.Itoa(idx%5)
		session := "smoke-session-" + s.run + "-" + strconv.Itoa(idx)
		reco, st, err := s.c.reco(ctx, user, session, 5, true)
		if err != nil || st != http.StatusOK {
			if len(recoErrs) < 3 {
				recoErrs = append(recoErrs, describe(st, err, nil))
			}
			continue
		}
		s.r.Traffic.RecoOK++
		if len(reco.Items) == 0 {
			s.r.Traffic.EmptyReco++
			continue
		}
		ok, d := s.c.watch(ctx, watchBody("smoke-"+randomHex(12), user, session, reco.RequestID, reco.Items[0], 60, 95))
		if ok {
			s.r.Traffic.WatchOK++
		} else if len(watchErrs) < 3 {
			watchErrs = append(watchErrs, d)
		}
	}
	s.set(CheckRecoTraffic, s.r.Traffic.RecoOK >= 1, joinErrs(recoErrs))
	wd := joinErrs(watchErrs)
	if s.r.Traffic.RecoOK > 0 && s.r.Traffic.RecoOK == s.r.Traffic.EmptyReco {
		wd = "every /reco answer was empty, so nothing was watched"
	}
	s.set(CheckWatchTraffic, s.r.Traffic.WatchOK >= 1, wd)
}

func joinErrs(e []string) string {
	if len(e) == 0 {
		return ""
	}
	return "errors: " + strings.Join(e, "; ")
}

func watchBody(eventID, user, session, requestID, item string, watchSec, pct float64) map[string]any {
	return map[string]any{"event_id": eventID, "user_id": user, "session_id": session, "request_id": requestID,
		"item_id": item, "ts_ms": time.Now().UnixMilli(), "watch_time_sec": watchSec, "percent_watched": pct, "ended": true}
}

// idempotency posts the same watch twice: the second must be a duplicate.
func (s *runner) idempotency(ctx context.Context) {
	body := watchBody("smoke-dup-"+s.run, "duplicate-check-user", "duplicate-check-session", "duplicate-check-request", "seed-item-0", 45, 90)
	var first, second map[string]any
	st1, err1 := s.c.postJSON(ctx, "/log/watch", body, &first)
	st2, err2 := s.c.postJSON(ctx, "/log/watch", body, &second)
	ok := err1 == nil && err2 == nil && st1 == 200 && st2 == 200 &&
		(first["status"] == "ok" || first["status"] == "duplicate") && second["status"] == "duplicate"
	detail := ""
	if !ok {
		detail = "first: " + describe(st1, err1, first) + "; second: " + describe(st2, err2, second) + ` (want 200 ok|duplicate, then 200 duplicate)`
	}
	s.set(CheckWatchIdempotency, ok, detail)
}

// consumer runs the consumer_applied probe described in the package doc.
func (s *runner) consumer(ctx context.Context) {
	p := &ConsumerProbe{User: "smoke-" + s.run + "-user", WatchedItem: "smoke-" + s.run + "-a", NeighbourItem: "smoke-" + s.run + "-b",
		ControlItem: "smoke-" + s.run + "-c", BaselineUser: "smoke-" + s.run + "-no-history"}
	s.r.Consumer = p
	fail := func(msg string) { s.set(CheckConsumerApplied, false, msg) }
	post := func(user, item string, tsMs int64) bool {
		b := watchBody("smoke-"+randomHex(12), user, "smoke-"+s.run+"-session", "smoke-"+s.run+"-seed", item, 90, 100)
		b["ts_ms"] = tsMs
		ok, d := s.c.watch(ctx, b)
		if !ok {
			fail("seeding watch of " + item + " rejected: " + d)
		}
		return ok
	}
	now := time.Now().UnixMilli()
	for h := 0; h < s.cfg.ConsumerHelpers; h++ {
		helper := fmt.Sprintf("smoke-%s-helper-%d", s.run, h)
		control := fmt.Sprintf("smoke-%s-control-%d", s.run, h)
		// A then B a second later: a co-visitation pair A–B in the helper's recent window.
		if !post(helper, p.WatchedItem, now-2000) || !post(helper, p.NeighbourItem, now-1000) || !post(control, p.ControlItem, now-1000) {
			return
		}
	}
	before, st, err := s.c.reco(ctx, p.User, "smoke-"+s.run+"-session", 20, false)
	if err != nil || st != 200 {
		fail("/reco of the probe user before the watch: " + describe(st, err, nil))
		return
	}
	p.ListBeforeWatch = before.Items
	p.NeighbourRankBefore = rank(without(before.Items, p.WatchedItem), p.NeighbourItem)
	b := watchBody("smoke-"+randomHex(12), p.User, "smoke-"+s.run+"-session", "smoke-"+s.run+"-probe", p.WatchedItem, 120, 100)
	if ok, d := s.c.watch(ctx, b); !ok {
		fail("probe watch rejected: " + d)
		return
	}
	watched := time.Now()
	deadline := watched.Add(secs(s.cfg.ConsumerTimeoutSec))
	// Poll faster than --poll-sec at first: the pipeline's target is well under a second.
	wait := 50 * time.Millisecond
	last := ""
	for {
		p.Polls++
		reco, st, err := s.c.reco(ctx, p.User, "smoke-"+s.run+"-session", 20, false)
		var base recoResponse
		if err == nil && st == 200 {
			// The baseline is read right after the probe, so both see the same global lists.
			base, st, err = s.c.reco(ctx, p.BaselineUser, "smoke-"+s.run+"-baseline-session", 20, false)
		}
		if err == nil && st == 200 {
			p.ListAfter, p.BaselineList = reco.Items, base.Items
			p.WatchedExcluded = !slices.Contains(reco.Items, p.WatchedItem)
			p.NeighbourRank, p.ControlRank = rank(reco.Items, p.NeighbourItem), rank(reco.Items, p.ControlItem)
			p.NeighbourRankBaseline = rank(without(base.Items, p.WatchedItem), p.NeighbourItem)
			p.NeighbourAboveControl = p.NeighbourRank != nil && (p.ControlRank == nil || *p.NeighbourRank < *p.ControlRank)
			// B must be in the list because of the watch: a list that ignores the watch (B
			// there through the global lists, or an exploration slot seeded per user, and A
			// never listed) ranks B no higher than before the watch or than for the baseline.
			// Those ranks leave A out: excluding A alone moves every item below it up one
			// place, which a stack without co-visitation also does.
			raised := p.NeighbourRank != nil && above(*p.NeighbourRank, p.NeighbourRankBefore) && above(*p.NeighbourRank, p.NeighbourRankBaseline)
			if p.WatchedExcluded && raised {
				ms := time.Since(watched).Milliseconds()
				p.VisibleAfterMs = &ms
				s.set(CheckConsumerApplied, true, fmt.Sprintf("after the watch of %s, /reco excluded it and ranked its neighbour %s at position %d, "+
					"against %s before the watch and %s for a user without history (within %d ms, %d polls)",
					p.WatchedItem, p.NeighbourItem, *p.NeighbourRank, rankText(p.NeighbourRankBefore), rankText(p.NeighbourRankBaseline), ms, p.Polls))
				return
			}
			last = fmt.Sprintf("watched item excluded=%t; neighbour at %s, before the watch %s, without history %s; list %v; list without history %v",
				p.WatchedExcluded, rankText(p.NeighbourRank), rankText(p.NeighbourRankBefore), rankText(p.NeighbourRankBaseline), reco.Items, base.Items)
		} else {
			last = describe(st, err, nil)
		}
		if time.Now().After(deadline) || !sleep(ctx, wait) {
			fail(fmt.Sprintf("the consumer's effect did not show in /reco within %gs (%d polls); last: %s", s.cfg.ConsumerTimeoutSec, p.Polls, last))
			return
		}
		wait = min(wait*2, secs(s.cfg.PollSec))
	}
}

// without returns items less item.
func without(items []string, item string) []string {
	return slices.DeleteFunc(slices.Clone(items), func(it string) bool { return it == item })
}

// above reports whether position r is higher in a list than other (nil: absent).
func above(r int, other *int) bool { return other == nil || r < *other }

func rankText(r *int) string {
	if r == nil {
		return "absent"
	}
	return "position " + strconv.Itoa(*r)
}

func rank(items []string, item string) *int {
	if i := slices.Index(items, item); i >= 0 {
		return &i
	}
	return nil
}

// outbox polls /healthz until the outbox snapshot shows no dead row and at most
// --max-outbox-pending pending + publishing rows.
func (s *runner) outbox(ctx context.Context) {
	deadline := time.Now().Add(secs(s.cfg.OutboxTimeoutSec))
	last := ""
	for {
		var body map[string]any
		st, err := s.c.getJSON(ctx, "/healthz", &body)
		if err == nil && st == 200 {
			eb, _ := body["event_backbone"].(map[string]any)
			snap := eb["outbox"]
			s.r.OutboxSnapshot = snap
			if m, ok := snap.(map[string]any); ok {
				pending, p1 := outboxCount(m, "pending")
				publishing, p2 := outboxCount(m, "publishing")
				dead, p3 := outboxCount(m, "dead")
				switch {
				case !p1 || !p2 || !p3:
					last = "outbox snapshot lacks pending/publishing/dead counts: " + compact(m)
				case dead == 0 && pending+publishing <= float64(s.cfg.MaxOutboxPending):
					s.set(CheckOutboxSettled, true, "")
					return
				default:
					last = fmt.Sprintf("pending=%g publishing=%g dead=%g", pending, publishing, dead)
				}
			} else {
				last = "healthz has no event_backbone.outbox snapshot: " + compact(body["event_backbone"])
			}
		} else {
			last = describe(st, err, body)
		}
		if time.Now().After(deadline) || !sleep(ctx, secs(s.cfg.PollSec)) {
			s.set(CheckOutboxSettled, false, fmt.Sprintf("outbox not settled within %gs (dead must be 0, pending+publishing <= %d); last: %s",
				s.cfg.OutboxTimeoutSec, s.cfg.MaxOutboxPending, last))
			return
		}
	}
}

// outboxCount reads a count from the snapshot, at the top level or under "counts".
func outboxCount(m map[string]any, key string) (float64, bool) {
	if v, ok := m[key].(float64); ok {
		return v, true
	}
	if c, ok := m["counts"].(map[string]any); ok {
		if v, ok := c[key].(float64); ok {
			return v, true
		}
	}
	return 0, false
}

func (s *runner) recoMetrics(ctx context.Context) {
	var body map[string]any
	st, err := s.c.getJSON(ctx, "/metrics/reco", &body)
	if err != nil || st != 200 {
		s.set(CheckRecoMetricsSamples, false, describe(st, err, body))
		return
	}
	n, ok := body["sample_size"].(float64)
	if ok {
		s.r.RecoMetricsSampleSize = &n
	}
	s.set(CheckRecoMetricsSamples, ok && n > 0, map[bool]string{true: "", false: "sample_size is not > 0: " + compact(body)}[ok && n > 0])
}

// client is the small HTTP client of the probe.
type client struct {
	http    *http.Client
	base    string
	timeout time.Duration
	apiKey  string
}

type recoResponse struct {
	RequestID string   `json:"request_id"`
	Items     []string `json:"items"`
}

func (c *client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	apikey.Set(req, c.apiKey)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, unwrapURL(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if hint := c.authHint(resp.StatusCode); hint != "" {
		// An error, not a status: every check then reports the cause instead of an
		// unexplained 401 in the middle of its own message.
		return resp.StatusCode, fmt.Errorf("%s %s: status %d %s: %s", method, path, resp.StatusCode, truncate(string(b), 100), hint)
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: status %d, body is not the expected JSON: %s", method, path, resp.StatusCode, truncate(string(b), 200))
		}
	}
	return resp.StatusCode, nil
}

// authHint explains a 401 or 403 (pkg/apikey).
func (c *client) authHint(status int) string {
	return apikey.Hint(status, c.apiKey, "smoke needs both client and ops")
}

func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (c *client) getJSON(ctx context.Context, path string, out any) (int, error) {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

func (c *client) postJSON(ctx context.Context, path string, in, out any) (int, error) {
	return c.do(ctx, http.MethodPost, path, in, out)
}

func (c *client) reco(ctx context.Context, user, session string, k int, autolog bool) (recoResponse, int, error) {
	q := url.Values{"user_id": {user}, "session_id": {session}, "k": {strconv.Itoa(k)}, "x_autolog_impressions": {strconv.FormatBool(autolog)}}
	var out recoResponse
	st, err := c.getJSON(ctx, "/reco?"+q.Encode(), &out)
	return out, st, err
}

// watch posts a watch; accepted means 200 with status ok or duplicate.
func (c *client) watch(ctx context.Context, body map[string]any) (bool, string) {
	var out map[string]any
	st, err := c.postJSON(ctx, "/log/watch", body, &out)
	if err == nil && st == 200 && (out["status"] == "ok" || out["status"] == "duplicate") {
		return true, ""
	}
	return false, describe(st, err, out)
}

func describe(status int, err error, body any) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("status %d %s", status, compact(body))
}

func compact(v any) string {
	if v == nil {
		return "null"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return truncate(string(b), 300)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// WriteJSON writes the report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
