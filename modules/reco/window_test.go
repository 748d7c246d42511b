package reco

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactPercentile is the contract's rule over raw samples.
func exactPercentile(v []float64, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	r := float64(len(s)-1) * q
	lo := int(math.Floor(r))
	if lo+1 >= len(s) {
		return s[lo]
	}
	return s[lo] + (s[lo+1]-s[lo])*(r-float64(lo))
}

func TestWindowPercentilesCountsAndErrorRate(t *testing.T) {
	w := newWindow(time.Hour, 50_000, 120, 200)
	base := time.Unix(1_700_000_000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	var lat []float64
	statuses := map[int]int{200: 0, 301: 0, 404: 0, 422: 0, 500: 0, 503: 0}
	for i := 0; i < 20_000; i++ {
		ms := math.Exp(rng.NormFloat64()*0.8 + 1.5) // log-normal around 4.5 ms
		lat = append(lat, ms)
		st := 200
		switch i % 100 {
		case 1:
			st = 301
		case 2, 3:
			st = 404
		case 4:
			st = 422
		case 5:
			st = 500
		case 6:
			st = 503
		}
		statuses[st]++
		w.Record(base.Add(time.Duration(i)*time.Millisecond*50), time.Duration(ms*float64(time.Millisecond)), st)
	}
	s := w.Snapshot(base.Add(1000 * time.Second))
	if s.SampleSize != 20_000 || s.WindowSec != 3600 {
		t.Fatalf("sample_size %d window %d", s.SampleSize, s.WindowSec)
	}
	want := map[string]int64{"2xx": 18_800, "3xx": 200, "4xx": 600, "5xx": 400}
	for k, v := range want {
		if s.StatusCounts[k] != v {
			t.Fatalf("status_counts %v, want %v", s.StatusCounts, want)
		}
	}
	// 5xx only: 400 of 20000.
	if s.ErrorRatePct != 2 {
		t.Fatalf("error_rate_pct %v, want 2", s.ErrorRatePct)
	}
	for name, q := range map[string]float64{"p50": 0.5, "p95": 0.95, "p99": 0.99} {
		got, exact := *s.LatencyMs[name], exactPercentile(lat, q)
		if rel := math.Abs(got-exact) / exact; rel > 0.07 {
			t.Errorf("%s = %.3f, exact %.3f (%.1f%% off)", name, got, exact, rel*100)
		}
	}
	if !s.SLA.P95Met || !s.SLA.P99Met || s.SLA.TargetP95Ms != 120 || s.SLA.TargetP99Ms != 200 {
		t.Fatalf("sla %+v", s.SLA)
	}
}

func TestWindowExpiresOldSamplesAndCapsSamples(t *testing.T) {
	w := newWindow(10*time.Second, 1000, 120, 200)
	base := time.Unix(1_700_000_000, 0)
	// 100 slow failures at t=0, then 50 fast successes per second for 5 s starting at t=20.
	for i := 0; i < 100; i++ {
		w.Record(base, 300*time.Millisecond, 500)
	}
	if s := w.Snapshot(base.Add(5 * time.Second)); s.SampleSize != 100 || s.ErrorRatePct != 100 || s.SLA.P95Met {
		t.Fatalf("within window: %+v", s)
	}
	for sec := 20; sec < 25; sec++ {
		for i := 0; i < 50; i++ {
			w.Record(base.Add(time.Duration(sec)*time.Second), 2*time.Millisecond, 200)
		}
	}
	s := w.Snapshot(base.Add(25 * time.Second))
	if s.SampleSize != 250 || s.ErrorRatePct != 0 || s.StatusCounts["5xx"] != 0 {
		t.Fatalf("old samples not expired: %+v", s)
	}
	if p := *s.LatencyMs["p99"]; p < 1.8 || p > 2.3 {
		t.Fatalf("p99 %v, want ~2", p)
	}
	// The cap keeps the newest whole seconds: 120 allows two seconds of 50.
	wc := newWindow(time.Hour, 120, 120, 200)
	for sec := 0; sec < 5; sec++ {
		for i := 0; i < 50; i++ {
			wc.Record(base.Add(time.Duration(sec)*time.Second), time.Duration(sec+1)*time.Millisecond, 200)
		}
	}
	s = wc.Snapshot(base.Add(4 * time.Second))
	if s.SampleSize != 100 {
		t.Fatalf("capped sample_size %d, want 100", s.SampleSize)
	}
	if p := *s.LatencyMs["p50"]; p < 3.5 || p > 5.5 {
		t.Fatalf("capped p50 %v: must come from the newest seconds (4 and 5 ms)", p)
	}
	// An empty window.
	e := newWindow(time.Minute, 10, 120, 200).Snapshot(base)
	if e.SampleSize != 0 || e.ErrorRatePct != 0 || e.LatencyMs["p95"] != nil || !e.SLA.P95Met || !e.SLA.P99Met {
		t.Fatalf("empty: %+v", e)
	}
}

// The SLA verdicts are the contract's, exact, whether the percentiles are exact (few samples)
// or estimated from the histogram (many), and a reported percentile agrees with its verdict.
func TestWindowSLAVerdictIsExact(t *testing.T) {
	type group struct {
		n  int
		ms float64
	}
	cases := []struct {
		name   string
		groups []group
		p95Met bool
		p99Met bool
	}{
		{"p95 of 121 ms hidden in a wide bucket", []group{{94, 50}, {6, 121}}, false, true},
		{"every request at 118 ms", []group{{100, 118}}, true, true},
		{"interpolation crosses the target", []group{{95, 119.9}, {5, 122}}, false, true},
		{"interpolation stays below the target", []group{{95, 119}, {5, 121}}, true, true},
		{"exactly on the target", []group{{100, 120}}, true, true},
		{"p99 over by a microsecond", []group{{98, 10}, {2, 200.001}}, true, false},
		{"p99 straddle within", []group{{99, 199}, {1, 250}}, false, true},
		{"over by less than the reported precision", []group{{100, 120.0004}}, false, true},
	}
	for _, tc := range cases {
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", tc.name, exact), func(t *testing.T) {
				w := newWindow(time.Hour, 50_000, 120, 200)
				if !exact {
					w.ring = nil // the histogram estimate of a busy window
				}
				now := time.Unix(1_700_000_000, 0)
				var lat []float64
				for _, g := range tc.groups {
					for i := 0; i < g.n; i++ {
						w.Record(now, time.Duration(g.ms*float64(time.Millisecond)), 200)
						lat = append(lat, g.ms)
					}
				}
				s := w.Snapshot(now.Add(time.Second))
				p95, p99 := *s.LatencyMs["p95"], *s.LatencyMs["p99"]
				if s.SLA.P95Met != tc.p95Met || s.SLA.P99Met != tc.p99Met {
					t.Fatalf("p95 %.3f met %v, p99 %.3f met %v; want met %v and %v (exact p95 %.4f p99 %.4f)",
						p95, s.SLA.P95Met, p99, s.SLA.P99Met, tc.p95Met, tc.p99Met,
						exactPercentile(lat, 0.95), exactPercentile(lat, 0.99))
				}
				if (p95 <= 120) != s.SLA.P95Met || (p99 <= 200) != s.SLA.P99Met {
					t.Fatalf("reported p95 %.3f / p99 %.3f contradict the verdicts %+v", p95, p99, s.SLA)
				}
				if exact {
					for name, q := range map[string]float64{"p50": 0.5, "p95": 0.95, "p99": 0.99} {
						if got, want := *s.LatencyMs[name], exactPercentile(lat, q); math.Abs(got-want) > 0.0015 {
							t.Errorf("%s = %.4f, exact %.4f", name, got, want)
						}
					}
				}
			})
		}
	}
}

