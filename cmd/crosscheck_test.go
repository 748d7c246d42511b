package cmd

import (
	"strings"
	"testing"
	"time"

	"recsys/modules/analytics"
	"recsys/modules/ingest"
	"recsys/pkg/module"
)

func TestCrossModuleSettings(t *testing.T) {
	tests := []struct {
		name string
		edit func(a *analytics.Config, i *ingest.Config)
		only string // run one module only
		want string // "" = valid
	}{
		{"defaults", func(*analytics.Config, *ingest.Config) {}, "", ""},
		{"commit margin not above the write timeout", func(a *analytics.Config, i *ingest.Config) {
			a.CommitMargin, i.WriteTimeout = 2*time.Second, 2*time.Second
		}, "", "--analytics.commit-margin (2s) must exceed --ingest.write-timeout (2s)"},
		{"raw rows deleted before the roll-up folds them", func(_ *analytics.Config, i *ingest.Config) {
			i.RawRetention = 10 * time.Minute
		}, "", "--ingest.raw-retention (10m0s) must be 0 or at least"},
		{"raw rows kept forever", func(_ *analytics.Config, i *ingest.Config) { i.RawRetention = 0 }, "", ""},
		{"ingest alone: the analytics settings are another process'", func(_ *analytics.Config, i *ingest.Config) {
			i.WriteTimeout = time.Hour
		}, "ingest", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, i := analytics.NewConfig(), ingest.NewConfig()
			tc.edit(a, i)
			cfgs := map[string]module.Config{"analytics": a, "ingest": i}
			if tc.only != "" {
				cfgs = map[string]module.Config{tc.only: cfgs[tc.only]}
			}
			err := crossCheck(cfgs)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("crossCheck = %v, want %q", err, tc.want)
			}
		})
	}
}
