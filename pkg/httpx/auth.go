package httpx

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// API keys (--http.api-keys-file). The original service had no authentication at all
// (api-contract §16.24): anyone who reached the port could log events for any user, read
// every metric and run the expensive analytics. Without the file recsys behaves the same,
// for clients of the original and for deployments behind an authenticating gateway; with
// it every request but the probes and the API's documentation must carry a key, and a key
// opens only its scopes.

// Scopes a key can hold.
const (
	// ScopeClient opens the product API: /reco, /recommend, /log/* and /event.
	ScopeClient = "client"
	// ScopeOps opens the operational endpoints: metrics, analytics, /contract and profiles.
	ScopeOps = "ops"
)

// HeaderAPIKey is the header a key may come in besides Authorization: Bearer.
const HeaderAPIKey = "X-API-Key"

// apiKey is one line of the keys file.
type apiKey struct {
	name   string
	scopes []string
	// rate is the key's request rate limit per second (0: none). limiter enforces it in this
	// process: always with --http.rate-limit-scope=process, and while Redis fails with
	// cluster. It is kept across reloads while the rate stays (Auth.maybeReload).
	rate    float64
	limiter *rate.Limiter
}

// keySet maps the SHA-256 of each secret to its key: a presented token is hashed and looked
// up, so no comparison runs over a secret's bytes.
type keySet map[[sha256.Size]byte]apiKey

var keyNamePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// minSecretLen is the shortest plain secret accepted: 16 characters of a random token are
// beyond guessing; shorter ones are likely passwords.
const minSecretLen = 16

// LoadAPIKeys reads a keys file: one key per line, "<name> <scopes> <secret> [rate=<N>]",
// where scopes is a comma-separated subset of client and ops, secret is either the token
// itself (16 characters or more) or "sha256:" and the 64 hex digits of its SHA-256, so that
// the file need not hold the token, and N limits the key to N requests per second (a burst of
// a second's worth; beyond it 429), in each process or across them (RateLimits). Blank lines
// and lines starting with # are ignored. Every problem is reported with its line number and
// never with a field's value: a line whose fields were swapped by hand could put the secret
// anywhere.
func LoadAPIKeys(path string) (keySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read API keys file: %w", err)
	}
	keys := keySet{}
	names := map[string]int{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s line %d: %s", path, line, fmt.Sprintf(format, args...)))
		}
		f := strings.Fields(text)
		if len(f) != 3 && len(f) != 4 {
			bad("want three fields \"<name> <scopes> <secret>\" and an optional \"rate=<requests per second>\", got %d", len(f))
			continue
		}
		name, scopeList, secret := f[0], f[1], f[2]
		var perSecond float64
		if len(f) == 4 {
			v, ok := strings.CutPrefix(f[3], "rate=")
			n, err := strconv.ParseFloat(v, 64)
			if !ok || err != nil || !(n > 0 && n <= 1e6) {
				bad("the fourth field must be \"rate=<requests per second>\", above 0 and at most 1000000")
				continue
			}
			perSecond = n
		}
		if !keyNamePattern.MatchString(name) {
			bad("the key name (the first field) must be 1-64 letters, digits, '.', '_' or '-'")
			continue
		}
		if prev, dup := names[name]; dup {
			bad("the key name is already used on line %d", prev)
			continue
		}
		names[name] = line
		var scopes []string
		valid := true
		for _, s := range strings.Split(scopeList, ",") {
			switch {
			case s != ScopeClient && s != ScopeOps:
				valid = false
			case !slices.Contains(scopes, s):
				scopes = append(scopes, s)
			}
		}
		if !valid {
			bad("the second field must be the scopes: %s, %s or %s,%s", ScopeClient, ScopeOps, ScopeClient, ScopeOps)
			continue
		}
		var sum [sha256.Size]byte
		if hexSum, hashed := strings.CutPrefix(secret, "sha256:"); hashed {
			b, err := hex.DecodeString(hexSum)
			if err != nil || len(b) != sha256.Size {
				bad("a hashed secret (the third field) is \"sha256:\" and 64 hex digits")
				continue
			}
			copy(sum[:], b)
		} else {
			if len(secret) < minSecretLen {
				bad("the secret (the third field) is %d characters, want at least %d (or give its SHA-256 as sha256:<hex>)", len(secret), minSecretLen)
				continue
			}
			sum = sha256.Sum256([]byte(secret))
		}
		if other, dup := keys[sum]; dup {
			bad("the secret is the same as on line %d", names[other.name])
			continue
		}
		keys[sum] = apiKey{name: name, scopes: scopes, rate: perSecond}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read API keys file: %w", err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no key: give at least one \"<name> <scopes> <secret>\" line, or leave --http.api-keys-file empty to serve without authentication", path)
	}
	return keys, nil
}

