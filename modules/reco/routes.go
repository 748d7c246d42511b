package reco

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/httpx"
	"recsys/pkg/ranking"
)

// maxUserAgent is the contract's cut of the User-Agent stored with an auto-logged impression.
const maxUserAgent = 512

// RegisterRoutes mounts /reco, /recommend and /metrics/reco. The two list routes share one
// admission limit; /reco's is inside observe, so /metrics/reco counts what it sheds.
func (r *Reco) RegisterRoutes(e *echo.Echo) {
	// observe wraps the router's answer too: a 405 or OPTIONS on /reco is recorded.
	e.Use(r.observe)
	e.GET("/reco", r.reco, r.limit.Middleware)
	e.GET("/recommend", r.recommend, r.limit.Middleware)
	e.GET("/metrics/reco", r.metricsWindow)
}

// observe records every request on the path /reco, whatever its method (api-contract §2.1:
// a POST answered 405 counts as 4xx), in the window and the contract's Prometheus metrics.
// It writes error responses itself so the status it records is the one sent.
func (r *Reco) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.Request().URL.Path != "/reco" {
			return next(c)
		}
		start := time.Now()
		defer func() {
			// A panic is answered 500 by pkg/httpx further out; record it as such here.
			if p := recover(); p != nil {
				r.window.Record(start, time.Since(start), http.StatusInternalServerError)
				r.m.request(http.StatusInternalServerError, time.Since(start))
				panic(p)
			}
		}()
		if err := next(c); err != nil {
			c.Error(err)
		}
		d := time.Since(start)
		status := c.Response().Status
		r.window.Record(start, d, status)
		r.m.request(status, d)
		return nil
	}
}

type recoResponse struct {
	RequestID    string   `json:"request_id"`
	Items        []string `json:"items"`
	ModelVersion string   `json:"model_version"`
	Strategy     string   `json:"strategy"`
}

func (r *Reco) reco(c echo.Context) error {
	q, err := parseReco(rawQuery(c.Request().URL.RawQuery))
	if err != nil {
		return err
	}
	ids := httpx.IDs(c)
	ctx := c.Request().Context()
	now := time.Now()
	res, err := r.rank(ctx, q.userID, q.k, now, false)
	if err != nil {
		return err
	}
	if q.autolog && len(res.Items) > 0 {
		r.autolog.Log(ctx, r.impression(c, q, ids.RequestID, res.Items, now), ids.CorrelationID)
	}
	err = writeReco(c, &recoResponse{RequestID: ids.RequestID, Items: res.Items, ModelVersion: res.ModelVersion, Strategy: res.Strategy})
	res.release()
	return err
}

type recommendResponse struct {
	UserID string          `json:"user_id"`
	Items  []string        `json:"items"`
	Reason recommendReason `json:"reason"`
}

type recommendReason struct {
	Type    string   `json:"type"`
	Sources []string `json:"sources"`
}

// recommend is the legacy endpoint: the same ranking, no impression logging, the original
// response shape. reason.sources lists the candidate sources that contributed.
func (r *Reco) recommend(c echo.Context) error {
	q, err := parseRecommend(rawQuery(c.Request().URL.RawQuery))
	if err != nil {
		return err
	}
	res, err := r.rank(c.Request().Context(), q.userID, q.k, time.Now(), true)
	if err != nil {
		return err
	}
	err = c.JSON(http.StatusOK, recommendResponse{UserID: q.userID, Items: res.Items,
		Reason: recommendReason{Type: "hybrid", Sources: res.sources}})
	res.release()
	return err
}

type ranked struct {
	ranking.Result
	source  string
	sources []string
	buf     *ranking.Result // the pooled Result behind Items and Scores, if any (release)
}

