// Package analytics is the KPI module of the api role: GET /analytics/baseline?days=N
// (api-contract §2.15, §9.4) with honest definitions, kept fast on large tables by
// incremental roll-ups.
//
// Definitions (also returned in the response): the window is [now - days, now] by the API's
// receive time (server_received_ts_ms), never the client's clock. An impression row is
// watched when the same user watches the same item within --analytics.attribution-window
// (30 min) after it, request_id match not required, and before the item is shown to that user
// again (last-touch: a watch makes at most one impression watched). CTR@20 = watched
// impressions at positions < 20 / impressions at positions < 20. Coverage@20 = items shown at a
// position < 20 / items active in the window (shown at any position or watched), so at most
// 100 %. avg_watch_time_sec is the mean over every watch received in the window, each counted at
// most features.MaxWatchTimeSec.
//
// Speed: a worker (Run) folds raw rows into roll-ups (migrations/0005): additive counters per
// 5-minute bucket, and last-seen times per item and per request, which give exact distinct
// counts for any window that ends now. It stays attribution window + --analytics.commit-margin
// behind the clock, so every watch that can be attributed to a folded impression is already
// committed; several API processes share the work through a row lock (SKIP LOCKED). A request
// reads the buckets, counts last-seen rows with index range scans, and reads raw rows only
// for the first partial bucket of the window and the unfolded tail, so its cost does not grow
// with days. The roll-ups are rebuilt from the raw rows when a definition changes, once no
// process has folded them with the old definitions for 10 roll-up intervals (a rolling deploy
// runs both; meanwhile the processes with the new ones read raw rows); rows older than
// --analytics.retention are pruned.
//
// Metrics:
//
//	recsys_analytics_baseline_duration_seconds     histogram: GET /analytics/baseline computation
//	recsys_analytics_baseline_errors_total         counter: requests that failed or found no turn (503)
//	recsys_analytics_rollup_fold_duration_seconds  histogram: one fold transaction
//	recsys_analytics_rollup_rows_total             counter: raw rows folded
//	recsys_analytics_rollup_errors_total           counter: failed folds (retried next interval)
//	recsys_analytics_rollup_rebuilds_total         counter: roll-ups cleared after a definition change
//	recsys_analytics_rollup_other_definitions_total counter: folds skipped, another process folds with other definitions
//	recsys_analytics_rollup_lag_seconds            gauge: now - watermark (the raw tail a request reads)
//
// Concurrency: at most --analytics.max-concurrent baselines are computed at once per process
// (each holds a PostgreSQL connection of the pool the event writers share); the others wait
// for a turn within --analytics.query-timeout, then answer 503 with Retry-After.
//
// Readiness: ready once Run has started; a failing roll-up only makes requests read more raw
// rows, it never makes the answers wrong. PostgreSQL is an optional need (see modules/ingest):
// while it is down GET /analytics/baseline answers 503 and the folds retry.
package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/kpi"
	"recsys/pkg/module"
	"recsys/pkg/openapi"
)

func init() {
	newCfg, build := module.Typed(NewConfig, New)
	module.Register(module.Info{
		Name:      "analytics",
		Summary:   "GET /analytics/baseline: KPI snapshot from incremental roll-ups of the raw events",
		Needs:     infra.Postgres,
		Optional:  infra.Postgres,
		NewConfig: newCfg,
		New:       build,
	})
}

// Analytics serves the KPI snapshot and keeps its roll-ups.
type Analytics struct {
	cfg  *Config
	pool *pgxpool.Pool
	log  *slog.Logger
	m    *analyticsMetrics
	now  func() time.Time
	// slots holds a token per baseline being computed (--analytics.max-concurrent): each
	// holds a connection of the pool the event writers share, and a dashboard's viewers or a
	// client in a loop asking at once took all of them, so /log/* answered 503.
	slots     chan struct{}
	watermark atomic.Int64 // last known, for the lag gauge; 0 before the first fold
	otherLog  time.Time    // last warning about other definitions (Run's goroutine only)
}

