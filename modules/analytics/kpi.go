package analytics

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/features"
)

// querier is what the KPI SQL needs: a pool, a connection or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Definitions are the parameters of the KPI definitions. Roll-ups computed with other
// definitions are rebuilt.
type Definitions struct {
	AttributionWindowMs int64 // a watch within this long after an impression can make it "watched"
	BucketMs            int64 // roll-up bucket width
	TopN                int   // CTR@N and coverage@N consider positions < TopN
}

// counters are the additive KPI inputs of a time range.
type counters struct {
	Impressions           int64
	ImpressionsAtN        int64
	WatchedImpressions    int64
	WatchedImpressionsAtN int64
	Watches               int64
	WatchTimeSumSec       float64
	// Keys whose last sighting is in the bucket (roll-up only; see migrations/0005).
	RequestsLastSeen      int64
	ItemsLastActive       int64
	ItemsLastShownAtN     int64
	ImpressionRowsScanned int64 // raw impression rows read (window edges), for the response's cost figure
	WatchRowsScanned      int64
	bucketsFromRollup     int64
}

func (c *counters) add(o counters) {
	c.Impressions += o.Impressions
	c.ImpressionsAtN += o.ImpressionsAtN
	c.WatchedImpressions += o.WatchedImpressions
	c.WatchedImpressionsAtN += o.WatchedImpressionsAtN
	c.Watches += o.Watches
	c.WatchTimeSumSec += o.WatchTimeSumSec
	c.RequestsLastSeen += o.RequestsLastSeen
	c.ItemsLastActive += o.ItemsLastActive
	c.ItemsLastShownAtN += o.ItemsLastShownAtN
	c.ImpressionRowsScanned += o.ImpressionRowsScanned
	c.WatchRowsScanned += o.WatchRowsScanned
}

// openEnd stands for "no upper bound" in raw ranges; far enough that adding the attribution
// window cannot overflow.
const openEnd = math.MaxInt64 / 4

// impressionCountsSQL counts the impressions received in [$1, $2) per bucket of $3 ms: a range
// scan of impression_events_server_ts_brin (the view unnests each event's items), no sort.
const impressionCountsSQL = `
SELECT (server_received_ts_ms / $3::bigint) * $3::bigint AS bucket, count(*), count(*) FILTER (WHERE position < $4::int)
FROM impressions
WHERE server_received_ts_ms >= $1::bigint AND server_received_ts_ms < $2::bigint
GROUP BY 1`

// attributionPairsSQL lists, for every watch received in [$1, $2 + window), the impressions
// of the same user and item it could be attributed to: shown at most one window earlier,
// received in [$1, $2 + window). The last of them (by receive time, then event_id) is the
// watch's last touch; rawStats picks it (see migrations/0005 for the definition). An event is
// its user's event_id (two users' events may share an id, migration 0022): the watch and the
// impressions are told apart by user and id, and the join makes their users equal. A hash join
// of two receive-time ranges: the watches side is small, the impressions side is scanned once,
// whatever the planner believes about table sizes.
const attributionPairsSQL = `
SELECT w.user_id, w.event_id, i.event_id, i.position, i.server_received_ts_ms
FROM watches w
JOIN impressions i ON i.user_id = w.user_id AND i.item_id = w.item_id
WHERE w.server_received_ts_ms >= $1::bigint AND w.server_received_ts_ms < $2::bigint + $3::bigint
  AND i.server_received_ts_ms >= $1::bigint AND i.server_received_ts_ms < $2::bigint + $3::bigint
  AND i.server_received_ts_ms <= w.server_received_ts_ms
  AND w.server_received_ts_ms < i.server_received_ts_ms + $3::bigint`

