package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"recsys/pkg/apikey"
)

// Endpoint names used in the report.
const (
	EndpointReco  = "reco"
	EndpointWatch = "watch"
	EndpointBatch = "batch"
)

// client sends the API calls of the scenarios.
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

// do sends one request and returns its result; the latency is measured from due (the
// intended time in open-loop mode) to the end of reading the body.
func (c *client) do(ctx context.Context, endpoint, method, path string, body []byte, due time.Time, out any) Result {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return Result{Endpoint: endpoint, At: due, Err: "RequestError: " + err.Error()}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	apikey.Set(req, c.apiKey)
	resp, err := c.http.Do(req)
	if err != nil {
		return Result{Endpoint: endpoint, At: due, Latency: time.Since(due), Err: classify(err)}
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := Result{Endpoint: endpoint, At: due, Latency: time.Since(due), Status: resp.StatusCode}
	switch {
	case rerr != nil:
		r.Status, r.Err = 0, classify(rerr)
	case !r.OK():
		r.Err = "HTTPError: " + strconv.Itoa(resp.StatusCode) + c.authHint(resp.StatusCode)
	case out != nil:
		if err := json.Unmarshal(b, out); err != nil {
			// A 200 the client cannot use is a failure of the API, not of the network.
			r.Err = "InvalidResponse: " + err.Error()
			r.Status = 0
		}
	}
	return r
}

// authHint explains a 401 or 403 in the report's error table (pkg/apikey).
func (c *client) authHint(status int) string {
	if h := apikey.Hint(status, c.apiKey, "the traffic needs client, /contract and /metrics/reco need ops"); h != "" {
		return " (" + h + ")"
	}
	return ""
}

// errCanceled is the error of a request the run itself cancelled (an interrupt): it was in
// flight when the operator stopped the run, and says nothing about the server.
const errCanceled = "Canceled: run stopped"

// classify turns a transport error into a short, stable message so the report's error table
// groups them ("TimeoutError: ...", "ConnectionError: ...").
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return "TimeoutError: request timed out"
	case errors.Is(err, context.Canceled):
		return errCanceled
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = ue.Err.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		msg = oe.Op + ": " + oe.Err.Error()
	}
	return "ConnectionError: " + msg
}

// worker holds one worker's random source and buffers.
type worker struct {
	cfg *Config
	c   *client
	rnd *mrand.Rand
	rec func(Result)
	buf bytes.Buffer
}

func newEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (w *worker) user() string    { return "load-user-" + strconv.Itoa(1+w.rnd.IntN(w.cfg.Users)) }
func (w *worker) session() string { return "session-" + strconv.Itoa(1+w.rnd.IntN(w.cfg.Sessions)) }

// item draws a catalog item with a Zipf-like skew (a few items are popular, most are not),
// the shape real catalogues have.
func (w *worker) item() string {
	n := w.cfg.Items
	u := w.rnd.Float64()
	// x = n·u² has density ∝ 1/√x: item 1 is drawn ~30 times as often as item 1000.
	x := int(float64(n)*u*u) + 1
	if x > n {
		x = n
	}
	return "load-item-" + strconv.Itoa(x)
}

// watchEvent builds a watch body; watch_time_sec is uniform in [20, 120] s.
func (w *worker) watchEvent(user, session, requestID, item string) map[string]any {
	wt := 20 + w.rnd.Float64()*100
	return map[string]any{
		"event_id": newEventID(), "user_id": user, "session_id": session, "request_id": requestID,
		"item_id": item, "ts_ms": time.Now().UnixMilli(), "watch_time_sec": float64(int(wt*10)) / 10,
		"percent_watched": float64(int(wt/1.2*10)) / 10, "ended": wt > 110,
	}
}

func (w *worker) marshal(v any) []byte {
	w.buf.Reset()
	_ = json.NewEncoder(&w.buf).Encode(v)
	return bytes.Clone(w.buf.Bytes())
}