// rank loads the user's snapshot from the best available store and ranks it. The strategy
// gets a suffix naming a degraded source. withSources fills ranked.sources (/recommend).
func (r *Reco) rank(ctx context.Context, userID string, k int, now time.Time, withSources bool) (ranked, error) {
	snap, source, err := r.serving.load(ctx, userID, k, now)
	retrieval := time.Since(now)
	r.m.stage(stageRetrieval, retrieval)
	if err != nil {
		if errors.Is(err, errNoSource) {
			r.m.unavailable.Inc()
			return ranked{}, echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
		}
		if errors.Is(err, context.Canceled) {
			// The client went away: not a server error (see httpx.StatusClientClosedRequest).
			return ranked{}, echo.NewHTTPError(httpx.StatusClientClosedRequest, "client closed the request before a list was made")
		}
		return ranked{}, echo.NewHTTPError(http.StatusServiceUnavailable, "request cancelled before a list was made").SetInternal(err)
	}
	if r.blocked != nil {
		snap.Blocked = r.blocked.current()
	}
	t := time.Now()
	var res ranking.Result
	var buf *ranking.Result
	if into, ok := r.ranker.(rankerInto); ok {
		buf = results.Get().(*ranking.Result)
		into.RankInto(buf, &snap, k)
		res = *buf
	} else {
		res = r.ranker.Rank(&snap, k)
	}
	r.m.stage(stageRanking, time.Since(t))
	var srcs []string
	if withSources {
		srcs = sources(&snap, res.Strategy)
	}
	r.m.served[source].Inc()
	if source != sourceRedis {
		res.Strategy += "_" + source
	}
	if res.Items == nil {
		res.Items = []string{}
	}
	return ranked{Result: res, source: source, sources: srcs, buf: buf}, nil
}

// rankerInto is implemented by rankers that rank into a caller's Result
// (ranking.Weighted.RankInto).
type rankerInto interface {
	RankInto(res *ranking.Result, s *ranking.Snapshot, k int)
}

// results pools the lists' memory between requests: with autolog off a list's Items and
// Scores were ~0.5 KB of the ~8 KB a /reco left to the collector.
var results = sync.Pool{New: func() any { return new(ranking.Result) }}

// release returns the list's memory to results once the answer is written; the autolog's
// event holds copies of the ids, not the slice.
func (rk *ranked) release() {
	if rk.buf == nil {
		return
	}
	clear(rk.Items) // the pool must not keep item ids alive
	rk.buf.Items, rk.buf.Scores = rk.Items[:0], rk.Scores[:0]
	results.Put(rk.buf)
	rk.buf, rk.Items, rk.Scores = nil, nil, nil
}

// sources names the candidate sources present in a snapshot, for /recommend's reason.
func sources(s *ranking.Snapshot, strategy string) []string {
	out := make([]string, 0, 4)
	if strings.HasPrefix(strategy, ranking.StrategyCovisHybrid) {
		out = append(out, "co_visitation")
	}
	if len(s.Trending) > 0 {
		out = append(out, "trending")
	}
	if len(s.Popular) > 0 {
		out = append(out, "popular")
	}
	if len(s.Fresh) > 0 {
		out = append(out, "fresh")
	}
	return out
}

// impression builds the auto-logged event of a served list: positions 0..n-1 in ranked order,
// the request id as request_id, the User-Agent cut to 512 characters.
func (r *Reco) impression(c echo.Context, q recoQuery, requestID string, items []string, now time.Time) *events.Impression {
	ms := now.UnixMilli()
	ev := &events.Impression{
		Common: events.Common{EventID: events.NewEventID(), UserID: q.userID, SessionID: q.sessionID, RequestID: requestID,
			TsMs: ms, ServerReceivedTsMs: ms},
		EventType: string(events.KindImpression),
		Items:     make([]events.ImpressionItem, len(items)),
	}
	// The original always sent {"user_agent": <header or null>}: an absent header is stored
	// as {} (null fields omitted).
	ev.Context = &events.Context{}
	if ua := c.Request().UserAgent(); ua != "" {
		ua = cutRunes(strings.ToValidUTF8(ua, "\uFFFD"), maxUserAgent)
		ev.Context.UserAgent = &ua
	}
	for i, id := range items {
		ev.Items[i] = events.ImpressionItem{ItemID: id, Position: int64(i)}
	}
	return ev
}

func cutRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

func (r *Reco) metricsWindow(c echo.Context) error {
	return c.JSON(http.StatusOK, r.window.Snapshot(time.Now()))
}
