// Package loadgen is the logic behind `recsys load`: an HTTP load generator for the recsys
// API with the original load_reco tool's flags and report, plus
//   - an open-loop mode (--rate): requests are due on a fixed schedule and latency is measured
//     from the due time, so a slow server cannot slow the generator down and hide its own
//     queueing (no coordinated omission); the closed-loop mode (--concurrency workers sending
//     back to back) is kept for throughput tests;
//   - scenarios: reco (GET /reco), ingest (POST /log/watch or /log/batch) and mixed (GET /reco,
//     then a watch of a shown item with --watch-prob and of a catalog item with
//     --organic-watch-prob, as real clients do);
//   - HDR histograms (3 significant digits) for every latency figure, a per-second timeline,
//     a progress bar on a terminal, and JSON and self-contained HTML reports.
//
// Every run is bounded in request count and time, and targets only loopback addresses unless
// the operator allows another host explicitly.
package loadgen

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Scenarios.
const (
	ScenarioReco   = "reco"
	ScenarioIngest = "ingest"
	ScenarioMixed  = "mixed"
)

// Config is the configuration of one run (flags of `recsys load`).
type Config struct {
	BaseURL          string
	Requests         int
	Concurrency      int
	K                int
	Timeout          time.Duration
	Warmup           int
	Autolog          bool
	Rate             float64
	Duration         time.Duration
	Scenario         string
	IngestMode       string
	BatchSize        int
	Users            int
	Sessions         int
	Items            int
	WatchProb        float64
	OrganicWatchProb float64
	MaxErrorRatePct  float64
	AllowNonLoopback bool
	Seed             int64
	OutputJSON       string
	OutputHTML       string
	Progress         string
	// APIKey is sent as a bearer token on every request; the report never echoes it.
	APIKey string
}

// DefaultConfig returns the defaults: the contract's (except the base URL, which is the API's
// real port 8080, not the original's 8000).
func DefaultConfig() Config {
	return Config{
		BaseURL: "http://localhost:8080", Requests: 2000, Concurrency: 50, K: 20, Timeout: 2 * time.Second, Warmup: 200,
		Duration: 5 * time.Minute, Scenario: ScenarioReco, IngestMode: "watch", BatchSize: 20,
		Users: 5000, Sessions: 500000, Items: 1000, WatchProb: 0.3, OrganicWatchProb: 0.1,
		MaxErrorRatePct: 10, Seed: 1, Progress: "auto",
	}
}

// RegisterFlags adds the flags of `recsys load`.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.BaseURL, "base-url", c.BaseURL, "API base URL (loopback only unless --allow-non-loopback)")
	fs.IntVar(&c.Requests, "requests", c.Requests, "operations in the benchmark (one operation = one /reco call, or one ingest post); the run also stops at --duration")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "workers: requests in flight at most (closed loop: each sends back to back)")
	fs.IntVar(&c.K, "k", c.K, "k of GET /reco (1-200)")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "per-request timeout")
	fs.Float64Var(new(float64), "timeout-sec", 0, "per-request timeout in seconds (the original tool's flag; overrides --timeout)")
	fs.IntVar(&c.Warmup, "warmup", c.Warmup, "operations sent before the benchmark (at --rate in open loop), results discarded")
	fs.BoolVar(&c.Autolog, "autolog-impressions", c.Autolog, "ask /reco to log its impressions (x_autolog_impressions=true)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "open loop: operations per second on a fixed schedule, latency measured from the due time (0: closed loop)")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "upper bound of the benchmark's length (it also stops after --requests)")
	fs.StringVar(&c.Scenario, "scenario", c.Scenario, "reco (GET /reco), ingest (POST /log/watch or /log/batch, see --ingest-mode) or mixed (GET /reco then watches of shown items)")
	fs.StringVar(&c.IngestMode, "ingest-mode", c.IngestMode, "ingest scenario: watch (one POST /log/watch per operation) or batch (POST /log/batch of --batch-size events)")
	fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "events per /log/batch in the ingest batch scenario")
	fs.IntVar(&c.Users, "users", c.Users, "distinct users (load-user-1..N)")
	fs.IntVar(&c.Sessions, "sessions", c.Sessions, "distinct sessions (session-1..N)")
	fs.IntVar(&c.Items, "items", c.Items, "catalog size for organic and ingest watches (load-item-1..N)")
	fs.Float64Var(&c.WatchProb, "watch-prob", c.WatchProb, "mixed: probability that a /reco answer is followed by a watch of one shown item (top positions likelier)")
	fs.Float64Var(&c.OrganicWatchProb, "organic-watch-prob", c.OrganicWatchProb, "mixed: probability of an extra watch of a random catalog item (search, direct links; also seeds a cold stack)")
	fs.Float64Var(&c.MaxErrorRatePct, "max-error-rate-pct", c.MaxErrorRatePct, "exit 2 when the error rate (percent of all requests) is above this")
	fs.BoolVar(&c.AllowNonLoopback, "allow-non-loopback", c.AllowNonLoopback, "allow a --base-url that is not a loopback address (never against hosts you do not own)")
	fs.Int64Var(&c.Seed, "seed", c.Seed, "random seed of users, sessions, items and watch choices")
	fs.StringVar(&c.OutputJSON, "output-json", c.OutputJSON, "write the JSON report to this file")
	fs.StringVar(&c.OutputHTML, "output-html", c.OutputHTML, "write a self-contained HTML report (latency over time, percentile plot) to this file")
	fs.StringVar(&c.Progress, "progress", c.Progress, "progress bar on stderr: auto (when stderr is a terminal), always or never")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "API key sent as Authorization: Bearer on every request, needed when the server runs with --http.api-keys-file; "+
		"load needs the client scope for its traffic, plus the ops scope for the report's /contract and /metrics/reco (without it the SLA targets are unknown). "+
		"Prefer the environment variable RECSYS_API_KEY to the flag: flags show in process listings")
	flagenv.Secret(fs, "api-key")
}

