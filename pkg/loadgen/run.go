package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"

	"recsys/pkg/flagenv"
)

// ReportConfig echoes the run's configuration (the contract's fields first).
type ReportConfig struct {
	BaseURL          string  `json:"base_url"`
	Requests         int     `json:"requests"`
	Concurrency      int     `json:"concurrency"`
	K                int     `json:"k"`
	TimeoutSec       float64 `json:"timeout_sec"`
	Warmup           int     `json:"warmup"`
	Autolog          bool    `json:"autolog_impressions"`
	Mode             string  `json:"mode"` // open_loop | closed_loop
	Rate             float64 `json:"rate"`
	DurationSec      float64 `json:"duration_sec"`
	Scenario         string  `json:"scenario"`
	Description      string  `json:"description"`
	IngestMode       string  `json:"ingest_mode,omitempty"`
	BatchSize        int     `json:"batch_size,omitempty"`
	Users            int     `json:"users"`
	Sessions         int     `json:"sessions"`
	Items            int     `json:"items"`
	WatchProb        float64 `json:"watch_prob"`
	OrganicWatchProb float64 `json:"organic_watch_prob"`
	MaxErrorRatePct  float64 `json:"max_error_rate_pct"`
	Seed             int64   `json:"seed"`
}

// SLA compares the client-side /reco figures with the contract's sla_targets. A target of 0
// (missing) gives met = null.
type SLA struct {
	Source   string           `json:"source"` // which endpoint's figures were used
	Targets  map[string]any   `json:"targets"`
	Observed map[string]any   `json:"observed"`
	Met      map[string]*bool `json:"met"`
}

// Report is the JSON report of `recsys load`.
type Report struct {
	TimestampMs         int64        `json:"timestamp_ms"`
	Config              ReportConfig `json:"config"`
	BenchmarkElapsedSec float64      `json:"benchmark_elapsed_sec"`
	Summary             Summary      `json:"summary"`
	SLA                 SLA          `json:"sla"`
	Contract            any          `json:"contract"`
	RecoMetricsSnapshot any          `json:"reco_metrics_snapshot"`

	// Operations counts the operations sent (a mixed operation is a /reco and its watches).
	Operations int64 `json:"operations"`
	// OperationsNotSent counts, in open-loop mode, the operations that fell due before the run
	// ended but never found a free worker (the server was stalled or slower than --rate /
	// --concurrency). Each is in the summary as a failed request with status 0, error
	// "NotSent: ...", and its wait until the run gave up as latency; rps leaves them out.
	OperationsNotSent int64 `json:"operations_not_sent"`
	// StoppedBy is requests, duration or interrupted.
	StoppedBy string `json:"stopped_by"`
	// MaxSendDelayMs is, in open-loop mode, the largest delay between a request's due time and
	// its actual send: above a few ms the generator (or the server) could not keep the rate,
	// and that delay is already part of the latencies.
	MaxSendDelayMs float64                      `json:"max_send_delay_ms"`
	Endpoints      map[string]Summary           `json:"endpoints"`
	Percentiles    map[string][]PercentilePoint `json:"percentiles"`
	Timeline       []TimelinePoint              `json:"timeline"`
	// Verdict is "pass" when the error rate is within --max-error-rate-pct, else "fail".
	Verdict string `json:"verdict"`
}

// Failed reports whether the run is above the error threshold (exit code 2).
func (r *Report) Failed() bool { return r.Verdict != "pass" }