var (
	_ module.Module         = (*Analytics)(nil)
	_ module.RouteRegistrar = (*Analytics)(nil)
	_ module.APIDescriber   = (*Analytics)(nil)
)

// New wires the module.
func New(cfg *Config, d infra.Deps) (module.Module, error) {
	if d.PG == nil {
		return nil, errors.New("analytics needs PostgreSQL")
	}
	a := &Analytics{cfg: cfg, pool: d.PG, log: d.Log, m: newMetrics(d.Metrics), now: time.Now, slots: make(chan struct{}, max(cfg.MaxConcurrent, 1))}
	d.Metrics.NewGauge("recsys_analytics_rollup_lag_seconds", func() float64 {
		w := a.watermark.Load()
		if w == 0 {
			return -1
		}
		return float64(a.now().UnixMilli()-w) / 1000
	})
	return a, nil
}

// RegisterRoutes mounts GET /analytics/baseline.
func (a *Analytics) RegisterRoutes(e *echo.Echo) {
	e.GET("/analytics/baseline", a.baseline)
}

// DescribeAPI adds GET /analytics/baseline to the OpenAPI document.
func (a *Analytics) DescribeAPI(d *openapi.Document) {
	d.Add(http.MethodGet, "/analytics/baseline", openapi.Operation{Tags: []string{"analytics"}, Summary: "KPI snapshot",
		Description: "metrics.definitions states each KPI's definition.",
		Parameters: []openapi.Parameter{openapi.QueryParam("days", false, "Window length, ending now",
			&openapi.Schema{Type: "integer", Default: daysDefault, Minimum: openapi.Float(daysMin), Maximum: openapi.Float(daysMax)})},
		Responses: map[string]openapi.Response{
			"200": openapi.JSONResponse("Successful Response", openapi.Of(baselineResponse{})),
			"422": openapi.ValidationErrorResponse(),
			"503": openapi.ErrorResponse("The KPI baseline could not be computed (database unavailable or too slow, or --analytics.max-concurrent others computed meanwhile)"),
		}})
}

// baselineResponse is GET /analytics/baseline's body.
type baselineResponse struct {
	KPITargets kpi.Targets `json:"kpi_targets"`
	Metrics    Metrics     `json:"metrics"`
}

// Run folds the raw rows into the roll-ups until ctx ends.
func (a *Analytics) Run(ctx context.Context) error {
	d := a.cfg.definitions()
	lastPrune := time.Time{}
	for {
		start := time.Now()
		res, err := foldStep(ctx, a.pool, d, a.now().UnixMilli(), a.cfg.lag().Milliseconds(), a.cfg.RollupStep.Milliseconds(), a.cfg.rebuildGrace())
		a.m.foldDuration.UpdateDuration(start)
		wait := a.cfg.RollupInterval
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			a.m.foldErrors.Inc()
			a.log.WarnContext(ctx, "analytics roll-up failed; requests read raw rows meanwhile, retrying", "err", err, "retry_in_s", wait.Seconds())
		default:
			if res.Rebuilt {
				a.m.rebuilds.Inc()
				a.log.InfoContext(ctx, "analytics definitions changed, rebuilding roll-ups from raw rows")
			}
			if res.OtherDefs {
				a.m.otherDefs.Inc()
				if time.Since(a.otherLog) > 10*time.Minute {
					a.otherLog = time.Now()
					a.log.WarnContext(ctx, "another process folds the analytics roll-ups with other definitions; requests read raw rows until it stops",
						"definitions", d.String(), "rebuild_after_idle_s", a.cfg.rebuildGrace().Seconds())
				}
			}
			a.m.foldedRows.Add(int(res.Rows))
			if !res.Busy {
				a.watermark.Store(res.Watermark)
			}
			// Only a step that moved the watermark may be followed at once: one that did not
			// would repeat itself in a loop against PostgreSQL.
			if !res.Busy && !res.CaughtUp && res.To > res.From {
				wait = 0 // catching up: fold the next step at once
			}
		}
		if time.Since(lastPrune) > time.Hour {
			if n, err := prune(ctx, a.pool, a.now().Add(-a.cfg.Retention).UnixMilli(), 5000); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				a.log.WarnContext(ctx, "analytics roll-up pruning failed, retrying next hour", "err", err)
			} else if n > 0 {
				a.log.InfoContext(ctx, "analytics roll-ups pruned", "rows", n)
			}
			lastPrune = time.Now()
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		} else if ctx.Err() != nil {
			return nil
		}
	}
}

