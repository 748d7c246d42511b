// Package httpx builds the process' one echo server: request and correlation IDs on every
// response (errors and panics included), panic recovery to a JSON 500, a structured access
// log, request metrics by route template, server timeouts and a body-size limit.
package httpx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/pprof"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
	"github.com/spf13/pflag"

	"recsys/pkg/logging"
)

// Config holds the server settings (flags http.*).
type Config struct {
	Addr              string
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	BodyLimitBytes    int64
	// HeaderLimitBytes bounds a request's header block, request line (and so query string)
	// included: Go's default is 1 MiB, which the access log would copy into a line per
	// request. The original's server (uvicorn) allowed ~16 KiB.
	HeaderLimitBytes int
	Pprof            bool
	// APIKeysFile, when set, makes every request but the probes and the API's documentation
	// carry a key of the scope its path needs (see Auth).
	APIKeysFile string
	// RateLimitScope is where a key's rate= is counted: RateLimitProcess or RateLimitCluster.
	RateLimitScope string
	// MaxConnections caps the connections open at once (LimitConnections); 0: no cap.
	MaxConnections int
}

// Where a key's rate is counted (--http.rate-limit-scope).
const (
	// RateLimitProcess counts each key in every process on its own: with P API pods a key
	// gets up to P times its rate.
	RateLimitProcess = "process"
	// RateLimitCluster counts each key once for the whole deployment, in Redis.
	RateLimitCluster = "cluster"
)

// DefaultMaxConnections is --http.max-connections' default. Memory binds before descriptors:
// Go raises the soft descriptor limit to the hard one (1,048,576 under Docker and containerd,
// 524,288 under systemd), while each connection costs ~17 KiB (goroutine stack and buffers),
// so 4096 is ~70 MiB at worst, within the api's 512 MiB limit (deploy/k8s) beside its
// working set. It is far above what a pod needs: a load balancer keeps some hundreds of
// keep-alive connections, 20,000 requests/s at 5 ms are 100 busy ones, and idle keep-alive
// connections give way to new ones at the cap.
const DefaultMaxConnections = 4096

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Addr: ":8080", ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, BodyLimitBytes: 4 << 20,
		HeaderLimitBytes: 64 << 10, RateLimitScope: RateLimitProcess, MaxConnections: DefaultMaxConnections}
}

