package httpx

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
)

const (
	clientSecret = "client-secret-0123456789"
	opsSecret    = "ops-secret-0123456789abcd"
	bothSecret   = "both-secret-0123456789abc"
)

func sha256Hex(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }

func writeKeys(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// authServer is the process' echo setup with routes of every class and the keys of path.
func authServer(t *testing.T, path string) (*echo.Echo, *Auth) {
	t.Helper()
	return authServerWith(t, path, RateLimits{}, slog.New(slog.DiscardHandler))
}

// authServerWith is authServer counting the keys' rates as limits says, logging to log.
func authServerWith(t *testing.T, path string, limits RateLimits, log *slog.Logger) (*echo.Echo, *Auth) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Pprof = true
	cfg.APIKeysFile = path
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := New(cfg, slog.New(slog.DiscardHandler))
	ok := func(c echo.Context) error { return c.String(http.StatusOK, "ok") }
	for _, p := range []string{"/reco", "/recommend", "/healthz", "/livez", "/readyz", "/openapi.json", "/docs", "/redoc", "/metrics", "/metrics/prometheus", "/metrics/reco", "/analytics/baseline", "/contract"} {
		e.GET(p, ok)
	}
	for _, p := range []string{"/log/watch", "/log/impression", "/log/batch", "/event"} {
		e.POST(p, ok)
	}
	a, err := NewAuth(path, log, limits)
	if err != nil {
		t.Fatal(err)
	}
	e.Use(a.Middleware)
	return e, a
}

