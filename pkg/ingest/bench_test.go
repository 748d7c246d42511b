package ingest_test

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

// BenchmarkWriter measures the durable write path without HTTP: 64 goroutines each writing
// one watch at a time, as /log/watch does.
//
//	go test ./pkg/ingest/ -run '^$' -bench Writer -benchtime 20000x -count 3
func BenchmarkWriter(b *testing.B) {
	pool := testutil.Pool(b, testutil.MigratedDatabase(b))
	cfg := ingest.DefaultConfig()
	set := metrics.NewSet()
	cfg.Metrics = set
	if n, err := strconv.Atoi(os.Getenv("BENCH_WORKERS")); err == nil {
		cfg.Workers = n
	}
	if d, err := time.ParseDuration(os.Getenv("BENCH_MAX_WAIT")); err == nil {
		cfg.MaxWait = d
	}
	w := ingest.New(pool, cfg)
	w.Start()
	defer w.Close()
	evs := make([]events.Any, b.N)
	for i := range evs {
		evs[i] = watch(fmt.Sprintf("bench-%09d", i), fmt.Sprintf("user-%d", i%5000))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(evs) {
					return
				}
				if _, err := w.Write(context.Background(), evs[i:i+1], ""); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	vals := map[string]float64{}
	for _, l := range strings.Split(buf.String(), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			vals[k], _ = strconv.ParseFloat(v, 64)
		}
	}
	if n := vals[`recsys_ingest_commit_duration_seconds_count{writer="ingest"}`]; n > 0 {
		b.ReportMetric(vals[`recsys_ingest_group_commit_events_sum{writer="ingest"}`]/n, "events/commit")
		b.ReportMetric(1000*vals[`recsys_ingest_commit_duration_seconds_sum{writer="ingest"}`]/n, "commit_ms")
	}
}