// Each watch counts at most $4 seconds (features.MaxWatchTimeSec): watch_time_sec has no upper
// bound on the wire, and a float8 sum that overflows is an error, which would fail every
// baseline and every fold over the watch.
const watchStatsSQL = `
SELECT (server_received_ts_ms / $3::bigint) * $3::bigint AS bucket, count(*), COALESCE(sum(LEAST(watch_time_sec, $4::float8)), 0)
FROM watches
WHERE server_received_ts_ms >= $1::bigint AND server_received_ts_ms < $2::bigint
GROUP BY 1`

// impressionKey is one shown item: the event's user and id, and the item's position.
type impressionKey struct {
	user, eventID string
	position      int64
}

// watchKey is one watch: its user and id.
type watchKey struct{ user, eventID string }

type touch struct {
	key impressionKey
	srv int64
}

// later orders touches by receive time, then event_id (the tie-break of two impressions of
// one item received in the same millisecond).
func (t touch) later(o touch) bool {
	return t.srv > o.srv || (t.srv == o.srv && t.key.eventID > o.key.eventID)
}

// rawStats computes the counters of [a, b) from the raw rows, per bucket.
func rawStats(ctx context.Context, q querier, a, b int64, d Definitions) (map[int64]*counters, error) {
	out := map[int64]*counters{}
	get := func(bucket int64) *counters {
		c := out[bucket]
		if c == nil {
			c = &counters{}
			out[bucket] = c
		}
		return c
	}
	if b <= a {
		return out, nil
	}
	rows, err := q.Query(ctx, impressionCountsSQL, a, b, d.BucketMs, d.TopN)
	if err != nil {
		return nil, fmt.Errorf("query impression counts: %w", err)
	}
	for rows.Next() {
		var bucket int64
		var c counters
		if err := rows.Scan(&bucket, &c.Impressions, &c.ImpressionsAtN); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan impression counts: %w", err)
		}
		c.ImpressionRowsScanned = c.Impressions
		get(bucket).add(c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query impression counts: %w", err)
	}

	// Last touch of each watch, then the impressions of [a, b) that are someone's last touch.
	rows, err = q.Query(ctx, attributionPairsSQL, a, b, d.AttributionWindowMs)
	if err != nil {
		return nil, fmt.Errorf("query attribution pairs: %w", err)
	}
	last := map[watchKey]touch{}
	for rows.Next() {
		var w watchKey
		var t touch
		if err := rows.Scan(&w.user, &w.eventID, &t.key.eventID, &t.key.position, &t.srv); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan attribution pairs: %w", err)
		}
		t.key.user = w.user // the join's: the impression's user is the watch's
		if cur, ok := last[w]; !ok || t.later(cur) {
			last[w] = t
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query attribution pairs: %w", err)
	}
	watched := map[impressionKey]touch{}
	for _, t := range last {
		if t.srv >= a && t.srv < b {
			watched[t.key] = t
		}
	}
	for k, t := range watched {
		c := get(floorDiv(t.srv, d.BucketMs) * d.BucketMs)
		c.WatchedImpressions++
		if k.position < int64(d.TopN) {
			c.WatchedImpressionsAtN++
		}
	}

	rows, err = q.Query(ctx, watchStatsSQL, a, b, d.BucketMs, features.MaxWatchTimeSec)
	if err != nil {
		return nil, fmt.Errorf("query watch stats: %w", err)
	}
	for rows.Next() {
		var bucket int64
		var c counters
		if err := rows.Scan(&bucket, &c.Watches, &c.WatchTimeSumSec); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan watch stats: %w", err)
		}
		c.WatchRowsScanned = c.Watches
		get(bucket).add(c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query watch stats: %w", err)
	}
	return out, nil
}

func sumBuckets(m map[int64]*counters) counters {
	var c counters
	for _, v := range m {
		c.add(*v)
	}
	return c
}