// TestAPIKeysGuardEveryPathByScope: with a keys file, the probes and the API's documentation
// stay open, the product API needs a client key and the operational endpoints an ops key,
// as Authorization: Bearer or X-API-Key; a refusal keeps the request id and FastAPI's
// {"detail": ...} shape, and a 401 says how to authenticate.
func TestAPIKeysGuardEveryPathByScope(t *testing.T) {
	e, _ := authServer(t, writeKeys(t, "# name scopes secret\n"+
		"app client "+clientSecret+"\n"+
		"\n"+
		"grafana ops sha256:"+sha256Hex(opsSecret)+"\n"+
		"admin client,ops "+bothSecret+"\n"))
	bearer := func(s string) map[string]string { return map[string]string{"Authorization": "Bearer " + s} }
	cases := []struct {
		method, path string
		headers      map[string]string
		want         int
		detail       string // a substring of the body
	}{
		{"GET", "/healthz", nil, 200, "ok"},
		{"GET", "/livez", nil, 200, "ok"},
		{"GET", "/readyz", nil, 200, "ok"},
		{"GET", "/openapi.json", nil, 200, "ok"},
		{"GET", "/docs", nil, 200, "ok"},
		{"GET", "/redoc", nil, 200, "ok"},
		{"GET", "/healthz", bearer("wrong-secret-0123456789"), 200, "ok"}, // an open path ignores keys
		{"GET", "/reco", nil, 401, `"detail":"Not authenticated"`},
		{"GET", "/reco", bearer("wrong-secret-0123456789"), 401, `"detail":"Invalid API key"`},
		{"GET", "/reco", map[string]string{"Authorization": "Basic " + clientSecret}, 401, "Not authenticated"},
		{"GET", "/reco", bearer(clientSecret), 200, "ok"},
		{"GET", "/reco", map[string]string{"Authorization": "bearer  " + clientSecret}, 200, "ok"},
		{"GET", "/reco", map[string]string{HeaderAPIKey: clientSecret}, 200, "ok"},
		{"GET", "/recommend", bearer(bothSecret), 200, "ok"},
		{"GET", "/reco", bearer(opsSecret), 403, `API key \"grafana\" lacks the client scope`},
		{"POST", "/log/watch", nil, 401, "Not authenticated"},
		{"POST", "/log/watch", bearer(clientSecret), 200, "ok"},
		{"POST", "/log/impression", bearer(clientSecret), 200, "ok"},
		{"POST", "/log/batch", bearer(opsSecret), 403, "lacks the client scope"},
		{"POST", "/event", bearer(clientSecret), 200, "ok"},
		{"GET", "/metrics/prometheus", nil, 401, "Not authenticated"},
		{"GET", "/metrics/prometheus", bearer(clientSecret), 403, `API key \"app\" lacks the ops scope`},
		{"GET", "/metrics/prometheus", bearer(opsSecret), 200, "ok"},
		{"GET", "/metrics", bearer(opsSecret), 200, "ok"},
		{"GET", "/metrics/reco", bearer(clientSecret), 403, "lacks the ops scope"},
		{"GET", "/metrics/reco", bearer(bothSecret), 200, "ok"},
		{"GET", "/analytics/baseline", bearer(clientSecret), 403, "lacks the ops scope"},
		{"GET", "/analytics/baseline", map[string]string{HeaderAPIKey: opsSecret}, 200, "ok"},
		{"GET", "/contract", bearer(clientSecret), 403, "lacks the ops scope"},
		{"GET", "/debug/pprof/symbol", nil, 401, "Not authenticated"},
		{"GET", "/debug/pprof/symbol", bearer(clientSecret), 403, "lacks the ops scope"},
		{"GET", "/debug/pprof/symbol", bearer(opsSecret), 200, ""},
		// A path no route serves needs a key before it is told so: nothing is disclosed.
		{"GET", "/no-such-path", nil, 401, "Not authenticated"},
		{"GET", "/no-such-path", bearer(clientSecret), 404, "Not Found"},
		// The secret's hash is the key, not the hash itself.
		{"GET", "/metrics", bearer(sha256Hex(opsSecret)), 401, "Invalid API key"},
	}
	for _, tc := range cases {
		req := httptest.NewRequest(tc.method, tc.path, nil)
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		name := tc.method + " " + tc.path + " " + strings.Join(keysOf(tc.headers), ",")
		if rec.Code != tc.want || !strings.Contains(rec.Body.String(), tc.detail) {
			t.Errorf("%s = %d %.100q, want %d containing %q", name, rec.Code, rec.Body.String(), tc.want, tc.detail)
		}
		if rec.Header().Get(HeaderRequestID) == "" {
			t.Errorf("%s: no %s", name, HeaderRequestID)
		}
		if got := rec.Header().Get(echo.HeaderWWWAuthenticate); (tc.want == 401) != strings.HasPrefix(got, "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", name, got)
		}
		for _, s := range []string{clientSecret, opsSecret, bothSecret} {
			if strings.Contains(rec.Body.String(), s) {
				t.Errorf("%s: the answer shows a secret", name)
			}
		}
	}
	for reason, min := range map[string]float64{"missing": 6, "invalid": 2, "scope": 7} {
		if got := metrics.GetOrCreateCounter(`recsys_http_auth_refused_total{reason="` + reason + `"}`).Get(); float64(got) < min {
			t.Errorf("refused{reason=%q} = %d, want at least %v", reason, got, min)
		}
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestAPIKeysFileProblems: a keys file that cannot serve is refused at start, each problem
// with its line; secrets never appear in the errors.
func TestAPIKeysFileProblems(t *testing.T) {
	cases := []struct {
		name, content, want string
	}{
		{"empty", "# nothing\n\n", "holds no key"},
		{"two fields", "app " + clientSecret + "\n", `line 1: want three fields "<name> <scopes> <secret>" and an optional "rate=<requests per second>", got 2`},
		{"unknown scope", "app admin " + clientSecret + "\n", `line 1: the second field must be the scopes: client, ops or client,ops`},
		{"empty scope", "app client, " + clientSecret + "\n", `the second field must be the scopes`},
		{"short secret", "app client short\n", `line 1: the secret (the third field) is 5 characters, want at least 16`},
		{"bad hash", "app client sha256:abcd\n", `line 1: a hashed secret (the third field) is "sha256:" and 64 hex digits`},
		{"bad name", "app/1 client " + clientSecret + "\n", `line 1: the key name (the first field) must be`},
		{"bad rate", "app client " + clientSecret + " rate=0\n", `line 1: the fourth field must be "rate=<requests per second>"`},
		{"not a rate", "app client " + clientSecret + " 5\n", `the fourth field must be`},
		{"five fields", "app client " + clientSecret + " rate=5 x\n", `got 5`},
		{"duplicate name", "app client " + clientSecret + "\napp ops " + opsSecret + "\n", `line 2: the key name is already used on line 1`},
		{"shared secret", "app client " + clientSecret + "\nother ops sha256:" + sha256Hex(clientSecret) + "\n", `line 2: the secret is the same as on line 1`},
	}
	for _, tc := range cases {
		cfg := DefaultConfig()
		cfg.APIKeysFile = writeKeys(t, tc.content)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--http.api-keys-file") {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
			continue
		}
		for _, s := range []string{clientSecret, opsSecret, "short"} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: the error shows a secret: %v", tc.name, err)
			}
		}
	}
	cfg := DefaultConfig()
	cfg.APIKeysFile = filepath.Join(t.TempDir(), "missing")
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

