package consumer

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"
)

func lagSeries(set *metrics.Set) string {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "reco_feature_consumer_partition_lag{") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The partition lag follows the high-water mark while nothing is committed (fetched messages,
// then the periodic ListOffsets), falls with the commits, is dropped for a partition the
// member no longer owns, and follows the group's committed offset: a partition that went to
// another member and came back between two refreshes kept the lag of this member's last
// commit until it committed on the partition again, which on an idle one it never did.
func TestPartitionLagGrowsWithoutCommitsAndFollowsTheAssignment(t *testing.T) {
	set := metrics.NewSet()
	m := newMetrics(set)
	msg := func(p int, off, hwm int64) kafkago.Message {
		return kafkago.Message{Topic: "t", Partition: p, Offset: off, HighWaterMark: hwm}
	}
	committed := func(offs map[int]int64) func() map[string]map[int]int64 {
		return func() map[string]map[int]int64 { return map[string]map[int]int64{"t": offs} }
	}
	p0, p1, p2 := partitionKey{"t", 0}, partitionKey{"t", 1}, partitionKey{"t", 2}
	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"fetched from the committed position 10", func() { m.lagFetched([]kafkago.Message{msg(0, 10, 20), msg(0, 11, 20), msg(1, 5, 6)}) },
			"reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 10\nreco_feature_consumer_partition_lag{topic=\"t\",partition=\"1\"} 1"},
		{"applied and committed up to 11", func() { m.lagCommitted([]kafkago.Message{msg(0, 11, 25), msg(1, 5, 6)}) },
			"reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 13\nreco_feature_consumer_partition_lag{topic=\"t\",partition=\"1\"} 0"},
		{"nothing fetched or applied, the topic grows", func() {
			m.lagRefresh(map[string][]int{"t": {0, 1}}, map[partitionKey]int64{p0: 40, p1: 9}, committed(map[int]int64{0: 12, 1: 6}))
		}, "reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 28\nreco_feature_consumer_partition_lag{topic=\"t\",partition=\"1\"} 3"},
		{"a rebalance takes partition 1", func() {
			m.lagRefresh(map[string][]int{"t": {0}}, map[partitionKey]int64{p0: 41}, committed(map[int]int64{0: 12}))
		}, "reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 29"},
		{"high-water marks unknown (ListOffsets failed)", func() { m.lagRefresh(map[string][]int{"t": {0}}, nil, committed(map[int]int64{0: 12})) },
			"reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 29"},
		{"the backlog applied", func() { m.lagCommitted([]kafkago.Message{msg(0, 40, 41)}) },
			"reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 0"},
		{"partition 0 went to another member, which read it up to 90, and came back, idle", func() {
			m.lagRefresh(map[string][]int{"t": {0}}, map[partitionKey]int64{p0: 90}, committed(map[int]int64{0: 90}))
		}, "reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 0"},
		{"an idle partition assigned, nothing fetched", func() {
			m.lagRefresh(map[string][]int{"t": {0, 2}}, map[partitionKey]int64{p0: 90, p2: 7}, committed(map[int]int64{0: 90, 2: 7}))
		}, "reco_feature_consumer_partition_lag{topic=\"t\",partition=\"0\"} 0\nreco_feature_consumer_partition_lag{topic=\"t\",partition=\"2\"} 0"},
	}
	for _, s := range steps {
		s.do()
		if got := lagSeries(set); got != s.want {
			t.Fatalf("%s:\n%s\nwant\n%s", s.name, got, s.want)
		}
	}
}

// Messages of partitions this member no longer owns (a batch fetched before a rebalance, a
// commit CommitMessages skipped) set no lag gauge: two members would report the partition.
func TestOwnedOnly(t *testing.T) {
	msg := func(topic string, p int) kafkago.Message { return kafkago.Message{Topic: topic, Partition: p} }
	all := []kafkago.Message{msg("a", 0), msg("a", 1), msg("b", 0), msg("a", 0)}
	for _, tc := range []struct {
		name  string
		owned map[string][]int
		want  []kafkago.Message
	}{
		{"all owned", map[string][]int{"a": {0, 1}, "b": {0}}, all},
		{"one partition gone", map[string][]int{"a": {0}, "b": {0}}, []kafkago.Message{msg("a", 0), msg("b", 0), msg("a", 0)}},
		{"the first gone", map[string][]int{"a": {1}, "b": {0}}, []kafkago.Message{msg("a", 1), msg("b", 0)}},
		{"nothing owned", nil, []kafkago.Message{}},
	} {
		if got := ownedOnly(all, tc.owned); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := ownedOnly(all, map[string][]int{"a": {0, 1}, "b": {0}}); &got[0] != &all[0] {
		t.Error("all owned: the messages were copied")
	}
}
