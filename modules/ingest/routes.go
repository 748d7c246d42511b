package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/httpx"
	writer "recsys/pkg/ingest"
	"recsys/pkg/kpi"
)

// backboneMode is the contract's event_backbone_mode.
const backboneMode = "transactional_outbox"

// Endpoint labels of the metrics.
const (
	epImpression = "impression"
	epWatch      = "watch"
	epBatch      = "batch"
	epEvent      = "event"
)

// RegisterRoutes mounts the endpoints on the process' server.
func (m *Ingest) RegisterRoutes(e *echo.Echo) {
	e.POST("/log/impression", m.logImpression)
	e.POST("/log/watch", m.logWatch)
	e.POST("/log/batch", m.logBatch)
	e.POST("/event", m.logLegacy)
	e.GET("/contract", m.contract)
}

type impressionResponse struct {
	Status            string `json:"status"`
	InsertedRows      int    `json:"inserted_rows"`
	EventBackboneMode string `json:"event_backbone_mode"`
	OutboxEnqueued    bool   `json:"outbox_enqueued"`
}

type watchResponse struct {
	Status            string `json:"status"`
	FeatureUpdateMode string `json:"feature_update_mode"`
	FeatureUpdated    bool   `json:"feature_updated"` // always false: the consumer applies features
	EventBackboneMode string `json:"event_backbone_mode"`
	OutboxEnqueued    bool   `json:"outbox_enqueued"`
}

type batchResponse struct {
	Status            string `json:"status"` // always "ok", as the contract says; inserted_events tells what was new
	Count             int    `json:"count"`
	InsertedEvents    int    `json:"inserted_events"`
	EventBackboneMode string `json:"event_backbone_mode"`
	OutboxEnqueued    int    `json:"outbox_enqueued"`
	FeatureUpdateMode string `json:"feature_update_mode"`
}

type legacyResponse struct {
	Status  string `json:"status"`
	EventID string `json:"event_id"`
}

func (m *Ingest) logImpression(c echo.Context) error {
	now := time.Now()
	ev, err := decode(m, c, epImpression, now, events.DecodeImpression)
	if err != nil {
		return err
	}
	res, err := m.persist(c, epImpression, "impression event", ev)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, impressionResponse{Status: string(res[0].Status), InsertedRows: res[0].Rows,
		EventBackboneMode: backboneMode, OutboxEnqueued: res[0].OutboxEnqueued})
}

func (m *Ingest) logWatch(c echo.Context) error {
	ev, err := decode(m, c, epWatch, time.Now(), events.DecodeWatch)
	if err != nil {
		return err
	}
	res, err := m.persist(c, epWatch, "watch event", ev)
	if err != nil {
		return err
	}
	out := watchResponse{Status: string(res[0].Status), FeatureUpdateMode: m.cfg.WatchFeatureUpdateMode,
		EventBackboneMode: backboneMode, OutboxEnqueued: res[0].OutboxEnqueued}
	// The hottest endpoint answers from pre-encoded bodies; ?pretty and debug mode still go
	// through c.JSON, which indents.
	if b, ok := m.watchBodies[out]; ok && c.Request().URL.RawQuery == "" && !c.Echo().Debug {
		return c.JSONBlob(http.StatusOK, b)
	}
	return c.JSON(http.StatusOK, out)
}

// watchBodies encodes every /log/watch answer as echo's c.JSON does (json.Encoder: a
// trailing newline).
func watchBodies(cfg *Config) map[watchResponse][]byte {
	out := map[watchResponse][]byte{}
	for _, st := range []writer.Status{writer.StatusOK, writer.StatusDuplicate} {
		for _, enq := range []bool{false, true} {
			r := watchResponse{Status: string(st), FeatureUpdateMode: cfg.WatchFeatureUpdateMode, EventBackboneMode: backboneMode, OutboxEnqueued: enq}
			var b bytes.Buffer
			if err := json.NewEncoder(&b).Encode(r); err == nil {
				out[r] = b.Bytes()
			}
		}
	}
	return out
}

func (m *Ingest) logLegacy(c echo.Context) error {
	ev, err := decode(m, c, epEvent, time.Now(), events.DecodeLegacy)
	if err != nil {
		return err
	}
	res, err := m.persist(c, epEvent, "event", ev)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, legacyResponse{Status: string(res[0].Status), EventID: ev.EventID})
}