// TestAPIKeysReloadWhenTheFileChanges: a key added to the file works and a key removed stops
// working once the file is read again, without a restart; a file changed into one that does
// not load keeps the keys in force.
func TestAPIKeysReloadWhenTheFileChanges(t *testing.T) {
	path := writeKeys(t, "app client "+clientSecret+"\n")
	e, a := authServer(t, path)
	get := func(secret string) int {
		req := httptest.NewRequest(http.MethodGet, "/reco", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec.Code
	}
	// Forces the next request to look at the file, as reloadEvery passing would.
	recheck := func() { a.next.Store(time.Now().Add(-time.Second).UnixNano()) }
	rewrite := func(content string, mod time.Time) {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil { // a new mtime even within the clock's granularity
			t.Fatal(err)
		}
	}
	if got := get(clientSecret); got != 200 {
		t.Fatalf("first key: %d", got)
	}
	rewrite("app2 client "+bothSecret+"\n", time.Now().Add(time.Minute))
	if got := get(bothSecret); got != 401 {
		t.Errorf("a new key worked before the file was looked at again: %d", got)
	}
	recheck()
	if got := get(bothSecret); got != 200 {
		t.Errorf("added key after the reload: %d", got)
	}
	if got := get(clientSecret); got != 401 {
		t.Errorf("removed key after the reload: %d", got)
	}
	errs := a.reloadErrors.Get()
	rewrite("app2 nonsense "+bothSecret+"\n", time.Now().Add(2*time.Minute))
	recheck()
	if got := get(bothSecret); got != 200 {
		t.Errorf("a broken file locked out the keys in force: %d", got)
	}
	if a.reloadErrors.Get() != errs+1 {
		t.Errorf("reload errors %d, want %d", a.reloadErrors.Get(), errs+1)
	}
}

// TestAPIKeyRateLimit: a key with rate=N gets a second's worth of requests (at least one) at once, then
// 429 with Retry-After until its bucket refills; other keys are not affected; a reload that
// keeps the key's rate keeps its bucket, and one that changes the rate takes effect.
func TestAPIKeyRateLimit(t *testing.T) {
	// Half a request per second: a burst of one, refilled every 2 s, so the test's requests,
	// however slow the machine, fall within one refill.
	path := writeKeys(t, "limited client "+clientSecret+" rate=0.5\nfree client "+bothSecret+"\n")
	e, a := authServer(t, path)
	get := func(secret string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/reco", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec
	}
	codes := func(secret string, n int) []int {
		var out []int
		for range n {
			out = append(out, get(secret).Code)
		}
		return out
	}
	start := time.Now()
	if got := codes(clientSecret, 3); !slices.Equal(got, []int{200, 429, 429}) {
		t.Errorf("limited key, 3 requests at once: %v, want 1 served then 429", got)
	}
	// Retry-After is when the bucket holds a request again (2 s after the served one), not
	// the 1 s a whole-rate key would wait.
	rec := get(clientSecret)
	if left := 2*time.Second - time.Since(start); rec.Code != 429 || !retryAfterFits(rec.Header().Get("Retry-After"), left) ||
		!strings.Contains(rec.Body.String(), `API key \"limited\" is over its rate of 0.5 requests/s`) {
		t.Errorf("over the rate: %d Retry-After %q (%s left) %s", rec.Code, rec.Header().Get("Retry-After"), left, rec.Body)
	}
	if got := codes(bothSecret, 10); slices.Contains(got, 429) {
		t.Errorf("a key without a rate was limited: %v", got)
	}
	// A reload with the same rate keeps the (empty) bucket; a higher rate is a new one.
	if err := os.WriteFile(path, []byte("limited client "+clientSecret+" rate=0.5\nfree client "+bothSecret+"\n# touched\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(path, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	a.next.Store(0)
	if got := get(clientSecret).Code; got != 429 {
		t.Errorf("after a reload keeping the rate: %d, want the bucket still empty (429)", got)
	}
	if err := os.WriteFile(path, []byte("limited client "+clientSecret+" rate=1000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(path, time.Now().Add(2*time.Minute), time.Now().Add(2*time.Minute))
	a.next.Store(0)
	if got := codes(clientSecret, 5); slices.Contains(got, 429) {
		t.Errorf("after raising the rate: %v", got)
	}
	if got := metrics.GetOrCreateCounter(`recsys_http_auth_refused_total{reason="rate"}`).Get(); got < 4 {
		t.Errorf("refused{reason=rate} = %d, want at least 4", got)
	}
}

// A line whose fields were swapped by hand (a common slip) is refused without its secret in
// the error, which is printed at start and logged by every reload that fails.
func TestAPIKeysFileErrorsNeverQuoteTheSecret(t *testing.T) {
	const secret = "tok_9f8e7d6c5b4a39281706"
	const b64 = "Zm9vYmFyYmF6cXV4+/secret0123"
	for _, tc := range []struct{ name, line, secret string }{
		{"scopes and secret swapped", "app " + secret + " client", secret},
		{"name and secret swapped, base64 secret", b64 + " client app-name-too-long-is-fine", b64},
		{"name and secret swapped", secret + " client app", secret},
	} {
		_, err := LoadAPIKeys(writeKeys(t, tc.line+"\n"))
		if err == nil {
			t.Errorf("%s: loaded", tc.name)
			continue
		}
		if strings.Contains(err.Error(), tc.secret) {
			t.Errorf("%s: the error shows the secret: %v", tc.name, err)
		}
	}
}