// ApplyLegacyFlags applies --timeout-sec when it was set.
func (c *Config) ApplyLegacyFlags(fs *pflag.FlagSet) {
	if f := fs.Lookup("timeout-sec"); f != nil && f.Changed {
		if v, err := fs.GetFloat64("timeout-sec"); err == nil {
			c.Timeout = time.Duration(v * float64(time.Second))
		}
	}
}

// Validate reports every invalid setting, naming the flag.
func (c *Config) Validate() error {
	var p flagenv.Problems
	if _, err := ParseBaseURL(c.BaseURL); err != nil {
		p.Add(err)
	}
	p.IntBetween("requests", c.Requests, 1, 100_000_000)
	p.IntBetween("concurrency", c.Concurrency, 1, 10_000)
	p.IntBetween("k", c.K, 1, 200)
	p.IntBetween("warmup", c.Warmup, 0, 10_000_000)
	p.IntBetween("batch-size", c.BatchSize, 1, 1000)
	p.IntBetween("users", c.Users, 1, 100_000_000)
	p.IntBetween("sessions", c.Sessions, 1, 100_000_000)
	p.IntBetween("items", c.Items, 1, 100_000_000)
	if c.Timeout <= 0 {
		p.Addf("--timeout must be > 0, got %s", c.Timeout)
	}
	// Written so that NaN fails too (every comparison with it is false): it would pass a
	// range test and only break the report's JSON after the whole run. Past 10 million/s the
	// interval between operations rounds to 0 ns and the "open loop" would be a closed one.
	if !(c.Rate >= 0 && c.Rate <= 10_000_000) {
		p.Addf("--rate must be between 0 (closed loop) and 10000000 operations/s, got %g", c.Rate)
	}
	if c.Duration <= 0 || c.Duration > 24*time.Hour {
		p.Addf("--duration must be between 1ns and 24h, got %s", c.Duration)
	}
	switch c.Scenario {
	case ScenarioReco, ScenarioIngest, ScenarioMixed:
	default:
		p.Addf("--scenario must be reco, ingest or mixed, got %q", c.Scenario)
	}
	if c.IngestMode != "watch" && c.IngestMode != "batch" {
		p.Addf("--ingest-mode must be watch or batch, got %q", c.IngestMode)
	}
	for _, pr := range []struct {
		flag string
		v    float64
	}{{"watch-prob", c.WatchProb}, {"organic-watch-prob", c.OrganicWatchProb}} {
		if !(pr.v >= 0 && pr.v <= 1) {
			p.Addf("--%s must be between 0 and 1, got %g", pr.flag, pr.v)
		}
	}
	if !(c.MaxErrorRatePct >= 0 && c.MaxErrorRatePct <= 100) {
		p.Addf("--max-error-rate-pct must be between 0 and 100, got %g", c.MaxErrorRatePct)
	}
	switch c.Progress {
	case "auto", "always", "never":
	default:
		p.Addf("--progress must be auto, always or never, got %q", c.Progress)
	}
	return p.Err()
}

// ParseBaseURL checks that s is an http(s) URL with a host.
func ParseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Redacted: the URL may carry a gateway's password, and one with a raw '%' lands here.
		return nil, fmt.Errorf("--base-url must be an http(s) URL such as http://localhost:8080, got %q", flagenv.Redact(s))
	}
	return u, nil
}

// CheckLoopback refuses a base URL whose host is not (or does not resolve only to) a loopback
// address: a load test must never hit a host by accident.
func CheckLoopback(ctx context.Context, base string) error {
	u, err := ParseBaseURL(base)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("--base-url host %s is not a loopback address (pass --allow-non-loopback to target it on purpose)", host)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("--base-url: resolve %s: %w", host, err)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return fmt.Errorf("--base-url host %s resolves to %s, not a loopback address (pass --allow-non-loopback to target it on purpose)", host, a.IP)
		}
	}
	if len(addrs) == 0 {
		return fmt.Errorf("--base-url host %s has no address", host)
	}
	return nil
}