func (a *Analytics) baseline(c echo.Context) error {
	q := httpx.LastQueryParam(c.Request().URL.RawQuery, "days")
	if q.Undecodable {
		return echo.NewHTTPError(http.StatusUnprocessableEntity, []events.FieldError{{Type: "value_error", Loc: []any{"query", "days"},
			Msg: httpx.UndecodableQueryMsg, Input: strings.ToValidUTF8(q.Raw, "\uFFFD")}})
	}
	var vals []string
	if q.Found {
		vals = []string{q.Value}
	}
	days, verr := parseDays(vals)
	if verr != nil {
		return echo.NewHTTPError(http.StatusUnprocessableEntity, []events.FieldError{*verr})
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), a.cfg.QueryTimeout)
	defer cancel()
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-ctx.Done():
		// No cause to log: a busy answer is expected when many ask at once.
		a.m.baselineErrors.Inc()
		c.Response().Header().Set("Retry-After", "1")
		return echo.NewHTTPError(http.StatusServiceUnavailable, fmt.Sprintf("busy: %d KPI baselines were being computed for all of --analytics.query-timeout (%s); retry later",
			cap(a.slots), a.cfg.QueryTimeout))
	}
	start := time.Now()
	now := a.now().UnixMilli()
	var m Metrics
	err := pgx.BeginTxFunc(ctx, a.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		m, err = Compute(ctx, tx, now-int64(days)*24*3600*1000, now, a.cfg.definitions())
		return err
	})
	a.m.baselineDuration.UpdateDuration(start)
	if err != nil {
		a.m.baselineErrors.Inc()
		return echo.NewHTTPError(http.StatusServiceUnavailable, "failed to compute the KPI baseline").SetInternal(err)
	}
	m.WindowDays = days
	m.ComputedInMs = round3(float64(time.Since(start).Microseconds()) / 1000)
	return c.JSON(http.StatusOK, baselineResponse{KPITargets: kpi.ContractTargets, Metrics: m})
}

// The contract's rule for days.
const (
	daysDefault = 7
	daysMin     = 1
	daysMax     = 30
)

// parseDays applies the contract's rule (int, default 7, 1..30) with pydantic's lax integer
// syntax and messages: the original answered days=7.0 or days=1_0 (dashboards and scripts may
// send either), so they are not a 422 here.
func parseDays(vals []string) (int, *events.FieldError) {
	if len(vals) == 0 {
		return daysDefault, nil
	}
	raw := vals[len(vals)-1] // the last of a repeated parameter, as Starlette does
	n, typ := events.LaxInt(raw)
	if typ == "int_parsing_size" {
		// Python's ints have no size limit: pydantic parses it and reports the bound it breaks.
		typ, n = "", daysMax+1
		if strings.HasPrefix(strings.TrimSpace(raw), "-") {
			n = daysMin - 1
		}
	}
	loc := []any{"query", "days"}
	switch {
	case typ != "":
		return 0, &events.FieldError{Type: typ, Loc: loc, Msg: events.LaxMessage(typ), Input: raw}
	case n < daysMin:
		return 0, &events.FieldError{Type: "greater_than_equal", Loc: loc, Msg: fmt.Sprintf("Input should be greater than or equal to %d", daysMin), Input: raw, Ctx: map[string]any{"ge": daysMin}}
	case n > daysMax:
		return 0, &events.FieldError{Type: "less_than_equal", Loc: loc, Msg: fmt.Sprintf("Input should be less than or equal to %d", daysMax), Input: raw, Ctx: map[string]any{"le": daysMax}}
	}
	return int(n), nil
}

// String is for logs.
func (d Definitions) String() string {
	return fmt.Sprintf("attribution=%dms bucket=%dms top=%d", d.AttributionWindowMs, d.BucketMs, d.TopN)
}