// run performs one operation of the scenario, due at due.
func (w *worker) run(ctx context.Context, due time.Time) {
	switch w.cfg.Scenario {
	case ScenarioReco:
		w.reco(ctx, due, w.user(), w.session())
	case ScenarioIngest:
		if w.cfg.IngestMode == "batch" {
			w.batch(ctx, due)
		} else {
			user := w.user()
			w.rec(w.c.do(ctx, EndpointWatch, http.MethodPost, "/log/watch", w.marshal(w.watchEvent(user, w.session(), "load-"+newEventID(), w.item())), due, nil))
		}
	case ScenarioMixed:
		user, session := w.user(), w.session()
		resp, ok := w.reco(ctx, due, user, session)
		if ok && len(resp.Items) > 0 && w.rnd.Float64() < w.cfg.WatchProb {
			// Users click the top of a list more: position p is chosen with weight 1/(p+1).
			item := resp.Items[w.pickPosition(len(resp.Items))]
			w.rec(w.c.do(ctx, EndpointWatch, http.MethodPost, "/log/watch", w.marshal(w.watchEvent(user, session, resp.RequestID, item)), time.Now(), nil))
		}
		if w.rnd.Float64() < w.cfg.OrganicWatchProb {
			w.rec(w.c.do(ctx, EndpointWatch, http.MethodPost, "/log/watch", w.marshal(w.watchEvent(user, session, "organic-"+newEventID(), w.item())), time.Now(), nil))
		}
	}
}

func (w *worker) pickPosition(n int) int {
	var total float64
	for p := 0; p < n; p++ {
		total += 1 / float64(p+1)
	}
	x := w.rnd.Float64() * total
	for p := 0; p < n; p++ {
		x -= 1 / float64(p+1)
		if x <= 0 {
			return p
		}
	}
	return n - 1
}

func (w *worker) reco(ctx context.Context, due time.Time, user, session string) (recoResponse, bool) {
	q := url.Values{}
	q.Set("user_id", user)
	q.Set("session_id", session)
	q.Set("k", strconv.Itoa(w.cfg.K))
	q.Set("x_autolog_impressions", strconv.FormatBool(w.cfg.Autolog))
	var out recoResponse
	r := w.c.do(ctx, EndpointReco, http.MethodGet, "/reco?"+q.Encode(), nil, due, &out)
	w.rec(r)
	return out, r.OK()
}

// batch posts what a client flushes from its buffer: impressions of a few items and watches
// of some of them, --batch-size events in all.
func (w *worker) batch(ctx context.Context, due time.Time) {
	user, session := w.user(), w.session()
	events := make([]map[string]any, 0, w.cfg.BatchSize)
	var shown []string
	var reqID string
	for len(events) < w.cfg.BatchSize {
		if len(shown) == 0 || w.rnd.IntN(3) == 0 {
			reqID = "load-" + newEventID()
			seen := map[string]bool{}
			var items []map[string]any
			shown = shown[:0]
			for p := 0; len(items) < 5 && p < 50; p++ {
				it := w.item()
				if seen[it] {
					continue
				}
				seen[it] = true
				shown = append(shown, it)
				items = append(items, map[string]any{"item_id": it, "position": len(items)})
			}
			events = append(events, map[string]any{"event_type": "impression", "event_id": newEventID(), "user_id": user,
				"session_id": session, "request_id": reqID, "ts_ms": time.Now().UnixMilli(), "items": items})
			continue
		}
		ev := w.watchEvent(user, session, reqID, shown[w.rnd.IntN(len(shown))])
		ev["event_type"] = "watch"
		events = append(events, ev)
	}
	w.rec(w.c.do(ctx, EndpointBatch, http.MethodPost, "/log/batch", w.marshal(map[string]any{"events": events}), due, nil))
}

// firstEndpoint is the endpoint of an operation's first request.
func (c *Config) firstEndpoint() string {
	if c.Scenario == ScenarioIngest {
		if c.IngestMode == "batch" {
			return EndpointBatch
		}
		return EndpointWatch
	}
	return EndpointReco
}

// describe is the scenario line of the report.
func (c *Config) describe() string {
	switch c.Scenario {
	case ScenarioIngest:
		if c.IngestMode == "batch" {
			return fmt.Sprintf("ingest: POST /log/batch of %d events", c.BatchSize)
		}
		return "ingest: POST /log/watch"
	case ScenarioMixed:
		return fmt.Sprintf("mixed: GET /reco k=%d, then a watch of a shown item with p=%g and of a catalog item with p=%g", c.K, c.WatchProb, c.OrganicWatchProb)
	}
	return strings.TrimSpace(fmt.Sprintf("reco: GET /reco k=%d autolog=%t", c.K, c.Autolog))
}
