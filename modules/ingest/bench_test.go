package ingest

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"recsys/pkg/gctune"
	"recsys/pkg/httpx"
	"recsys/pkg/testutil"
)

// Benchmarks of the targets, against the real PostgreSQL of scripts/services.sh and
// a real HTTP server on loopback (client, server and PostgreSQL share the machine):
//
//	go test ./modules/ingest/ -run '^$' -bench 'LogWatch|LogBatch' -benchtime 20000x -count 3
//
// They report numbers (req/s, events/s, latency percentiles); they assert nothing.

func watchJSON(id string, ts int64) []byte {
	return []byte(`{"event_id":"` + id + `","user_id":"user-` + strconv.Itoa(rand.IntN(5000)) +
		`","session_id":"sess-1","request_id":"req-` + id + `","ts_ms":` + strconv.FormatInt(ts, 10) +
		`,"item_id":"item-` + strconv.Itoa(rand.IntN(2000)) + `","watch_time_sec":42.5,"percent_watched":80,"ended":true,"context":{"device":"tv"}}`)
}

func impressionJSON(id string, ts int64, items int) []byte {
	var b strings.Builder
	b.WriteString(`{"event_id":"` + id + `","event_type":"impression","user_id":"user-` + strconv.Itoa(rand.IntN(5000)) +
		`","session_id":"sess-1","request_id":"req-` + id + `","ts_ms":` + strconv.FormatInt(ts, 10) + `,"items":[`)
	for i := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"item_id":"item-` + strconv.Itoa(i) + `","position":` + strconv.Itoa(i) + `}`)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// drive sends bodies with `clients` concurrent keep-alive clients and reports throughput and
// latency percentiles. The clients are lean (testutil.RawClient): net/http's client would
// take a quarter of the two cores the server is measured on. The process runs with the
// collector settings `recsys` applies at start (pkg/gctune).
func drive(b *testing.B, v *env, url string, clients int, bodies [][]byte, eventsPer int) {
	b.Logf("gc %v", gctune.DefaultConfig().Apply())
	base, path := splitURL(b, url)
	pgBefore, goBefore := testutil.BackendCPU(b, v.pool), testutil.SelfCPU()
	lat := make([]time.Duration, len(bodies))
	var next atomic.Int64
	var failures atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, err := testutil.NewRawClient(base)
			if err != nil {
				b.Error(err)
				return
			}
			defer client.Close()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) {
					return
				}
				t0 := time.Now()
				code, err := client.Do("POST", path, bodies[i], 10*time.Second)
				lat[i] = time.Since(t0)
				if err != nil || code != 200 {
					if failures.Add(1) == 1 {
						b.Logf("request failed: %d %v", code, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	goCPU := testutil.SelfCPU() - goBefore
	pgAfter := testutil.BackendCPU(b, v.pool)
	slices.Sort(lat)
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(bodies))/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(len(bodies)*eventsPer)/elapsed.Seconds(), "events/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(failures.Load()), "failures")
	// CPU per event tells the cost apart from the noise of a shared machine: Go is this whole
	// process (HTTP client included), PostgreSQL the backends of the benchmark's database
	// (background writers and autovacuum excluded).
	nev := float64(len(bodies) * eventsPer)
	b.ReportMetric(float64(goCPU.Microseconds())/nev, "go_cpu_us/event")
	if len(pgAfter) > 0 {
		b.ReportMetric(float64(pgAfter.Since(pgBefore).Microseconds())/nev, "pg_cpu_us/event")
	}
	if n := v.metric(`recsys_ingest_group_commit_events_count{writer="ingest"}`); n > 0 {
		b.ReportMetric(v.metric(`recsys_ingest_group_commit_events_sum{writer="ingest"}`)/n, "events/commit")
	}
}

// splitURL splits http://host:port/path into the base and the path.
func splitURL(b *testing.B, raw string) (base, path string) {
	u, err := url.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	return u.Scheme + "://" + u.Host, u.RequestURI()
}

// benchTuning applies BENCH_WORKERS, BENCH_MAX_WAIT and BENCH_COPY_MIN (group-commit
// settings) from the environment, to compare settings without editing the code (newEnv
// applies BENCH_OUTBOX_LANES, the shared --ingest.outbox-lanes).
func benchTuning(c *Config, _ *httpx.Config) {
	if n, err := strconv.Atoi(os.Getenv("BENCH_WORKERS")); err == nil {
		c.GroupCommitWorkers = n
	}
	if d, err := time.ParseDuration(os.Getenv("BENCH_MAX_WAIT")); err == nil {
		c.GroupCommitMaxWait = d
	}
	if n, err := strconv.Atoi(os.Getenv("BENCH_COPY_MIN")); err == nil {
		c.GroupCommitCopyMinEvents = n
	}
}

func BenchmarkLogWatch(b *testing.B) {
	v := newEnv(b, testutil.MigratedDatabase(b), benchTuning)
	url := v.serve() + "/log/watch"
	ts := time.Now().UnixMilli()
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = watchJSON(fmt.Sprintf("bench-w-%09d", i), ts)
	}
	drive(b, v, url, 64, bodies, 1)
}

func benchBatch(b *testing.B, mkEvent func(id string, ts int64) []byte) {
	const perBatch = 500
	v := newEnv(b, testutil.MigratedDatabase(b), benchTuning)
	url := v.serve() + "/log/batch"
	ts := time.Now().UnixMilli()
	bodies := make([][]byte, b.N)
	for i := range bodies {
		var sb strings.Builder
		sb.WriteString(`{"events":[`)
		for j := range perBatch {
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.Write(mkEvent(fmt.Sprintf("bench-b-%07d-%03d", i, j), ts))
		}
		sb.WriteString(`]}`)
		bodies[i] = []byte(sb.String())
	}
	drive(b, v, url, 4, bodies, perBatch)
}

// BenchmarkLogBatch posts batches of 500 watch events from 4 concurrent clients.
func BenchmarkLogBatch(b *testing.B) { benchBatch(b, watchJSON) }

// BenchmarkLogBatchMixed posts batches of 500 events, one in five an impression of 10 items
// (so about 2.8 rows per event).
func BenchmarkLogBatchMixed(b *testing.B) {
	n := 0
	benchBatch(b, func(id string, ts int64) []byte {
		n++
		if n%5 == 0 {
			return impressionJSON(id, ts, 10)
		}
		return watchJSON(id, ts)
	})
}