// ScopeOf is the scope a request on path needs with --http.api-keys-file ("" for none): the
// probes and the API's documentation are open (kubelets and browsers send no key), the
// operational endpoints need ops, and everything else, unknown paths included, needs client.
func ScopeOf(path string) string {
	if len(path) > 1 {
		path = strings.TrimRight(path, "/") // /healthz/ redirects to /healthz
	}
	switch {
	case path == "/healthz" || path == "/livez" || path == "/readyz" ||
		path == "/openapi.json" || path == "/docs" || path == "/redoc":
		return ""
	case path == "/metrics" || strings.HasPrefix(path, "/metrics/") || path == "/contract" ||
		strings.HasPrefix(path, "/analytics/") || strings.HasPrefix(path, "/debug/"):
		return ScopeOps
	}
	return ScopeClient
}

// Auth checks API keys. Its keys are reloaded when the file changes, at most every
// reloadEvery, so a key can be added or revoked (a Kubernetes secret updated in place)
// without a restart; a file that no longer loads keeps the keys in force and is reported.
type Auth struct {
	path string
	log  *slog.Logger
	keys atomic.Pointer[keySet]
	// stamp identifies the loaded file's version (modification time and size); next is
	// the Unix nanosecond after which a request checks it again.
	stamp atomic.Pointer[fileStamp]
	next  atomic.Int64

	// cluster, when set, decides the requests of keys with a rate (--http.rate-limit-scope).
	cluster *clusterLimits

	refused      func(reason string) *metrics.Counter
	reloadErrors *metrics.Counter
	reloads      *metrics.Counter
}

type fileStamp struct {
	mod  time.Time
	size int64
}

const reloadEvery = 5 * time.Second

