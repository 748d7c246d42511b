package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/infra"
	"recsys/pkg/logging"
	"recsys/pkg/testutil"
)

// A high-water mark that could not be read (the whole ListOffsets, a partition's error in its
// answer, a partition left out of it) is counted under stage lag_metrics and logged with the
// partitions and why: it was skipped silently, and the partition's lag gauge froze at its last
// value, typically on the stuck partition whose leader is unreachable, with nothing saying so.
func TestUnreadHighWaterMarksAreCountedAndLogged(t *testing.T) {
	owned := map[string][]int{"t": {0, 1}}
	answer := func(pos ...kafkago.PartitionOffsets) func(context.Context, *kafkago.ListOffsetsRequest) (*kafkago.ListOffsetsResponse, error) {
		return func(context.Context, *kafkago.ListOffsetsRequest) (*kafkago.ListOffsetsResponse, error) {
			return &kafkago.ListOffsetsResponse{Topics: map[string][]kafkago.PartitionOffsets{"t": pos}}, nil
		}
	}
	failing := func(context.Context, *kafkago.ListOffsetsRequest) (*kafkago.ListOffsetsResponse, error) {
		return nil, errors.New("dial tcp: connection refused")
	}
	cases := []struct {
		name      string
		list      func(context.Context, *kafkago.ListOffsetsRequest) (*kafkago.ListOffsetsResponse, error)
		cancelled bool
		wantHWM   map[partitionKey]int64
		wantLog   string // "" when no line is expected
	}{
		{"all read", answer(kafkago.PartitionOffsets{Partition: 0, LastOffset: 7}, kafkago.PartitionOffsets{Partition: 1, LastOffset: 9}), false,
			map[partitionKey]int64{{"t", 0}: 7, {"t", 1}: 9}, ""},
		{"request failed", failing, false, map[partitionKey]int64{}, "all 2 owned partitions: dial tcp: connection refused"},
		{"a partition's error", answer(kafkago.PartitionOffsets{Partition: 0, LastOffset: 7}, kafkago.PartitionOffsets{Partition: 1, Error: kafkago.LeaderNotAvailable}), false,
			map[partitionKey]int64{{"t", 0}: 7}, "t/1: " + kafkago.LeaderNotAvailable.Error()},
		{"a partition left out", answer(kafkago.PartitionOffsets{Partition: 1, LastOffset: 9}), false,
			map[partitionKey]int64{{"t", 1}: 9}, "t/0: no answer for it"},
		{"stopping", failing, true, map[partitionKey]int64{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			log, err := logging.New(&logs, "json", slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			set := metrics.NewSet()
			c := newConsumer(NewConfig(), infra.Deps{Metrics: set, Config: infra.DefaultConfig(), Log: log})
			ctx, cancel := context.WithCancel(t.Context())
			if tc.cancelled {
				cancel()
			}
			defer cancel()
			if got := c.highWaterMarks(ctx, owned, tc.list); fmt.Sprint(got) != fmt.Sprint(tc.wantHWM) {
				t.Errorf("high-water marks %v, want %v", got, tc.wantHWM)
			}
			var b bytes.Buffer
			set.WritePrometheus(&b)
			wantCount := 0
			if tc.wantLog != "" {
				wantCount = 1
			}
			if line := fmt.Sprintf(`reco_feature_consumer_errors_total{stage="lag_metrics"} %d`, wantCount); !strings.Contains(b.String(), line+"\n") {
				t.Errorf("exposition lacks %s", line)
			}
			var warned []string
			for _, l := range logs.JSONLines(t) {
				if l["level"] == "WARNING" {
					warned = append(warned, fmt.Sprint(l["partitions"]))
				}
			}
			switch {
			case tc.wantLog == "" && len(warned) > 0:
				t.Errorf("logged %v, want nothing", warned)
			case tc.wantLog != "" && (len(warned) != 1 || !strings.Contains(warned[0], tc.wantLog)):
				t.Errorf("logged %v, want one line naming %q", warned, tc.wantLog)
			}
		})
	}
}
