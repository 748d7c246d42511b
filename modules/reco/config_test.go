package reco

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
	"recsys/pkg/infra"
)

func TestConfigLegacyEnvNamesAndValidation(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want []string // substrings of the error; none = valid
		ok   func(c *Config) bool
	}{
		{name: "defaults", ok: func(c *Config) bool {
			return c.AutologAsync && c.AutologQueueSize == 1000 && c.AutologBackpressure == "sync" &&
				c.AutologShutdownTimeout == 5*time.Second && c.MetricsWindow == time.Hour && c.MetricsMaxSamples == 50000
		}},
		{name: "legacy names", env: map[string]string{
			"RECO_ASYNC_IMPRESSION_LOGGING": "false", "RECO_MAX_BACKGROUND_TASKS": "77", "RECO_BACKGROUND_BACKPRESSURE_MODE": "drop",
			"RECO_BACKGROUND_SHUTDOWN_TIMEOUT_SEC": "2.5", "RECO_METRICS_WINDOW_SEC": "600", "RECO_METRICS_MAX_SAMPLES": "10",
		}, ok: func(c *Config) bool {
			return !c.AutologAsync && c.AutologQueueSize == 77 && c.AutologBackpressure == "drop" &&
				c.AutologShutdownTimeout == 2500*time.Millisecond && c.MetricsWindow == 10*time.Minute && c.MetricsMaxSamples == 10
		}},
		{name: "recsys name wins", env: map[string]string{"RECO_MAX_BACKGROUND_TASKS": "77", "RECSYS_RECO_AUTOLOG_QUEUE_SIZE": "88"},
			ok: func(c *Config) bool { return c.AutologQueueSize == 88 }},
		{name: "unknown back-pressure mode is an error, not sync", env: map[string]string{"RECO_BACKGROUND_BACKPRESSURE_MODE": "block"},
			want: []string{"--reco.autolog-backpressure (RECO_BACKGROUND_BACKPRESSURE_MODE) must be", `got "block"`}},
		{name: "zero values are errors", env: map[string]string{"RECO_BACKGROUND_SHUTDOWN_TIMEOUT_SEC": "0", "RECO_MAX_BACKGROUND_TASKS": "0", "RECO_METRICS_WINDOW_SEC": "0"},
			want: []string{"--reco.autolog-shutdown-timeout must be between", "--reco.autolog-queue-size must be between 1", "--reco.metrics-window must be between"}},
		{name: "ranking weights validated", env: map[string]string{"RECSYS_RANKING_WEIGHT_COVIS": "-1"},
			want: []string{"--ranking.weight-covis"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := NewConfig()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if err := flagenv.Bind(fs, func(k string) (string, bool) { v, ok := c.env[k]; return v, ok }); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if !c.ok(cfg) {
					t.Fatalf("config %+v", cfg)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestContractMetricsAreExposed(t *testing.T) {
	h := newHarness(t, nil)
	h.get("/reco?user_id=m1&session_id=s&k=3")
	h.get("/reco?user_id=m1&session_id=s&k=0")
	expo := exposition(h)
	for _, want := range []string{
		`reco_api_requests_total{status_family="2xx"} 1`,
		`reco_api_requests_total{status_family="4xx"} 1`,
		`reco_api_latency_ms_bucket{le="10"}`,
		`reco_api_latency_ms_count 2`,
		`reco_stage_latency_ms_count{stage="retrieval"} 1`,
		`reco_stage_latency_ms_count{stage="ranking"} 1`,
		`reco_stage_latency_ms_count{stage="impression_schedule"} 1`,
		`recsys_reco_autolog_queue_depth`,
		`recsys_reco_autolog_dropped_total{reason="queue_full"} 0`,
		`recsys_reco_served_total{source="redis"} 1`,
		`recsys_reco_breaker_open{store="redis"} 0`,
	} {
		if !strings.Contains(expo, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	if strings.Contains(expo, "vmrange") {
		t.Error("histograms must be Prometheus histograms (le buckets), not vmrange")
	}
}

// The autolog writer lingers to merge impressions only when /reco does not wait for them.
func TestAutologWriterLingersOnlyInAsyncMode(t *testing.T) {
	for _, c := range []struct {
		async bool
		want  time.Duration
	}{{true, 20 * time.Millisecond}, {false, 0}} {
		cfg := NewConfig()
		cfg.AutologAsync = c.async
		w := autologWriterConfig(cfg, infra.Deps{Config: infra.DefaultConfig()})
		if w.MaxWait != c.want || w.Workers != cfg.AutologCommitWorkers || w.Name != "reco" {
			t.Errorf("async=%v: writer max wait %v, workers %d, name %q; want %v, %d, reco", c.async, w.MaxWait, w.Workers, w.Name, c.want, cfg.AutologCommitWorkers)
		}
	}
}