func (m *Ingest) logBatch(c echo.Context) error {
	evs, err := decode(m, c, epBatch, time.Now(), events.DecodeBatch)
	if err != nil {
		return err
	}
	m.m.batchEvents.Update(float64(len(evs)))
	res, err := m.persist(c, epBatch, "batch events", evs...)
	if err != nil {
		return err
	}
	out := batchResponse{Status: "ok", Count: len(evs), EventBackboneMode: backboneMode, FeatureUpdateMode: m.cfg.WatchFeatureUpdateMode}
	for _, r := range res {
		if r.Status == writer.StatusOK {
			out.InsertedEvents++
		}
		if r.OutboxEnqueued {
			out.OutboxEnqueued++
		}
	}
	return c.JSON(http.StatusOK, out)
}

// persist stores evs within --ingest.write-timeout and counts the outcomes. what names the
// payload in the 503 detail, as the contract words it.
func (m *Ingest) persist(c echo.Context, endpoint, what string, evs ...events.Any) ([]writer.Result, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(c.Request().Context(), m.cfg.WriteTimeout)
	defer cancel()
	// The decoders applied every rule of events.Validate (and the time window) already.
	res, err := m.w.WriteValidated(ctx, evs, httpx.IDs(c).CorrelationID)
	if err != nil {
		var big *writer.EventTooLargeError
		if errors.As(err, &big) {
			m.m.rejected(endpoint, "event_too_large")
			loc := []any{"body"}
			if endpoint == epBatch {
				loc = append(loc, "events", big.Index)
			}
			return nil, echo.NewHTTPError(http.StatusUnprocessableEntity, []events.FieldError{big.FieldError(loc...)}).SetInternal(err)
		}
		var ve *events.ValidationError
		if errors.As(err, &ve) {
			// The decoders and the writer disagree on a rule: a bug, but the client still
			// deserves to know which field.
			m.m.rejected(endpoint, "validation")
			return nil, echo.NewHTTPError(http.StatusUnprocessableEntity, ve.Errors).SetInternal(err)
		}
		reason, detail := persistFailure(err, what)
		m.m.rejected(endpoint, reason)
		return nil, echo.NewHTTPError(http.StatusServiceUnavailable, detail).SetInternal(err)
	}
	if h := m.m.persists[endpoint]; h != nil {
		h.UpdateDuration(start)
	} else {
		m.m.persistDuration(endpoint).UpdateDuration(start)
	}
	m.m.countEvents(endpoint, evs, res)
	return res, nil
}

