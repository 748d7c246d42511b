package reco

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// window is the /metrics/reco latency and status window (api-contract §9.2) in bounded memory
// and O(1) per request: a ring of time buckets, each holding status-family counters and a
// fixed log-scale latency histogram. The original kept every sample in a deque and sorted
// them on every snapshot.
//
// Semantics, documented because they differ slightly from a list of samples:
//   - Bucket width is max(1 s, window/maxBuckets), so at most maxBuckets buckets exist; the
//     window covers the current bucket plus the window/width previous ones, so a sample
//     stays counted between window_sec and window_sec + one bucket width.
//   - max-samples: a snapshot takes buckets newest first while the running total stays within
//     max-samples; the newest bucket is always taken. So the cap is applied in whole buckets
//     (whole seconds by default), never by dropping part of a second.
//   - Percentiles use the contract's rule (rank (N−1)·q, linear interpolation between the two
//     neighbouring samples), where a sample's value is estimated by spreading the samples of
//     its histogram bucket evenly across the bucket: the error is below the bucket's relative
//     width, 1/8 (12.5 %) at worst and ~6 % typically.
//   - status_counts adds "3xx" (the original counted 3xx nowhere), and error_rate_pct counts
//     5xx only: a client's bad request is not a server error (api-contract §16.20).
type window struct {
	mu         sync.Mutex
	widthMs    int64
	span       int64 // buckets covering the window, the current one excluded
	maxSamples int
	buckets    []wbucket
	slaP95     float64
	slaP99     float64
	windowSec  int64
}

const (
	maxBuckets = 3600
	// Latency histogram: microseconds, 8 sub-buckets per power of two (HDR-style).
	subBits    = 3
	subCount   = 1 << subBits
	maxExp     = 31 // values are capped at 2^31 µs (~36 min)
	latBuckets = subCount + (maxExp-subBits+1)*subCount
)

// Status family indexes.
const (
	fam2xx = iota
	fam3xx
	fam4xx
	fam5xx
	famOther
	famCount
)

type wbucket struct {
	slot   int64 // time / width; -1 when empty
	count  uint32
	status [famCount]uint32
	lat    [latBuckets]uint32
}

func newWindow(length time.Duration, maxSamples int, slaP95, slaP99 float64) *window {
	ms := length.Milliseconds()
	if ms < 1000 {
		ms = 1000
	}
	width := max(int64(1000), (ms+maxBuckets-1)/maxBuckets)
	span := (ms + width - 1) / width
	w := &window{widthMs: width, span: span, maxSamples: maxSamples, buckets: make([]wbucket, span+1),
		slaP95: slaP95, slaP99: slaP99, windowSec: ms / 1000}
	for i := range w.buckets {
		w.buckets[i].slot = -1
	}
	return w
}

func family(status int) int {
	switch {
	case status >= 200 && status < 300:
		return fam2xx
	case status >= 300 && status < 400:
		return fam3xx
	case status >= 400 && status < 500:
		return fam4xx
	case status >= 500 && status < 600:
		return fam5xx
	}
	return famOther
}

// latIndex maps a latency in microseconds to its histogram bucket.
func latIndex(us int64) int {
	if us < subCount {
		if us < 0 {
			return 0
		}
		return int(us)
	}
	if us >= 1<<maxExp {
		return latBuckets - 1
	}
	e := 63 - bits.LeadingZeros64(uint64(us)) // floor(log2 us), >= subBits
	m := (us >> (e - subBits)) & (subCount - 1)
	return subCount + (e-subBits)*subCount + int(m)
}

// latBounds returns the [low, high) microsecond range of a bucket.
func latBounds(i int) (float64, float64) {
	if i < subCount {
		return float64(i), float64(i + 1)
	}
	e := (i-subCount)/subCount + subBits
	m := (i - subCount) % subCount
	low := int64(subCount+m) << (e - subBits)
	high := int64(subCount+m+1) << (e - subBits)
	return float64(low), float64(high)
}