// Random windows around the targets: the estimated verdict always equals the exact one.
func TestWindowEstimatedVerdictMatchesExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	now := time.Unix(1_700_000_000, 0)
	for round := 0; round < 300; round++ {
		w := newWindow(time.Hour, 50_000, 120, 200)
		w.ring = nil
		var lat []float64
		n := 20 + rng.IntN(400)
		for i := 0; i < n; i++ {
			us := 100_000 + rng.Int64N(120_000) // 100..220 ms: both targets in play
			if rng.IntN(3) > 0 {
				us = 1_000 + rng.Int64N(50_000)
			}
			w.Record(now, time.Duration(us)*time.Microsecond, 200)
			lat = append(lat, float64(us)/1000)
		}
		s := w.Snapshot(now.Add(time.Second))
		if want := exactPercentile(lat, 0.95) <= 120; s.SLA.P95Met != want {
			t.Fatalf("round %d: p95_met %v, exact p95 %.4f", round, s.SLA.P95Met, exactPercentile(lat, 0.95))
		}
		if want := exactPercentile(lat, 0.99) <= 200; s.SLA.P99Met != want {
			t.Fatalf("round %d: p99_met %v, exact p99 %.4f", round, s.SLA.P99Met, exactPercentile(lat, 0.99))
		}
	}
}

