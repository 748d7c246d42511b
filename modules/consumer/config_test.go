package consumer

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string // substring of the error; "" = valid
	}{
		{name: "defaults", mutate: func(*Config) {}},
		{name: "batch", mutate: func(c *Config) { c.MaxBatch = 0 }, want: "--consumer.max-batch must be between 1 and 100000, got 0"},
		{name: "in flight", mutate: func(c *Config) { c.MaxInFlight = 0 }, want: "--consumer.max-in-flight must be between 1 and 16, got 0"},
		{name: "impressions format", mutate: func(c *Config) { c.ImpressionsFormat = "binary" }, want: `--consumer.impressions-format: unknown impressions format "binary"`},
		{name: "group", mutate: func(c *Config) { c.GroupID = "" }, want: "--consumer.group-id"},
		{name: "backoff order", mutate: func(c *Config) { c.RetryMaxBackoff = time.Millisecond }, want: "--consumer.retry-max-backoff"},
		{name: "retention", mutate: func(c *Config) { c.DedupRetention = time.Minute }, want: "--consumer.dedup-retention"},
		{name: "item retention", mutate: func(c *Config) { c.ItemRetention = time.Hour }, want: "--consumer.item-retention must be 0 (keep every item) or at least 24h, got 1h0m0s"},
		{name: "item retention negative", mutate: func(c *Config) { c.ItemRetention = -time.Hour }, want: "--consumer.item-retention"},
		{name: "item retention off", mutate: func(c *Config) { c.ItemRetention = 0 }},
		{name: "user retention", mutate: func(c *Config) { c.UserRetention = time.Hour }, want: "--consumer.user-retention must be 0 (keep every user) or at least 24h, got 1h0m0s"},
		{name: "user retention negative", mutate: func(c *Config) { c.UserRetention = -time.Hour }, want: "--consumer.user-retention"},
		{name: "user retention off", mutate: func(c *Config) { c.UserRetention = 0 }},
		{name: "features", mutate: func(c *Config) { c.Features.HistorySize = 0 }, want: "--consumer.features.history-size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewConfig()
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			c.RegisterFlags(fs)
			tt.mutate(c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLegacyEnvAliases(t *testing.T) {
	c := NewConfig()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	env := map[string]string{
		"FEATURE_CONSUMER_GROUP_ID":                "legacy-group",
		"FEATURE_CONSUMER_MAX_POLL_RECORDS":        "250",
		"FEATURE_CONSUMER_POLL_TIMEOUT_MS":         "700",
		"FEATURE_CONSUMER_MAX_RETRIES_PER_MESSAGE": "9",
		"STREAM_FEATURE_HISTORY_SIZE":              "33",
	}
	if err := flagenv.Bind(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.GroupID != "legacy-group" || c.MaxBatch != 250 || c.FetchMaxWait != 700*time.Millisecond || c.UnreadyAfter != 9 || c.Features.HistorySize != 33 {
		t.Errorf("aliases not applied: %+v", c)
	}
}
