package cmd

import (
	"strings"
	"testing"
	"time"

	"recsys/modules/analytics"
	"recsys/modules/consumer"
	"recsys/modules/ingest"
	"recsys/modules/reco"
	"recsys/modules/relay"
	"recsys/pkg/httpx"
	"recsys/pkg/module"
	"recsys/pkg/postgres"
)

func TestCrossModuleSettings(t *testing.T) {
	tests := []struct {
		name string
		edit func(a *analytics.Config, i *ingest.Config, r *relay.Config, c *reco.Config)
		only string // run one module only
		want string // "" = valid
	}{
		{"defaults", func(*analytics.Config, *ingest.Config, *relay.Config, *reco.Config) {}, "", ""},
		{"commit margin not above twice the write timeout", func(a *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			a.CommitMargin, i.WriteTimeout = 4*time.Second, 2*time.Second
		}, "", "--analytics.commit-margin (4s) must exceed twice --ingest.write-timeout (2s)"},
		{"commit margin above twice the write timeout", func(a *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			a.CommitMargin, i.WriteTimeout = 4001*time.Millisecond, 2*time.Second
		}, "", ""},
		{"commit margin not above twice the autolog write timeout", func(a *analytics.Config, _ *ingest.Config, _ *relay.Config, c *reco.Config) {
			a.CommitMargin, c.AutologWriteTimeout = 9*time.Second, 5*time.Second
		}, "", "--analytics.commit-margin (9s) must exceed twice --reco.autolog-write-timeout (5s)"},
		{"reco alone: the analytics settings are another process'", func(a *analytics.Config, _ *ingest.Config, _ *relay.Config, c *reco.Config) {
			a.CommitMargin, c.AutologWriteTimeout = 5*time.Second, 5*time.Second
		}, "reco", ""},
		{"raw rows deleted before the roll-up folds them", func(_ *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			i.RawRetention = 10 * time.Minute
		}, "", "--ingest.raw-retention (10m0s) must be 0 or at least"},
		{"raw rows kept forever", func(_ *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) { i.RawRetention = 0 }, "", ""},
		{"ingest alone: the analytics settings are another process'", func(_ *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			i.WriteTimeout = time.Hour
		}, "ingest", ""},
		{"an event the relay could not publish", func(_ *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			i.MaxEventBytes = 1 << 20
		}, "", "--ingest.max-event-bytes (1048576) must stay at least 1024 bytes below --relay.max-batch-bytes (1048576)"},
		{"the same, ingest alone: the relay's settings are checked all the same", func(_ *analytics.Config, i *ingest.Config, _ *relay.Config, _ *reco.Config) {
			i.MaxEventBytes = 1 << 20
		}, "ingest", "--relay.max-batch-bytes"},
		{"a smaller relay limit", func(_ *analytics.Config, _ *ingest.Config, r *relay.Config, _ *reco.Config) {
			r.MaxBatchBytes = 128 << 10
		}, "", "--relay.max-batch-bytes (131072)"},
		{"a larger relay limit takes a larger event", func(_ *analytics.Config, i *ingest.Config, r *relay.Config, _ *reco.Config) {
			i.MaxEventBytes, r.MaxBatchBytes = 2<<20, 8<<20
		}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, i, r, c := analytics.NewConfig(), ingest.NewConfig(), relay.NewConfig(), reco.NewConfig()
			tc.edit(a, i, r, c)
			all := map[string]module.Config{"analytics": a, "ingest": i, "relay": r, "reco": c}
			selected := all
			if tc.only != "" {
				selected = map[string]module.Config{tc.only: all[tc.only]}
			}
			hc := httpx.DefaultConfig()
			hc.WriteTimeout = 24 * time.Hour // its rules are TestWriteTimeoutBoundsRequests'
			err := crossCheck(selected, all, hc)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("crossCheck = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestWriteTimeoutBoundsRequests: the server closes a connection whose answer is not written
// within --http.write-timeout, so a request allowed to take longer gets no answer at all,
// not even its own 503: the start refuses such settings.
func TestWriteTimeoutBoundsRequests(t *testing.T) {
	tests := []struct {
		name  string
		query time.Duration // --analytics.query-timeout
		write time.Duration // --ingest.write-timeout
		http  time.Duration // --http.write-timeout
		only  string
		want  string // "" = valid
	}{
		{"defaults", 10 * time.Second, time.Second, 30 * time.Second, "", ""},
		{"baseline query as long as the write timeout", 30 * time.Second, time.Second, 30 * time.Second, "",
			"--analytics.query-timeout (30s) must be below --http.write-timeout (30s)"},
		{"the same, analytics alone", time.Minute, time.Second, 30 * time.Second, "analytics",
			"--analytics.query-timeout (1m0s) must be below --http.write-timeout (30s)"},
		{"a shorter write timeout", 10 * time.Second, time.Second, 5 * time.Second, "",
			"--analytics.query-timeout (10s) must be below --http.write-timeout (5s)"},
		{"a longer write timeout takes a longer query", time.Minute, time.Second, 61 * time.Second, "", ""},
		{"ingest write timeout at half the write timeout", time.Second, 15 * time.Second, 30 * time.Second, "ingest",
			"--ingest.write-timeout (15s) must be below half --http.write-timeout (30s)"},
		{"ingest write timeout below half", time.Second, 14 * time.Second, 30 * time.Second, "ingest", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, i := analytics.NewConfig(), ingest.NewConfig()
			a.QueryTimeout, i.WriteTimeout = tc.query, tc.write
			a.CommitMargin = time.Hour // the commit margin's own rule aside
			all := map[string]module.Config{"analytics": a, "ingest": i, "relay": relay.NewConfig()}
			selected := all
			if tc.only != "" {
				selected = map[string]module.Config{tc.only: all[tc.only]}
			}
			hc := httpx.DefaultConfig()
			hc.WriteTimeout = tc.http
			err := crossCheck(selected, all, hc)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("crossCheck = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestContractStatesRecoTargets: /contract (ingest) states the latency targets /metrics/reco
// (reco) is configured with.
func TestContractStatesRecoTargets(t *testing.T) {
	in, rc := ingest.NewConfig(), reco.NewConfig()
	rc.SLATargetP95Ms, rc.SLATargetP99Ms = 90, 150.5
	linkConfigs(map[string]module.Config{"ingest": in, "reco": rc})
	if in.SLATargetP95Ms != 90 || in.SLATargetP99Ms != 150.5 {
		t.Errorf("ingest states %v / %v, reco judges against 90 / 150.5", in.SLATargetP95Ms, in.SLATargetP99Ms)
	}
	alone := ingest.NewConfig()
	linkConfigs(map[string]module.Config{"ingest": alone})
	if alone.SLATargetP95Ms != 120 || alone.SLATargetP99Ms != 200 {
		t.Errorf("without reco: %v / %v, want the contract's 120 / 200", alone.SLATargetP95Ms, alone.SLATargetP99Ms)
	}
}

// Raw rows kept less than the longest KPI window work, but a roll-up rebuild then covers less:
// a start-up warning says how much, where ingest and analytics run together.
func TestShortRawRetentionWarns(t *testing.T) {
	tests := []struct {
		name      string
		retention time.Duration
		only      string
		want      string // "" = no warning
	}{
		{"default: 30 days", 30 * 24 * time.Hour, "", ""},
		{"kept forever", 0, "", ""},
		{"7 days", 7 * 24 * time.Hour, "", "covers only the last 168h0m0s"},
		{"7 days, ingest alone", 7 * 24 * time.Hour, "ingest", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := ingest.NewConfig()
			in.RawRetention = tc.retention
			selected := map[string]module.Config{"analytics": analytics.NewConfig(), "ingest": in}
			if tc.only != "" {
				selected = map[string]module.Config{tc.only: selected[tc.only]}
			}
			got := strings.Join(crossWarnings(selected, postgres.DefaultConfig().MaxConns), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("warnings %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPoolSizeWarning: a pool smaller than what the modules of the process may hold at once
// is warned about, naming the settings that add up; the defaults of `recsys all` fit.
func TestPoolSizeWarning(t *testing.T) {
	all := func() map[string]module.Config {
		return map[string]module.Config{"ingest": ingest.NewConfig(), "reco": reco.NewConfig(), "analytics": analytics.NewConfig(),
			"relay": relay.NewConfig(), "consumer": consumer.NewConfig()}
	}
	tests := []struct {
		name     string
		selected map[string]module.Config
		maxConns int
		want     string // "" = no warning
	}{
		{"all, default pool", all(), postgres.DefaultConfig().MaxConns, ""},
		{"api role, a pool of 8", map[string]module.Config{"ingest": ingest.NewConfig(), "reco": reco.NewConfig(), "analytics": analytics.NewConfig()}, 8,
			"--pg.max-conns (8) is below the PostgreSQL connections this process's modules may hold at once (13: 2 --ingest.group-commit-workers, 2 --reco.autolog-commit-workers, 8 --reco.pg-max-concurrent, 1 analytics roll-up)"},
		{"consumer role, a pool of 3", map[string]module.Config{"consumer": consumer.NewConfig()}, 3, ""},
		{"consumer role, a pool of 2", map[string]module.Config{"consumer": consumer.NewConfig()}, 2, "(3: 3 --consumer.max-in-flight + its heal loop)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(crossWarnings(tc.selected, tc.maxConns), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("warnings %q, want %q", got, tc.want)
			}
		})
	}
}