// A sample is filed under its completion time: a request slower than the window lands in the
// current second beside the others instead of resetting it.
func TestWindowFilesSlowRequestAtCompletion(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	w := newWindow(10*time.Second, 50_000, 120, 200)
	for i := 0; i < 100; i++ {
		w.Record(now, 5*time.Millisecond, 200)
	}
	w.Record(now.Add(-11*time.Second), 11*time.Second, 200)
	if s := w.Snapshot(now); s.SampleSize != 101 {
		t.Fatalf("sample_size %d, want 101", s.SampleSize)
	}
}

func TestWindowLongSpanUsesWiderBuckets(t *testing.T) {
	w := newWindow(24*time.Hour, 1_000_000, 120, 200)
	if len(w.buckets) > maxBuckets+1 || w.widthMs != 24_000 {
		t.Fatalf("%d buckets of %d ms", len(w.buckets), w.widthMs)
	}
	base := time.Unix(1_700_000_000, 0)
	w.Record(base, time.Millisecond, 200)
	if s := w.Snapshot(base.Add(23 * time.Hour)); s.SampleSize != 1 {
		t.Fatalf("sample lost within 24h: %+v", s)
	}
	if s := w.Snapshot(base.Add(25 * time.Hour)); s.SampleSize != 0 {
		t.Fatalf("sample kept after 25h: %+v", s)
	}
}

func TestLatencyBucketsCoverTheRange(t *testing.T) {
	prevHigh := 0.0
	for i := 0; i < latBuckets; i++ {
		low, high := latBounds(i)
		if low != prevHigh || high <= low {
			t.Fatalf("bucket %d [%v,%v) after %v", i, low, high, prevHigh)
		}
		if i >= subCount && (high-low)/low > 1.0/subCount+1e-9 {
			t.Fatalf("bucket %d too wide: [%v,%v)", i, low, high)
		}
		prevHigh = high
	}
	for _, us := range []int64{0, 1, 7, 8, 9, 15, 16, 1000, 1023, 1024, 123456, 1 << 30, 1<<31 - 1} {
		low, high := latBounds(latIndex(us))
		if float64(us) < low || float64(us) >= high {
			t.Fatalf("%d µs in bucket [%v,%v)", us, low, high)
		}
	}
	if latIndex(1<<40) != latBuckets-1 || latIndex(-5) != 0 {
		t.Fatal("out of range values not clamped")
	}
}

func BenchmarkWindowRecord(b *testing.B) {
	w := newWindow(time.Hour, 50_000, 120, 200)
	now := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Record(now, 3*time.Millisecond, 200)
		}
	})
}

func BenchmarkWindowSnapshotFullHour(b *testing.B) {
	w := newWindow(time.Hour, 50_000_000, 120, 200)
	base := time.Now()
	for s := 0; s < 3600; s++ {
		for i := 0; i < 20; i++ {
			w.Record(base.Add(time.Duration(s)*time.Second), time.Duration(i+1)*time.Millisecond, 200)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.Snapshot(base.Add(3600 * time.Second))
	}
}