// Metrics is the KPI snapshot of GET /analytics/baseline: the contract's fields first, then
// the figures behind them and the definitions used.
type Metrics struct {
	WindowDays             int     `json:"window_days"`
	Requests               int64   `json:"requests"`
	Impressions            int64   `json:"impressions"`
	Watches                int64   `json:"watches"`
	WatchedImpressions     int64   `json:"watched_impressions"`
	CTRAt20Pct             float64 `json:"ctr_at_20_pct"`
	AvgWatchTimeSec        float64 `json:"avg_watch_time_sec"`
	CatalogCoverageAt20Pct float64 `json:"catalog_coverage_at_20_pct"`
	ImpressionsAt20        int64   `json:"impressions_at_20"`
	WatchedImpressionsAt20 int64   `json:"watched_impressions_at_20"`
	ActiveItems            int64   `json:"active_items"`
	ItemsShownAt20         int64   `json:"items_shown_at_20"`
	WindowStartMs          int64   `json:"window_start_ms"`
	WindowEndMs            int64   `json:"window_end_ms"`
	TimeBasis              string  `json:"time_basis"`
	AttributionWindowSec   float64 `json:"attribution_window_sec"`
	Attribution            string  `json:"attribution"`
	Definitions            Defs    `json:"definitions"`
	RollupWatermarkMs      *int64  `json:"rollup_watermark_ms"`
	RawImpressionRowsRead  int64   `json:"raw_impression_rows_read"`
	RawWatchRowsRead       int64   `json:"raw_watch_rows_read"`
	RollupBucketsRead      int64   `json:"rollup_buckets_read"`
	ComputedInMs           float64 `json:"computed_in_ms"`
}

