package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/migrate"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// env is one ingest module running against a database, served by the process' echo setup.
type env struct {
	t    testing.TB
	pool *pgxpool.Pool
	e    *echo.Echo
	mod  *Ingest
	set  *metrics.Set
}

type envOpt func(*Config, *httpx.Config)

func newEnv(t testing.TB, dsn string, opts ...envOpt) *env {
	t.Helper()
	pool := testutil.Pool(t, dsn)
	cfg := NewConfig()
	hc := httpx.DefaultConfig()
	for _, o := range opts {
		o(cfg, &hc)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	set := metrics.NewSet()
	ic := infra.DefaultConfig()
	if n, err := strconv.Atoi(os.Getenv("BENCH_OUTBOX_LANES")); err == nil {
		ic.OutboxLanes = n // benchmarks compare lane counts without editing the code
	}
	mod, err := New(cfg, infra.Deps{Name: "ingest", Log: log, Metrics: set, PG: pool, Config: ic})
	if err != nil {
		t.Fatal(err)
	}
	e := httpx.New(hc, log)
	im := mod.(*Ingest)
	im.RegisterRoutes(e)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- im.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return &env{t: t, pool: pool, e: e, mod: im, set: set}
}

// do sends one request through the full echo stack (middleware, error handler).
func (v *env) do(method, path, contentType, body string) (int, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set(echo.HeaderContentType, contentType)
	}
	rec := httptest.NewRecorder()
	v.e.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func (v *env) post(path, body string) (int, string) {
	return v.do(http.MethodPost, path, "application/json", body)
}

func (v *env) count(sql string, args ...any) int {
	v.t.Helper()
	var n int
	if err := v.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		v.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// outboxEvent is one event of an event_outbox batch row, with its row's columns.
type outboxEvent struct {
	outbox.Message
	topic, rowKey, rowType string
}

// outboxEvents decodes every outbox row (id order) into its events; a row that is not a
// well-formed batch row fails the test.
func (v *env) outboxEvents() []outboxEvent {
	v.t.Helper()
	rows, err := v.pool.Query(context.Background(), `SELECT topic, msg_key, event_type, payload_format, event_count, payload FROM event_outbox ORDER BY id`)
	if err != nil {
		v.t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxEvent
	for rows.Next() {
		var topic, key, typ string
		var format int16
		var n int
		var payload []byte
		if err := rows.Scan(&topic, &key, &typ, &format, &n, &payload); err != nil {
			v.t.Fatal(err)
		}
		if format != outbox.FormatBatch {
			v.t.Fatalf("outbox row of %s has payload_format %d", key, format)
		}
		ms, err := outbox.DecodeBatch(payload, n)
		if err != nil {
			v.t.Fatal(err)
		}
		for _, m := range ms {
			out = append(out, outboxEvent{Message: m, topic: topic, rowKey: key, rowType: typ})
		}
	}
	if err := rows.Err(); err != nil {
		v.t.Fatal(err)
	}
	return out
}

// outboxCounts returns how many outbox frames each event id has.
func (v *env) outboxCounts() map[string]int {
	v.t.Helper()
	c := map[string]int{}
	for _, e := range v.outboxEvents() {
		c[e.EventID]++
	}
	return c
}

// metric returns the value of one series of the module's metrics set, or -1 when absent.
func (v *env) metric(series string) float64 {
	var b bytes.Buffer
	v.set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if err := json.Unmarshal([]byte(rest), &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func migrateURL(t testing.TB, dsn string) {
	t.Helper()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Event builders: valid bodies as maps, so a test changes one field and marshals.

func nowMs() int64 { return time.Now().UnixMilli() }

func watchBody(id string) map[string]any {
	return map[string]any{"event_id": id, "user_id": "user-1", "session_id": "sess-1", "request_id": "req-1",
		"ts_ms": nowMs(), "item_id": "item-1", "watch_time_sec": 30.5, "percent_watched": 80, "ended": true,
		"playback_speed": 1.5, "rebuffer_count": 0, "context": map[string]any{"device": "tv", "locale": nil}}
}

func impressionBody(id string, n int) map[string]any {
	items := make([]any, n)
	for i := range n {
		items[i] = map[string]any{"item_id": "item-" + itoa(i), "position": i, "feed_id": "home", "slot": nil}
	}
	return map[string]any{"event_id": id, "event_type": "impression", "user_id": "user-1", "session_id": "sess-1",
		"request_id": "req-1", "ts_ms": nowMs(), "items": items}
}

func legacyBody(id string) map[string]any {
	return map[string]any{"event_id": id, "user_id": "user-1", "item_id": "item-1", "event_type": "click", "ts": time.Now().Unix()}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// loadClient is a keep-alive HTTP client for tests and benchmarks against a real listener.
func loadClient(conns int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}}
}

func postHTTP(c *http.Client, url string, body []byte) (int, []byte, error) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// serve starts a real HTTP server for the env on loopback.
func (v *env) serve() string {
	srv := httptest.NewServer(v.e)
	v.t.Cleanup(srv.Close)
	return srv.URL
}

func httptestRequest(path, body string) *http.Request {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set(echo.HeaderContentType, "application/json")
	return req
}

func serveRecorder(v *env, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	v.e.ServeHTTP(rec, req)
	return rec
}