// Run executes the warm-up and the benchmark and returns the report. A progress bar is drawn
// on progress when it is not nil.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.AllowNonLoopback {
		if err := CheckLoopback(ctx, cfg.BaseURL); err != nil {
			return nil, err
		}
	}
	tr := &http.Transport{MaxIdleConns: cfg.Concurrency * 2, MaxIdleConnsPerHost: cfg.Concurrency * 2, IdleConnTimeout: 30 * time.Second,
		DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &client{http: &http.Client{Transport: tr}, base: strings.TrimRight(cfg.BaseURL, "/"), timeout: cfg.Timeout, apiKey: cfg.APIKey}

	if cfg.Warmup > 0 {
		// At --rate in open loop: sent back to back on every worker, the warm-up was a burst
		// the server was still absorbing (queues, pool growth, GC) when the measured run began.
		warm := cfg
		warm.Requests, warm.Seed = cfg.Warmup, cfg.Seed+1_000_003
		runLoop(ctx, &warm, c, func(Result) {}, nil)
	}
	start := time.Now()
	rec := NewRecorder(start)
	var bar *progressbar.ProgressBar
	if progress != nil {
		bar = progressbar.NewOptions64(int64(cfg.Requests), progressbar.OptionSetWriter(progress), progressbar.OptionSetDescription("load "+cfg.Scenario),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("op"),
			progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	}
	st := runLoop(ctx, &cfg, c, rec.Add, bar)
	elapsed := time.Since(start)
	if bar != nil {
		_ = bar.Finish()
	}

	snap := rec.Snapshot(elapsed)
	r := &Report{
		TimestampMs: time.Now().UnixMilli(), BenchmarkElapsedSec: round3(elapsed.Seconds()),
		Summary: snap.Summary, Endpoints: snap.Endpoints, Percentiles: snap.Percentiles, Timeline: snap.Timeline,
		Operations: st.ops, OperationsNotSent: st.notSent, StoppedBy: st.stoppedBy, MaxSendDelayMs: round3(float64(st.maxDelay.Load()) / 1e6),
		Config: ReportConfig{BaseURL: flagenv.Redact(cfg.BaseURL), Requests: cfg.Requests, Concurrency: cfg.Concurrency, K: cfg.K,
			TimeoutSec: cfg.Timeout.Seconds(), Warmup: cfg.Warmup, Autolog: cfg.Autolog, Mode: "closed_loop", Rate: cfg.Rate,
			DurationSec: cfg.Duration.Seconds(), Scenario: cfg.Scenario, Description: cfg.describe(), Users: cfg.Users,
			Sessions: cfg.Sessions, Items: cfg.Items, WatchProb: cfg.WatchProb, OrganicWatchProb: cfg.OrganicWatchProb,
			MaxErrorRatePct: cfg.MaxErrorRatePct, Seed: cfg.Seed},
	}
	if cfg.Rate > 0 {
		r.Config.Mode = "open_loop"
	}
	if cfg.Scenario == ScenarioIngest {
		r.Config.IngestMode, r.Config.BatchSize = cfg.IngestMode, cfg.BatchSize
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	r.Contract = fetchJSON(fctx, c, "/contract")
	r.RecoMetricsSnapshot = fetchJSON(fctx, c, "/metrics/reco")
	r.SLA = evaluateSLA(r)
	r.Verdict = "pass"
	if r.Summary.ErrorRatePct > cfg.MaxErrorRatePct {
		r.Verdict = "fail"
	}
	return r, nil
}

type loopStats struct {
	ops       int64
	notSent   int64
	stoppedBy string
	maxDelay  atomic.Int64 // ns
}

// runLoop runs cfg.Requests operations on cfg.Concurrency workers, bounded by cfg.Duration.
// With cfg.Rate > 0 operation i is due at start + i/rate (open loop); otherwise each worker
// starts its next operation when the previous one ends (closed loop).
func runLoop(ctx context.Context, cfg *Config, c *client, rec func(Result), bar *progressbar.ProgressBar) *loopStats {
	st := &loopStats{stoppedBy: "requests"}
	var next atomic.Int64
	var durationHit atomic.Bool
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(cfg.Timeout))
	defer cancel()
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	// The requests in flight when the run is interrupted (Ctrl-C) end cancelled: counted, a
	// slow server's run stopped by hand would fail on its error rate, with latencies cut short.
	record := func(r Result) {
		if r.Err != errCanceled {
			rec(r)
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < cfg.Concurrency; i++ {
		w := &worker{cfg: cfg, c: c, rnd: mrand.New(mrand.NewPCG(uint64(cfg.Seed), uint64(i))), rec: record}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n := next.Add(1) - 1
				if n >= int64(cfg.Requests) {
					return
				}
				due := time.Now()
				if interval > 0 {
					due = start.Add(time.Duration(n) * interval)
					if !due.Before(deadline) {
						durationHit.Store(true)
						return
					}
					if d := time.Until(due); d > 0 {
						t := time.NewTimer(d)
						select {
						case <-ctx.Done():
							t.Stop()
							return
						case <-t.C:
						}
					} else {
						for lag, cur := int64(-d), st.maxDelay.Load(); lag > cur && !st.maxDelay.CompareAndSwap(cur, lag); cur = st.maxDelay.Load() {
						}
					}
				} else if !due.Before(deadline) {
					durationHit.Store(true)
					return
				}
				w.run(ctx, due)
				atomic.AddInt64(&st.ops, 1)
				if bar != nil {
					_ = bar.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if interval > 0 {
		st.notSent = recordNotSent(cfg, rec, start, deadline, interval, next.Load())
	}
	switch {
	case durationHit.Load():
		st.stoppedBy = "duration"
	case ctx.Err() != nil && st.ops < int64(cfg.Requests):
		st.stoppedBy = "interrupted"
		if time.Now().After(deadline) {
			st.stoppedBy = "duration"
		}
	}
	return st
}

// errNotSent is the error of an open-loop operation that fell due but was never sent.
const errNotSent = "NotSent: fell due but no worker was free before the run ended"

// recordNotSent records as failed every operation from first on that fell due before the run
// ended (the end of --duration, or an interrupt) but was never taken by a worker: every worker
// was still waiting on the server. Left out, they would vanish from the report exactly when
// the server is at its worst. Their latency is the wait from due until now, when the run gave
// up on them. It returns how many it recorded.
func recordNotSent(cfg *Config, rec func(Result), start, deadline time.Time, interval time.Duration, first int64) int64 {
	end := time.Now()
	// Operation n is due at start + n·interval; those due before the cutoff number ceil(span/interval).
	span := min(end.Sub(start), deadline.Sub(start))
	if span <= 0 {
		return 0
	}
	last := min(int64(cfg.Requests), int64((span+interval-1)/interval))
	ep := cfg.firstEndpoint()
	var n int64
	for i := first; i < last; i++ {
		due := start.Add(time.Duration(i) * interval)
		rec(Result{Endpoint: ep, At: due, Latency: end.Sub(due), Err: errNotSent})
		n++
	}
	return n
}

func fetchJSON(ctx context.Context, c *client, path string) any {
	var out any
	r := (&client{http: c.http, base: c.base, timeout: 5 * time.Second, apiKey: c.apiKey}).do(ctx, "", http.MethodGet, path, nil, time.Now(), &out)
	if !r.OK() {
		return map[string]any{"error": r.Err}
	}
	return out
}

// evaluateSLA uses the /reco figures when the scenario sent /reco requests, else all requests.
func evaluateSLA(r *Report) SLA {
	sum, src := r.Summary, "all"
	if s, ok := r.Endpoints[EndpointReco]; ok {
		sum, src = s, EndpointReco
	}
	targets := map[string]float64{"reco_p95_ms": 0, "reco_p99_ms": 0, "api_error_rate_pct": 0}
	if m, ok := r.Contract.(map[string]any); ok {
		if sla, ok := m["sla_targets"].(map[string]any); ok {
			for k := range targets {
				if v, ok := sla[k].(float64); ok {
					targets[k] = v
				}
			}
		}
	}
	observed := map[string]*float64{"reco_p95_ms": sum.LatencyMs.P95, "reco_p99_ms": sum.LatencyMs.P99, "api_error_rate_pct": &sum.ErrorRatePct}
	out := SLA{Source: src, Targets: map[string]any{}, Observed: map[string]any{}, Met: map[string]*bool{}}
	for k, t := range targets {
		out.Targets[k] = t
		o := observed[k]
		if o == nil {
			out.Observed[k] = nil
		} else {
			out.Observed[k] = *o
		}
		if t <= 0 || o == nil {
			out.Met[k] = nil
			continue
		}
		met := *o <= t
		out.Met[k] = &met
	}
	return out
}

// WriteJSON writes the report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode load report: %w", err)
	}
	return nil
}

// Headline is a one-line human summary.
func (r *Report) Headline() string {
	s := r.Summary
	p := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f", *v)
	}
	notSent := ""
	if r.OperationsNotSent > 0 {
		notSent = fmt.Sprintf(" (%d due but never sent)", r.OperationsNotSent)
	}
	return fmt.Sprintf("%s %s: %d requests%s in %.1fs (%.0f/s), errors %.3f%% (max %.1f%%), latency ms p50=%s p95=%s p99=%s max=%s, stopped by %s: %s",
		r.Config.Mode, r.Config.Scenario, s.RequestsTotal, notSent, r.BenchmarkElapsedSec, s.RPS, s.ErrorRatePct, r.Config.MaxErrorRatePct,
		p(s.LatencyMs.P50), p(s.LatencyMs.P95), p(s.LatencyMs.P99), p(s.LatencyMs.Max), r.StoppedBy, strings.ToUpper(r.Verdict))
}