// Defs documents each KPI in the response itself, so nobody reads a number with the wrong
// definition in mind.
type Defs struct {
	CTR      string `json:"ctr_at_20_pct"`
	Coverage string `json:"catalog_coverage_at_20_pct"`
	Watches  string `json:"watches"`
	Requests string `json:"requests"`
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func pct(num, den int64) float64 {
	if den == 0 {
		return 0
	}
	return round3(float64(num) / float64(den) * 100)
}

// The distinct keys seen in [S, now] are those the roll-up counts (bucket counters, see
// Compute) plus the keys of the raw rows received since E = max(S, W) that the roll-up does not
// already count as seen since S. The check is a scalar subquery on purpose: a NOT EXISTS
// becomes a hash anti-join that reads the whole activity table when S is far back (measured:
// 0.9 s against 15 ms for 500,000 requests), while this form probes the primary key once per
// tail key.
const (
	tailItemsSQL = `
SELECT count(*) FROM (
    SELECT item_id FROM impressions WHERE server_received_ts_ms >= $2::bigint
    UNION
    SELECT item_id FROM watches WHERE server_received_ts_ms >= $2::bigint) t
WHERE COALESCE((SELECT a.last_active_ms FROM analytics_item_activity a WHERE a.item_id = t.item_id), -1) < $1::bigint`
	tailShownItemsSQL = `
SELECT count(*) FROM (
    SELECT DISTINCT item_id FROM impressions WHERE server_received_ts_ms >= $2::bigint AND position < $3::int) t
WHERE COALESCE((SELECT a.last_shown_at_20_ms FROM analytics_item_activity a WHERE a.item_id = t.item_id), -1) < $1::bigint`
	tailRequestsSQL = `
SELECT count(*) FROM (
    SELECT DISTINCT request_id FROM impressions WHERE server_received_ts_ms >= $2::bigint) t
WHERE COALESCE((SELECT a.last_seen_ms FROM analytics_request_activity a WHERE a.request_id = t.request_id), -1) < $1::bigint`
	// Sums from the bucket of S ($1) to the watermark ($3); the additive counters only from
	// the first whole bucket ($2), the raw head covering the rest.
	bucketsSQL = `
SELECT count(*) FILTER (WHERE bucket_ms >= $2::bigint),
       COALESCE(sum(impressions) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(impressions_at_20) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(watched_impressions) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(watched_impressions_at_20) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(watches) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(watch_time_sum_sec) FILTER (WHERE bucket_ms >= $2::bigint), 0),
       COALESCE(sum(requests_last_seen), 0), COALESCE(sum(items_last_active), 0), COALESCE(sum(items_last_shown_at_20), 0)
FROM analytics_kpi_buckets WHERE bucket_ms >= $1::bigint AND bucket_ms < $3::bigint`
	// Keys last seen in S's bucket but before S: counted by the bucket sums, not in the window.
	headKeysSQL = `
SELECT (SELECT count(*) FROM analytics_request_activity WHERE last_seen_ms >= $1::bigint AND last_seen_ms < $2::bigint),
       (SELECT count(*) FROM analytics_item_activity WHERE last_active_ms >= $1::bigint AND last_active_ms < $2::bigint),
       (SELECT count(*) FROM analytics_item_activity WHERE last_shown_at_20_ms >= $1::bigint AND last_shown_at_20_ms < $2::bigint)`
)

// customPlans makes PostgreSQL plan every statement of the transaction for its actual
// parameters: a cached generic plan cannot know that a time range covers five minutes or
// thirty days, and a sequential scan of a large raw table is its typical guess.
func customPlans(ctx context.Context, q querier) error {
	if _, err := q.Exec(ctx, "SET LOCAL plan_cache_mode = force_custom_plan"); err != nil {
		return fmt.Errorf("set plan_cache_mode: %w", err)
	}
	return nil
}

// state is the roll-up state row.
type state struct {
	Watermark *int64
	Defs      Definitions
	Age       time.Duration // since the last fold, by the database's clock
}

func readState(ctx context.Context, q querier, forUpdate bool) (state, bool, error) {
	sql := `SELECT watermark_ms, attribution_window_ms, bucket_ms, top_n, extract(epoch FROM now() - updated_at)::float8 FROM analytics_rollup_state WHERE id = 1`
	if forUpdate {
		// SKIP LOCKED: another process is folding right now; it will do the work.
		sql += ` FOR UPDATE SKIP LOCKED`
	}
	var s state
	var age float64
	err := q.QueryRow(ctx, sql).Scan(&s.Watermark, &s.Defs.AttributionWindowMs, &s.Defs.BucketMs, &s.Defs.TopN, &age)
	s.Age = time.Duration(age * float64(time.Second))
	if err == pgx.ErrNoRows {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, fmt.Errorf("read analytics roll-up state: %w", err)
	}
	return s, true, nil
}

// Compute returns the KPI snapshot of [start, now]. q should be a REPEATABLE READ transaction
// so the roll-ups and the watermark are read as of one instant. Roll-ups computed with other
// definitions are ignored (everything is then read raw) until the worker has rebuilt them.
func Compute(ctx context.Context, q querier, start, now int64, d Definitions) (Metrics, error) {
	if err := customPlans(ctx, q); err != nil {
		return Metrics{}, err
	}
	st, ok, err := readState(ctx, q, false)
	if err != nil {
		return Metrics{}, err
	}
	// W: every raw row received before it is in the roll-ups. Without usable roll-ups, W is
	// -inf: the whole window is read raw and the roll-up tables count nothing (>= a start
	// after every last-seen time they could hold is ensured by passing start = +inf to them).
	useRollup := ok && st.Watermark != nil && st.Defs == d
	w := int64(math.MinInt64 / 4)
	if useRollup {
		w = *st.Watermark
	}
	var c counters
	m := Metrics{WindowStartMs: start, WindowEndMs: now}
	if useRollup && start < w {
		floor := floorDiv(start, d.BucketMs) * d.BucketMs // bucket of the window's start
		first := ceilDiv(start, d.BucketMs) * d.BucketMs  // first whole bucket of the window
		head, err := rawStats(ctx, q, start, min(first, w), d)
		if err != nil {
			return Metrics{}, err
		}
		c.add(sumBuckets(head))
		var rc counters
		if err := q.QueryRow(ctx, bucketsSQL, floor, first, w).Scan(&rc.bucketsFromRollup, &rc.Impressions, &rc.ImpressionsAtN, &rc.WatchedImpressions,
			&rc.WatchedImpressionsAtN, &rc.Watches, &rc.WatchTimeSumSec, &m.Requests, &m.ActiveItems, &m.ItemsShownAt20); err != nil {
			return Metrics{}, fmt.Errorf("read kpi buckets: %w", err)
		}
		c.add(rc)
		var hr, ha, hs int64
		if err := q.QueryRow(ctx, headKeysSQL, floor, start).Scan(&hr, &ha, &hs); err != nil {
			return Metrics{}, fmt.Errorf("count keys of the first bucket: %w", err)
		}
		m.Requests, m.ActiveItems, m.ItemsShownAt20 = m.Requests-hr, m.ActiveItems-ha, m.ItemsShownAt20-hs
		m.RollupBucketsRead = rc.bucketsFromRollup
		wm := w
		m.RollupWatermarkMs = &wm
	}
	e := max(start, w)
	tail, err := rawStats(ctx, q, e, openEnd, d)
	if err != nil {
		return Metrics{}, err
	}
	c.add(sumBuckets(tail))

	seenFrom := start
	if !useRollup {
		seenFrom = openEnd // the activity tables are not usable: count raw keys only
	}
	var ti, ts, tr int64
	if err := q.QueryRow(ctx, tailItemsSQL, seenFrom, e).Scan(&ti); err != nil {
		return Metrics{}, fmt.Errorf("count active items: %w", err)
	}
	if err := q.QueryRow(ctx, tailShownItemsSQL, seenFrom, e, d.TopN).Scan(&ts); err != nil {
		return Metrics{}, fmt.Errorf("count items shown at top %d: %w", d.TopN, err)
	}
	if err := q.QueryRow(ctx, tailRequestsSQL, seenFrom, e).Scan(&tr); err != nil {
		return Metrics{}, fmt.Errorf("count requests: %w", err)
	}
	m.ActiveItems, m.ItemsShownAt20, m.Requests = m.ActiveItems+ti, m.ItemsShownAt20+ts, m.Requests+tr

	m.Impressions, m.ImpressionsAt20 = c.Impressions, c.ImpressionsAtN
	m.WatchedImpressions, m.WatchedImpressionsAt20 = c.WatchedImpressions, c.WatchedImpressionsAtN
	m.Watches = c.Watches
	m.CTRAt20Pct = pct(c.WatchedImpressionsAtN, c.ImpressionsAtN)
	if c.Watches > 0 {
		m.AvgWatchTimeSec = round3(c.WatchTimeSumSec / float64(c.Watches))
	}
	m.CatalogCoverageAt20Pct = pct(m.ItemsShownAt20, m.ActiveItems)
	m.RawImpressionRowsRead, m.RawWatchRowsRead = c.ImpressionRowsScanned, c.WatchRowsScanned
	m.TimeBasis = "server_received_ts_ms"
	m.AttributionWindowSec = float64(d.AttributionWindowMs) / 1000
	m.Attribution = fmt.Sprintf("an impression is watched when the same user watches the same item within %gs after it (request_id need not match) and before that item is shown to that user again; each watch makes at most one impression watched", m.AttributionWindowSec)
	m.Definitions = Defs{
		CTR:      fmt.Sprintf("watched impressions at positions < %d / impressions at positions < %d x 100", d.TopN, d.TopN),
		Coverage: fmt.Sprintf("distinct items shown at a position < %d / distinct items active (shown at any position or watched) x 100, both in the window", d.TopN),
		Watches:  "watches received in the window, attributed or not; avg_watch_time_sec is their mean watch_time_sec",
		Requests: "distinct request_id of the impressions received in the window",
	}
	return m, nil
}

// ceilDiv is the ceiling of a/b for b > 0, correct for negative a.
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a > 0 {
		q++
	}
	return q
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
