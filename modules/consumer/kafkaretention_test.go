package consumer_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/testutil"
)

// The consumer warns at start when a topic keeps messages longer than their dedup records
// (--consumer.dedup-retention): a group starting over from the oldest offset would apply those
// twice. It says nothing with the broker's retention of the services script (24 h).
func TestConsumerWarnsAboutTopicRetentionBeyondDedupRetention(t *testing.T) {
	t.Parallel()
	const warning = "kafka topic keeps messages longer than --consumer.dedup-retention"
	for _, tc := range []struct {
		name        string
		retentionMs string // "": the broker's
		warn        bool
	}{
		{"broker default", "", false},
		{"30 days", "2592000000", true},
		{"for ever", "-1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			if tc.retentionMs != "" {
				resp, err := e.kc.Admin().AlterConfigs(ctx, &kafkago.AlterConfigsRequest{Resources: []kafkago.AlterConfigRequestResource{{
					ResourceType: kafkago.ResourceTypeTopic, ResourceName: e.TopicWatch,
					Configs: []kafkago.AlterConfigRequestConfig{{Name: "retention.ms", Value: tc.retentionMs}}}}})
				if err != nil {
					t.Fatal(err)
				}
				for _, err := range resp.Errors {
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			var logs testutil.SyncBuffer
			cfg := e.config()
			cfg.DedupRetention = 14 * 24 * time.Hour
			r := e.startWith(t, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
			waitFor(t, "consumer started", 30*time.Second, func() bool { return strings.Contains(logs.String(), "feature consumer started") })
			if r.stop(); r.err != nil {
				t.Fatal(r.err)
			}
			out := logs.String()
			if strings.Contains(out, "kafka topic retention not checked") {
				t.Fatalf("retention not read:\n%s", out)
			}
			var warned []string
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, warning) {
					warned = append(warned, l)
				}
			}
			if got := len(warned) > 0; got != tc.warn {
				t.Fatalf("warned %v, want %v; logs:\n%s", got, tc.warn, out)
			}
			for _, l := range warned {
				if !strings.Contains(l, `"topic":"`+e.TopicWatch+`"`) || !strings.Contains(l, `"level":"WARN"`) {
					t.Fatalf("warning names another topic than the one retained longer (%s):\n%s", e.TopicWatch, l)
				}
			}
		})
	}
}