// RegisterFlags adds the http.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Addr, "http.addr", c.Addr, "listen address of the API, health and metrics endpoints")
	fs.DurationVar(&c.ReadHeaderTimeout, "http.read-header-timeout", c.ReadHeaderTimeout, "time allowed to read request headers")
	fs.DurationVar(&c.ReadTimeout, "http.read-timeout", c.ReadTimeout, "time allowed to read a whole request")
	fs.DurationVar(&c.WriteTimeout, "http.write-timeout", c.WriteTimeout, "time allowed to write a response")
	fs.DurationVar(&c.IdleTimeout, "http.idle-timeout", c.IdleTimeout, "keep-alive idle time")
	fs.Int64Var(&c.BodyLimitBytes, "http.body-limit-bytes", c.BodyLimitBytes, "largest accepted request body; larger bodies get 413")
	fs.IntVar(&c.HeaderLimitBytes, "http.header-limit-bytes", c.HeaderLimitBytes, "largest accepted request line and headers together (the query string included); larger ones get 431")
	fs.StringVar(&c.APIKeysFile, "http.api-keys-file", c.APIKeysFile, "file of API keys, one \"<name> <scopes> <secret> [rate=<N>]\" per line (scopes: client, ops or client,ops; secret: the token, 16 characters or more, or sha256:<64 hex> of it; N: the key's limit in requests per second, 429 beyond, counted as --http.rate-limit-scope says); when set, every request but /healthz, /livez, /readyz, /openapi.json, /docs and /redoc needs a key, as Authorization: Bearer <token> or X-API-Key: client opens /reco, /recommend, /log/* and /event, ops the metrics, /analytics/*, /contract and /debug/pprof; the file is re-read within 5 s of a change. Empty: no authentication, as the original service")
	fs.StringVar(&c.RateLimitScope, "http.rate-limit-scope", c.RateLimitScope, "where the rate=N of an API key is counted: process (each process on its own, so with P API pods a key gets up to P×N requests/s) or cluster (once for the whole deployment, in the Redis of --redis.url, one script call per request of a key with a rate; while Redis fails, each process counts on its own at N again); with API keys, cluster needs a role that uses Redis (api does)")
	fs.IntVar(&c.MaxConnections, "http.max-connections", c.MaxConnections, "most client connections open at once (0: no cap); at the cap the longest idle keep-alive connection is closed for a new one, and without one new connections wait for a connection to close (in the listen backlog), counted in recsys_http_connection_waits_total; bounds the descriptors and memory (~17 KiB each) a connection flood can take")
	fs.BoolVar(&c.Pprof, "http.pprof", c.Pprof, "serve Go's profiles under /debug/pprof/ (CPU profiles longer than --http.write-timeout are cut; not the command line, which may hold secrets given as flags); expose inside the cluster only")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("--http.addr (RECSYS_HTTP_ADDR) is required, e.g. :8080"))
	}
	for _, d := range []struct {
		n string
		v time.Duration
	}{{"http.read-header-timeout", c.ReadHeaderTimeout}, {"http.read-timeout", c.ReadTimeout}, {"http.write-timeout", c.WriteTimeout}, {"http.idle-timeout", c.IdleTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be > 0, got %s", d.n, d.v))
		}
	}
	if c.BodyLimitBytes < 1024 {
		errs = append(errs, fmt.Errorf("--http.body-limit-bytes must be >= 1024, got %d", c.BodyLimitBytes))
	}
	if c.HeaderLimitBytes < 4096 {
		errs = append(errs, fmt.Errorf("--http.header-limit-bytes must be >= 4096, got %d", c.HeaderLimitBytes))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("--http.max-connections must be >= 0 (0: no cap), got %d", c.MaxConnections))
	}
	if c.RateLimitScope != RateLimitProcess && c.RateLimitScope != RateLimitCluster {
		errs = append(errs, fmt.Errorf("--http.rate-limit-scope must be %q or %q, got %q", RateLimitProcess, RateLimitCluster, c.RateLimitScope))
	}
	if c.APIKeysFile != "" {
		if _, err := LoadAPIKeys(c.APIKeysFile); err != nil {
			errs = append(errs, fmt.Errorf("--http.api-keys-file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Server returns an http.Server for e with the configured timeouts.
func (c Config) Server(e *echo.Echo) *http.Server {
	return &http.Server{Addr: c.Addr, Handler: e, ReadHeaderTimeout: c.ReadHeaderTimeout, ReadTimeout: c.ReadTimeout,
		WriteTimeout: c.WriteTimeout, IdleTimeout: c.IdleTimeout, MaxHeaderBytes: c.HeaderLimitBytes}
}

// Header names of the contract.
const (
	HeaderRequestID     = "X-Request-ID"
	HeaderCorrelationID = "X-Correlation-ID"
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{8,128}$`)

// NormalizeID applies the contract's rule: trim, cut to 128, accept only 8-128 characters of
// letters, digits and . _ : -; otherwise "".
func NormalizeID(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 128 {
		s = s[:128]
	}
	if !idPattern.MatchString(s) {
		return ""
	}
	return s
}

// NewID returns 32 lowercase hex characters, like a UUID4 without dashes.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return hex.EncodeToString(b[:])
}

// IDs returns the request's IDs set by the middleware. They are read from the request's
// context, not echo's per-request store, which would allocate a map for every request.
func IDs(c echo.Context) logging.IDs {
	ids, _ := logging.IDsFrom(c.Request().Context())
	return ids
}

// New returns an echo instance with the recsys middleware and error handler installed.
func New(cfg Config, log *slog.Logger) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(log)
	e.Use(requestContext(log, e), bodyLimit(cfg.BodyLimitBytes))
	e.OnAddRouteHandler = optionsNotAllowed(e)
	if cfg.Pprof {
		// Where a running process spends its CPU is the first question of every performance
		// report; the handlers are the standard library's. Not /debug/pprof/cmdline: it
		// serves the command line unredacted, a --pg.dsn or --kafka.sasl-password given as a
		// flag included (Index answers it 404, as an unknown profile).
		e.GET("/debug/pprof/*", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
		e.GET("/debug/pprof/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
		e.GET("/debug/pprof/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
		e.GET("/debug/pprof/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
	}
	return e
}

// slashRedirect returns where a request the router matched nothing for is redirected: the
// path without its trailing slashes, query kept, when a route matches that. The original
// service (Starlette's redirect_slashes) answered /reco/ or /event/ so, with 307, and its
// clients follow it (a 307 keeps a POST's body). It runs in requestContext on unmatched
// requests only, not as an echo Pre middleware, which would cost every request two
// allocations.
func slashRedirect(e *echo.Echo, req *http.Request) (string, bool) {
	p := echo.GetPath(req)
	if len(p) < 2 || p[len(p)-1] != '/' {
		return "", false
	}
	if to := strings.TrimRight(p, "/"); to == "" || !routed(e, req, to) {
		return "", false
	}
	loc := strings.TrimRight(req.URL.EscapedPath(), "/")
	if req.URL.RawQuery != "" {
		loc += "?" + req.URL.RawQuery
	}
	return loc, true
}

// routed reports whether the router has a route for path, with any method. It runs only for
// the rare requests slashRedirect or a refused OPTIONS looks at, so its context is not pooled.
func routed(e *echo.Echo, req *http.Request, path string) bool {
	return lookup(e, req, req.Method, path).Path() != ""
}

func lookup(e *echo.Echo, req *http.Request, method, path string) echo.Context {
	c := e.NewContext(req, nil)
	e.Router().Find(method, path, c)
	return c
}

// optionsNotAllowed returns the OnAddRouteHandler that gives every routed path an OPTIONS
// route answering 405, unless the caller registers one. The original service (FastAPI without
// CORS) answered OPTIONS with 405 like any other method a path does not serve, where echo's
// router answers 204; and an OPTIONS route, unlike the router's own answer, is inside the
// middleware, so /reco's metrics count it as the 4xx it is. Routes are registered before the
// server starts, from one goroutine, so seen needs no lock. recsys registers no host routes
// (e.Host): their paths keep echo's answer.
func optionsNotAllowed(e *echo.Echo) func(host string, r echo.Route, _ echo.HandlerFunc, _ []echo.MiddlewareFunc) {
	seen := map[string]bool{}
	return func(host string, r echo.Route, _ echo.HandlerFunc, _ []echo.MiddlewareFunc) {
		if host != "" || r.Method == echo.RouteNotFound || seen[r.Path] {
			return
		}
		// Marked before the Add below, which calls back here; a path whose first route is
		// the caller's OPTIONS keeps it.
		seen[r.Path] = true
		if r.Method != http.MethodOptions {
			e.OPTIONS(r.Path, methodNotAllowed(e))
		}
	}
}

// noSuchMethod is a method no route has: looking it up gets the router's 405 for the path,
// with the Allow header of every other 405.
const noSuchMethod = "\x00"

func methodNotAllowed(e *echo.Echo) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if allow, _ := lookup(e, req, noSuchMethod, echo.GetPath(req)).Get(echo.ContextKeyHeaderAllow).(string); allow != "" {
			c.Response().Header().Set(echo.HeaderAllow, allow)
		}
		return echo.ErrMethodNotAllowed
	}
}

// requestContext sets the IDs, recovers panics, writes the access log and request metrics,
// and redirects a trailing slash (slashRedirect). It is one middleware so a panic still gets
// its ID headers, its log line and its metric.
func requestContext(log *slog.Logger, e *echo.Echo) echo.MiddlewareFunc {
	probes := newProbeStates()
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) (err error) {
			start := time.Now()
			req := c.Request()
			rid := NormalizeID(req.Header.Get(HeaderRequestID))
			if rid == "" {
				rid = NewID()
			}
			cid := NormalizeID(req.Header.Get(HeaderCorrelationID))
			if cid == "" {
				cid = rid
			}
			ids := logging.IDs{RequestID: rid, CorrelationID: cid}
			c.SetRequest(req.WithContext(logging.WithIDs(req.Context(), ids)))
			h := c.Response().Header()
			h.Set(HeaderRequestID, rid)
			h.Set(HeaderCorrelationID, cid)
			defer func() {
				if p := recover(); p != nil {
					// exc_info: where the original's lines carry a traceback (api-contract §2.1).
					log.ErrorContext(c.Request().Context(), "panic serving request", "err", fmt.Sprint(p), "path", req.URL.Path, "exc_info", string(debug.Stack()))
					err = echo.NewHTTPError(http.StatusInternalServerError, "internal server error")
				}
				if err != nil {
					c.Error(err)
					err = nil
				}
				status := c.Response().Status
				route := c.Path()
				if route == "" {
					route = "unmatched"
				}
				dur := time.Since(start)
				hm := handlesFor(route, methodLabel(req.Method), status)
				hm.requests.Inc()
				hm.duration.Update(dur.Seconds())
				lvl := slog.LevelInfo
				switch {
				case isProbe(route):
					// Probes and scrapes every few seconds would drown the log, and an unready
					// /readyz answers 503 on every probe for as long as it lasts: only a change
					// of a probe's status is worth a line.
					lvl = slog.LevelDebug
					if probes.changed(route, status) {
						lvl = slog.LevelInfo
					}
				case status >= 500 && c.Get(shedKey) == nil:
					lvl = slog.LevelError
				}
				if log.Enabled(c.Request().Context(), lvl) {
					log.LogAttrs(c.Request().Context(), lvl, "http_request", slog.String("method", req.Method), slog.String("path", req.URL.Path),
						slog.String("route", route), slog.Int("status_code", status), slog.Float64("latency_ms", float64(dur.Microseconds())/1000))
				}
			}()
			if c.Path() == "" { // the router matched nothing
				if loc, ok := slashRedirect(e, req); ok {
					return c.Redirect(http.StatusTemporaryRedirect, loc)
				}
			}
			return next(c)
		}
	}
}

type handleKey struct {
	route, method string
	code          int
}

type handles struct {
	requests *metrics.Counter
	duration *metrics.PrometheusHistogram
}

// handleCache keeps the metric handles per route, method and status, so the hot path does
// not format metric names on every request. Routes are templates, so the set stays small.
var handleCache sync.Map // handleKey -> *handles

func handlesFor(route, method string, code int) *handles {
	k := handleKey{route, method, code}
	if h, ok := handleCache.Load(k); ok {
		return h.(*handles)
	}
	h := &handles{
		requests: metrics.GetOrCreateCounter(fmt.Sprintf(`recsys_http_requests_total{route=%q,method=%q,code="%d"}`, route, method, code)),
		duration: metrics.GetOrCreatePrometheusHistogram(fmt.Sprintf(`recsys_http_request_duration_seconds{route=%q,method=%q}`, route, method)),
	}
	v, _ := handleCache.LoadOrStore(k, h)
	return v.(*handles)
}

// methodLabel bounds the method label of the request metrics: the method is the client's
// choice, and each distinct one would otherwise add metric series (and a handleCache entry)
// for the life of the process.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

var probeRoutes = []string{"/healthz", "/livez", "/readyz", "/metrics", "/metrics/prometheus"}

func isProbe(route string) bool {
	return slices.Contains(probeRoutes, route)
}

// probeStates holds the last status answered on each probe route.
type probeStates map[string]*atomic.Int32

func newProbeStates() probeStates {
	p := probeStates{}
	for _, r := range probeRoutes {
		p[r] = new(atomic.Int32)
	}
	return p
}

// changed records status as the route's last and reports whether it differs from the one
// before (the first answer counts as a change).
func (p probeStates) changed(route string, status int) bool {
	last, ok := p[route]
	return ok && last.Swap(int32(status)) != int32(status)
}

func bodyLimit(limit int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			if req.ContentLength > limit {
				return TooLarge(limit)
			}
			if req.Body != http.NoBody { // a GET has nothing to limit: no reader to allocate
				req.Body = http.MaxBytesReader(c.Response(), req.Body, limit)
			}
			return next(c)
		}
	}
}

// TooLarge is the 413 error for a body over limit bytes.
func TooLarge(limit int64) error {
	return echo.NewHTTPError(http.StatusRequestEntityTooLarge, "request body too large: limit is "+strconv.FormatInt(limit, 10)+" bytes")
}

// IsTooLarge reports whether err came from reading past the body limit.
func IsTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// errorHandler maps every error to the contract's JSON shape {"detail": ...}; it is the one
// place errors become HTTP responses.
func errorHandler(log *slog.Logger) echo.HTTPErrorHandler {
	// The cause of failed requests at most once a second: in an outage or an overload (the
	// event writers' queue full) every request fails the same way and already has its access
	// line at error; a second line per request doubled the log.
	var causes logging.Limiter
	failed := func(c echo.Context, err error) {
		causes.Do(func(n int64) {
			log.ErrorContext(c.Request().Context(), "request failed", "err", err, "path", c.Request().URL.Path, "failures", n)
		})
	}
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		code := http.StatusInternalServerError
		var detail any = "internal server error"
		var he *echo.HTTPError
		switch {
		case errors.As(err, &he):
			code = he.Code
			detail = he.Message
			if he.Internal != nil && code >= 500 {
				failed(c, he.Internal)
			}
			if code == http.StatusNotFound && detail == http.StatusText(http.StatusNotFound) {
				detail = "Not Found"
			}
		case IsTooLarge(err):
			code, detail = http.StatusRequestEntityTooLarge, "request body too large"
		default:
			failed(c, err)
		}
		if code == http.StatusMethodNotAllowed {
			// echo's router lists OPTIONS among a path's methods, but OPTIONS answers 405
			// here too (optionsNotAllowed): Allow names what the path serves, as the
			// original's did ("GET").
			h := c.Response().Header()
			if allow := h.Get(echo.HeaderAllow); allow != "" {
				h.Set(echo.HeaderAllow, withoutOptions(allow))
			}
		}
		if c.Request().Method == http.MethodHead {
			_ = c.NoContent(code)
			return
		}
		_ = writeError(c, code, detail)
	}
}

// writeError writes {"detail": detail} as c.JSON does (?pretty indents), but without HTML
// escaping: a 422's detail echoes the client's inputs, and escaped each <, > and & is six
// bytes, so a body made of them was answered with six times its size. The original service
// (Python's json) wrote them verbatim too.
func writeError(c echo.Context, code int, detail any) error {
	enc := json.NewEncoder(c.Response())
	enc.SetEscapeHTML(false)
	if _, pretty := c.QueryParams()["pretty"]; pretty || c.Echo().Debug {
		enc.SetIndent("", "  ")
	}
	if h := c.Response().Header(); h.Get(echo.HeaderContentType) == "" {
		h.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	}
	c.Response().WriteHeader(code)
	return enc.Encode(map[string]any{"detail": detail})
}

// withoutOptions is an Allow header's method list without OPTIONS.
func withoutOptions(allow string) string {
	methods := strings.Split(allow, ",")
	out := methods[:0]
	for _, m := range methods {
		if m = strings.TrimSpace(m); m != "" && m != http.MethodOptions {
			out = append(out, m)
		}
	}
	return strings.Join(out, ", ")
}

// Every process serves its metrics through MetricsHandler: they carry # HELP and # TYPE lines
// (api-contract §9.1 types them; without the lines Prometheus sees them untyped).
func init() { metrics.ExposeMetadata(true) }

// MetricsHandler serves the Prometheus exposition of the process (Go and process metrics
// included).
func MetricsHandler(c echo.Context) error {
	var b bytes.Buffer
	metrics.WritePrometheus(&b, true)
	c.Response().Header().Set(echo.HeaderContentType, "text/plain; version=0.0.4; charset=utf-8")
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(exposition(b.Bytes()))
	return err
}

// exposition makes the library's output one well-formed text exposition. Each module writes
// its own metrics set, with its own # HELP and # TYPE lines, and a family may be in two sets
// (the pkg/ingest writer's, labelled writer="ingest" and writer="reco"): a second # TYPE line
// for a name fails a strict parser, so each family is written once, its samples together, in
// the order of first appearance. The contract's reco_* histograms get their le values as the
// original's Python client wrote them (le="10.0", not le="10"): a renamed label value would be a
// new series to every dashboard and recording rule.
func exposition(in []byte) []byte {
	type family struct {
		head    []string // # HELP and # TYPE, once each
		samples []string
	}
	var order []string
	fams := map[string]*family{}
	get := func(name string) *family {
		f := fams[name]
		if f == nil {
			f = &family{}
			fams[name] = f
			order = append(order, name)
		}
		return f
	}
	cur := ""
	for line := range strings.SplitSeq(string(in), "\n") {
		if line == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			kind, rest, _ := strings.Cut(rest, " ")
			name, _, _ := strings.Cut(rest, " ")
			if kind == "HELP" || kind == "TYPE" {
				cur = name
				f := get(name)
				if !slices.ContainsFunc(f.head, func(h string) bool { return strings.HasPrefix(h, "# "+kind+" ") }) {
					f.head = append(f.head, line)
				}
				continue
			}
		}
		name := line[:strings.IndexAny(line+" ", "{ ")]
		fam := name
		if cur != "" && (name == cur || name == cur+"_bucket" || name == cur+"_sum" || name == cur+"_count") {
			fam = cur
		}
		if strings.HasPrefix(name, "reco_") && strings.HasSuffix(name, "_bucket") {
			line = pythonLe(line)
		}
		get(fam).samples = append(get(fam).samples, line)
	}
	out := make([]byte, 0, len(in))
	for _, name := range order {
		f := fams[name]
		for _, l := range f.head {
			out = append(append(out, l...), '\n')
		}
		for _, l := range f.samples {
			out = append(append(out, l...), '\n')
		}
	}
	return out
}

// pythonLe rewrites the le label of a bucket line the way prometheus_client's floatToGoString
// formats it: 10 -> 10.0, 2.5 -> 2.5, 1000000 -> 1e+06, +Inf unchanged.
func pythonLe(line string) string {
	i := strings.Index(line, `le="`)
	if i < 0 {
		return line
	}
	i += len(`le="`)
	j := strings.IndexByte(line[i:], '"')
	if j < 0 {
		return line
	}
	v, err := strconv.ParseFloat(line[i:i+j], 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return line
	}
	return line[:i] + pythonFloat(v) + line[i+j:]
}

// pythonFloat is Python's repr of v, with prometheus_client's switch to an exponent beyond six
// integer digits, for the finite non-negative values of bucket bounds.
func pythonFloat(v float64) string {
	if v != 0 && (v < 1e-4 || v >= 1e16) {
		return strconv.FormatFloat(v, 'g', -1, 64) // Python's repr: 1e-05, 1e+16
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	dot := strings.IndexByte(s, '.')
	if dot < 0 {
		dot = len(s)
		s += ".0"
	}
	if v > 0 && dot > 6 {
		return strings.TrimRight(s[:1]+"."+s[1:dot], "0.") + "e+0" + strconv.Itoa(dot-1)
	}
	return s
}

// Shutdown drains the server within ctx, then closes the connections still open.
func Shutdown(ctx context.Context, srv *http.Server) error {
	if err := srv.Shutdown(ctx); err != nil {
		// The requests still running past the drain's deadline lose their connections (and
		// with them their contexts), so they stop before the modules they use are stopped.
		_ = srv.Close()
		return fmt.Errorf("drain http server: %w", err)
	}
	return nil
}
