package guardrails

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"recsys/pkg/apikey"
	"recsys/pkg/flagenv"
)

// DecodeObject decodes one input document, which must be a JSON object (the original tool
// crashed on anything else; here it is a clear error naming the input).
func DecodeObject(name string, b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON: %w", name, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be a JSON object, got %s", name, jsonKind(v))
	}
	return m, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

// ReadFiles reads the three inputs from files.
func ReadFiles(baseline, contract, recoMetrics string) (Inputs, map[string]string, error) {
	var in Inputs
	var errs []error
	for _, f := range []struct {
		path string
		flag string
		dst  *map[string]any
	}{{baseline, "--baseline-json", &in.Baseline}, {contract, "--contract-json", &in.Contract}, {recoMetrics, "--reco-metrics-json", &in.RecoMetrics}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.flag, err))
			continue
		}
		m, err := DecodeObject(f.flag+" "+f.path, b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*f.dst = m
	}
	src := map[string]string{"baseline": baseline, "contract": contract, "reco_metrics": recoMetrics}
	return in, src, errors.Join(errs...)
}

// Fetch gets the three inputs from a running API: /analytics/baseline?days=N, /contract and
// /metrics/reco. With saveDir set, each body is also written there under the file names the
// flags default to, so a CI run keeps what the gate saw. A non-empty apiKey is sent as
// Authorization: Bearer on every request (all three need the ops scope).
func Fetch(ctx context.Context, client *http.Client, baseURL, apiKey string, days int, saveDir string) (Inputs, map[string]string, error) {
	base := strings.TrimRight(baseURL, "/")
	// Not url's error, which quotes the whole URL, password included (one with a raw '%'
	// does not parse); and only http(s) with a host: the client's errors quote any other URL
	// whole too ("ci:pw@host" parses, as scheme "ci").
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Inputs{}, nil, fmt.Errorf("--base-url %q is not an http(s) URL such as http://localhost:8080 (a password in it must be percent-encoded)", flagenv.Redact(baseURL))
	}
	var in Inputs
	src := map[string]string{}
	var errs []error
	for _, f := range []struct {
		key, path, file string
		dst             *map[string]any
	}{
		{"baseline", "/analytics/baseline?days=" + strconv.Itoa(days), "baseline-kpi.json", &in.Baseline},
		{"contract", "/contract", "contract.json", &in.Contract},
		{"reco_metrics", "/metrics/reco", "reco-metrics.json", &in.RecoMetrics},
	} {
		u := base + f.path
		// The base URL may carry a gateway's credentials: the report and the errors, which
		// CI archives, name it without its password.
		src[f.key] = flagenv.Redact(u)
		b, err := get(ctx, client, u, apiKey)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if saveDir != "" {
			if err := os.WriteFile(filepath.Join(saveDir, f.file), b, 0o644); err != nil {
				errs = append(errs, fmt.Errorf("save %s: %w", f.file, err))
			}
		}
		m, err := DecodeObject(src[f.key], b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*f.dst = m
	}
	return in, src, errors.Join(errs...)
}

func get(ctx context.Context, client *http.Client, u, apiKey string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	name := flagenv.Redact(u)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", name, err)
	}
	apikey.Set(req, apiKey)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d: %s%s", name, resp.StatusCode, truncate(string(b), 300), authHint(resp.StatusCode, apiKey))
	}
	return b, nil
}

// authHint explains a 401 or 403 (pkg/apikey).
func authHint(status int, apiKey string) string {
	if h := apikey.Hint(status, apiKey, "guardrails needs ops"); h != "" {
		return " (" + h + ")"
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