// persistFailure returns the metric reason and the 503 detail of a write that failed with err.
func persistFailure(err error, what string) (reason, detail string) {
	switch {
	case errors.Is(err, writer.ErrClosed):
		// Nothing was written; another pod takes the retry.
		return "shutdown", "failed to persist " + what + ": service is shutting down"
	case errors.Is(err, writer.ErrOutcomeUnknown):
		// The commit was sent and its outcome could not be learnt: "database unavailable"
		// would tell the client that nothing was stored, which may be false.
		return "outcome_unknown", "failed to persist " + what + ": outcome unknown, the database did not confirm the commit in time; resend it (a resend is deduplicated by event_id)"
	case errors.Is(err, writer.ErrUnavailable):
		return "unavailable", "failed to persist " + what + ": database unavailable"
	}
	return "error", "failed to persist " + what + ": database error"
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// decode checks the content type, reads the body within the server's limit and runs the
// request decoder; every failure is already the HTTP error to return.
func decode[T any](m *Ingest, c echo.Context, endpoint string, now time.Time, dec func([]byte, events.Limits, time.Time) (T, *events.ValidationError)) (T, error) {
	var zero T
	req := c.Request()
	if ct := req.Header.Get(echo.HeaderContentType); ct != "" && !isJSON(ct) {
		m.m.rejected(endpoint, "unsupported_media_type")
		return zero, echo.NewHTTPError(http.StatusUnsupportedMediaType, "unsupported content type "+quote(ct)+": send application/json")
	}
	if ce, ok := encoded(req.Header); ok {
		// Read as it came, a gzip body was a 422 "JSON decode error: invalid UTF-8" at byte
		// 1, which names neither the header at fault nor what to send instead.
		m.m.rejected(endpoint, "unsupported_media_type")
		c.Response().Header().Set(echo.HeaderAcceptEncoding, "identity")
		return zero, echo.NewHTTPError(http.StatusUnsupportedMediaType, "unsupported content encoding "+quote(ce)+": send the body uncompressed (no Content-Encoding, or identity)")
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 1<<20 { // do not pin the occasional huge body
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	buf.Reset()
	if _, err := buf.ReadFrom(req.Body); err != nil {
		if httpx.IsTooLarge(err) {
			m.m.rejected(endpoint, "body_too_large")
			return zero, err
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The client was too slow, not wrong: a 400 would tell it not to retry the
			// events, and the error's text names the server's socket addresses.
			m.m.rejected(endpoint, "read_timeout")
			c.Response().Header().Set(echo.HeaderConnection, "close")
			return zero, echo.NewHTTPError(http.StatusRequestTimeout, "request body not received within the server's read timeout: retry").SetInternal(err)
		}
		m.m.rejected(endpoint, "malformed_json")
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err // without the socket addresses
		}
		return zero, echo.NewHTTPError(http.StatusBadRequest, "read request body: "+err.Error())
	}
	// The decoders copy what they keep, so the buffer can be reused once they return.
	v, verr := dec(buf.Bytes(), m.cfg.limits(), now)
	if verr != nil {
		reason := "validation"
		if len(verr.Errors) == 1 && (verr.Errors[0].Type == "json_invalid" || len(verr.Errors[0].Loc) == 1) {
			reason = "malformed_json"
		}
		m.m.rejected(endpoint, reason)
		return zero, echo.NewHTTPError(http.StatusUnprocessableEntity, verr.Errors)
	}
	return v, nil
}

// isJSON judges a Content-Type as the original service did (FastAPI reads it with Python's
// email.message): only the type/subtype before the first ';' counts, trimmed and
// case-insensitive, and any parameters, repeated or malformed, are ignored. JSON is
// application/json or application/<anything>+json.
func isJSON(ct string) bool {
	if ct == echo.MIMEApplicationJSON {
		return true // the usual header, without the work below
	}
	mt, _, _ := strings.Cut(ct, ";")
	// email.message falls back to text/plain unless there is exactly one '/'.
	typ, sub, ok := strings.Cut(strings.TrimSpace(mt), "/")
	if !ok || strings.Contains(sub, "/") || !strings.EqualFold(typ, "application") {
		return false
	}
	sub = strings.ToLower(sub)
	return sub == "json" || strings.HasSuffix(sub, "+json")
}

// encoded returns the request's Content-Encoding when it names a coding other than identity.
func encoded(h http.Header) (string, bool) {
	vals := h.Values(echo.HeaderContentEncoding)
	for _, v := range vals {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return strings.Join(vals, ", "), true
			}
		}
	}
	return "", false
}

func quote(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	b, _ := json.Marshal(s)
	return string(b)
}

type contractResponse struct {
	KPITargets kpi.Targets `json:"kpi_targets"`
	// The latency targets are numbers as configured (120, or 120.5); kpi.SLA's ints would
	// round a fractional --reco.sla-target-*-ms.
	SLATargets struct {
		RecoP95Ms       json.Number `json:"reco_p95_ms"`
		RecoP99Ms       json.Number `json:"reco_p99_ms"`
		APIErrorRatePct json.Number `json:"api_error_rate_pct"`
	} `json:"sla_targets"`
	EventContract struct {
		MaxEventFutureMs int64 `json:"max_event_future_ms"`
		MaxEventAgeMs    int64 `json:"max_event_age_ms"`
		MaxBatchSize     int   `json:"max_batch_size"`
	} `json:"event_contract"`
}

// contract serves GET /contract: the KPI targets (constants of the contract), the SLA targets
// (the latency ones as /metrics/reco is configured to judge them, so a guardrail reading them
// checks what the service promises) and the event limits this process enforces.
func (m *Ingest) contract(c echo.Context) error {
	var out contractResponse
	out.KPITargets = kpi.ContractTargets
	out.SLATargets.RecoP95Ms = json.Number(strconv.FormatFloat(m.cfg.SLATargetP95Ms, 'f', -1, 64))
	out.SLATargets.RecoP99Ms = json.Number(strconv.FormatFloat(m.cfg.SLATargetP99Ms, 'f', -1, 64))
	out.SLATargets.APIErrorRatePct = kpi.ContractSLA.APIErrorRatePct
	lim := m.cfg.limits()
	out.EventContract.MaxEventFutureMs = lim.MaxFutureMs
	out.EventContract.MaxEventAgeMs = lim.MaxAgeMs
	out.EventContract.MaxBatchSize = lim.MaxBatchSize
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // ">= 8%" verbatim, as the original serves it
	if err := enc.Encode(out); err != nil {
		return err
	}
	return c.JSONBlob(http.StatusOK, b.Bytes())
}