// Record adds one request. Cost: a lock, a few increments, and a bucket reset once per bucket
// width.
func (w *window) Record(now time.Time, latency time.Duration, status int) {
	slot := now.UnixMilli() / w.widthMs
	li := latIndex(latency.Microseconds())
	f := family(status)
	w.mu.Lock()
	b := &w.buckets[slot%int64(len(w.buckets))]
	if b.slot != slot {
		*b = wbucket{slot: slot}
	}
	b.count++
	b.status[f]++
	b.lat[li]++
	w.mu.Unlock()
}

// windowSnapshot is the §9.2 JSON shape.
type windowSnapshot struct {
	WindowSec    int64               `json:"window_sec"`
	SampleSize   int64               `json:"sample_size"`
	StatusCounts map[string]int64    `json:"status_counts"`
	ErrorRatePct float64             `json:"error_rate_pct"`
	LatencyMs    map[string]*float64 `json:"latency_ms"`
	SLA          windowSLA           `json:"sla"`
}

type windowSLA struct {
	TargetP95Ms float64 `json:"target_p95_ms"`
	TargetP99Ms float64 `json:"target_p99_ms"`
	P95Met      bool    `json:"p95_met"`
	P99Met      bool    `json:"p99_met"`
}

// Snapshot merges the buckets of the window (newest first, within max-samples).
func (w *window) Snapshot(now time.Time) windowSnapshot {
	cur := now.UnixMilli() / w.widthMs
	var status [famCount]int64
	var lat [latBuckets]int64
	var n int64
	w.mu.Lock()
	for s := cur; s >= cur-w.span && s >= 0; s-- {
		b := &w.buckets[s%int64(len(w.buckets))]
		if b.slot != s || b.count == 0 {
			continue
		}
		if n > 0 && n+int64(b.count) > int64(w.maxSamples) {
			break
		}
		n += int64(b.count)
		for i, c := range b.status {
			status[i] += int64(c)
		}
		for i, c := range b.lat {
			if c != 0 {
				lat[i] += int64(c)
			}
		}
	}
	w.mu.Unlock()

	out := windowSnapshot{
		WindowSec:  w.windowSec,
		SampleSize: n,
		StatusCounts: map[string]int64{"2xx": status[fam2xx], "3xx": status[fam3xx], "4xx": status[fam4xx],
			"5xx": status[fam5xx]},
		LatencyMs: map[string]*float64{"p50": nil, "p95": nil, "p99": nil},
		SLA:       windowSLA{TargetP95Ms: w.slaP95, TargetP99Ms: w.slaP99, P95Met: true, P99Met: true},
	}
	if n == 0 {
		return out
	}
	out.ErrorRatePct = round3(float64(status[fam5xx]) / float64(n) * 100)
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p95", 0.95}, {"p99", 0.99}} {
		v := round3(percentile(&lat, n, q.q) / 1000)
		out.LatencyMs[q.name] = &v
	}
	out.SLA.P95Met = *out.LatencyMs["p95"] <= w.slaP95
	out.SLA.P99Met = *out.LatencyMs["p99"] <= w.slaP99
	return out
}

// percentile returns the q-quantile in microseconds by the contract's rule over the estimated
// sample values (see window).
func percentile(lat *[latBuckets]int64, n int64, q float64) float64 {
	r := float64(n-1) * q
	lo := int64(math.Floor(r))
	frac := r - float64(lo)
	v := valueAt(lat, lo)
	if frac == 0 || lo+1 >= n {
		return v
	}
	return v + (valueAt(lat, lo+1)-v)*frac
}

// valueAt estimates the i-th smallest sample (0-based): the samples of a bucket are spread
// evenly across its range.
func valueAt(lat *[latBuckets]int64, i int64) float64 {
	var seen int64
	for b, c := range lat {
		if c == 0 {
			continue
		}
		if i < seen+c {
			low, high := latBounds(b)
			pos := (float64(i-seen) + 0.5) / float64(c)
			return low + (high-low)*pos
		}
		seen += c
	}
	return 0
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