// NewAuth loads the keys file and returns the checker, counting the keys' rates as limits
// says. Its metrics are in the process' default set: recsys_http_auth_refused_total{reason:
// missing, invalid, scope, rate}, recsys_http_auth_keys, recsys_http_auth_reloads_total,
// recsys_http_auth_reload_errors_total and, with RateLimitCluster,
// recsys_http_rate_limit_fallback_total (requests the process decided because Redis failed).
func NewAuth(path string, log *slog.Logger, limits RateLimits) (*Auth, error) {
	a := &Auth{path: path, log: log,
		refused: func(reason string) *metrics.Counter {
			return metrics.GetOrCreateCounter(`recsys_http_auth_refused_total{reason="` + reason + `"}`)
		},
		reloadErrors: metrics.GetOrCreateCounter("recsys_http_auth_reload_errors_total"),
		reloads:      metrics.GetOrCreateCounter("recsys_http_auth_reloads_total"),
	}
	switch limits.Scope {
	case "", RateLimitProcess:
	case RateLimitCluster:
		c, err := newClusterLimits(limits, log)
		if err != nil {
			return nil, err
		}
		a.cluster = c
	default:
		return nil, fmt.Errorf("--http.rate-limit-scope must be %q or %q, got %q", RateLimitProcess, RateLimitCluster, limits.Scope)
	}
	st, err := stampOf(path)
	if err != nil {
		return nil, err
	}
	keys, err := LoadAPIKeys(path)
	if err != nil {
		return nil, err
	}
	withLimiters(keys, nil)
	a.keys.Store(&keys)
	a.stamp.Store(&st)
	a.next.Store(time.Now().Add(reloadEvery).UnixNano())
	metrics.GetOrCreateGauge("recsys_http_auth_keys", func() float64 { return float64(len(*a.keys.Load())) })
	return a, nil
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, fmt.Errorf("read API keys file: %w", err)
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// maybeReload reloads the keys when the file changed since the last look; one request in
// reloadEvery looks (a stat), the others go on with the keys in force.
func (a *Auth) maybeReload(now time.Time) {
	next := a.next.Load()
	if now.UnixNano() < next || !a.next.CompareAndSwap(next, now.Add(reloadEvery).UnixNano()) {
		return
	}
	st, err := stampOf(a.path)
	if err == nil && st == *a.stamp.Load() {
		return
	}
	var keys keySet
	if err == nil {
		keys, err = LoadAPIKeys(a.path)
	}
	if err != nil {
		a.reloadErrors.Inc()
		a.log.Error("API keys file changed but does not load; the keys loaded before stay in force", "err", err,
			"mitigation", "fix the file; it is read again within "+reloadEvery.String())
		return
	}
	withLimiters(keys, *a.keys.Load())
	a.keys.Store(&keys)
	a.stamp.Store(&st)
	a.reloads.Inc()
	a.log.Info("API keys reloaded", "keys", len(keys))
}

// withLimiters gives every key with a rate its limiter: the one it had in prev when its name
// and rate are unchanged (a reload does not refill buckets), else a new one whose burst is a
// second's worth of requests. With RateLimitCluster the limiter decides only while Redis
// fails, at the key's full rate: a bound per process, never none.
func withLimiters(keys, prev keySet) {
	old := map[string]apiKey{}
	for _, k := range prev {
		old[k.name] = k
	}
	for sum, k := range keys {
		if k.rate == 0 {
			continue
		}
		if o, ok := old[k.name]; ok && o.rate == k.rate {
			k.limiter = o.limiter
		} else {
			k.limiter = rate.NewLimiter(rate.Limit(k.rate), burst(k.rate))
		}
		keys[sum] = k
	}
}

// token returns the key a request presents: Authorization: Bearer <token>, else X-API-Key.
func token(req *http.Request) string {
	if h := req.Header.Get(echo.HeaderAuthorization); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	return strings.TrimSpace(req.Header.Get(HeaderAPIKey))
}

// Middleware refuses a request without a key of the scope its path needs: 401 (with
// WWW-Authenticate) without a known key, 403 with a key lacking the scope, 429 (with
// Retry-After) for a key over its rate. The answers keep FastAPI's shape and texts
// ({"detail": "Not authenticated"}).
func (a *Auth) Middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		path := c.Path() // the route's template; the raw path when no route matched
		if path == "" {
			path = req.URL.Path
		}
		need := ScopeOf(path)
		if need == "" {
			return next(c)
		}
		a.maybeReload(time.Now())
		tok := token(req)
		if tok == "" {
			a.refused("missing").Inc()
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, "Bearer")
			return echo.NewHTTPError(http.StatusUnauthorized, "Not authenticated")
		}
		k, ok := (*a.keys.Load())[sha256.Sum256([]byte(tok))]
		if !ok {
			a.refused("invalid").Inc()
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer error="invalid_token"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "Invalid API key")
		}
		if !slices.Contains(k.scopes, need) {
			a.refused("scope").Inc()
			return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("API key %q lacks the %s scope this path needs", k.name, need))
		}
		if k.limiter == nil {
			return next(c)
		}
		var wait time.Duration
		shared := false
		if a.cluster != nil {
			wait, shared = a.cluster.allow(k)
		} else {
			wait = allowLocal(k)
		}
		if wait > 0 {
			a.refused("rate").Inc()
			c.Response().Header().Set("Retry-After", retryAfter(wait))
			where := "on this server"
			if shared {
				where = "across all servers"
			}
			return echo.NewHTTPError(http.StatusTooManyRequests, fmt.Sprintf("API key %q is over its rate of %g requests/s %s", k.name, k.rate, where))
		}
		return next(c)
	}
}
