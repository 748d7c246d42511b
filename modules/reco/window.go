package reco

import (
	"math"
	"math/bits"
	"slices"
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
//     neighbouring samples). They are exact while the window holds at most exactSamples
//     samples (the newest ones are also kept raw, in a ring). Beyond that a sample's value is
//     estimated by spreading the samples of its histogram bucket evenly across the bucket:
//     the error is below the bucket's relative width, 1/8 (12.5 %) at worst and ~6 %
//     typically.
//   - The SLA verdicts (p95_met, p99_met) are exact either way: each bucket also counts the
//     samples within each target and keeps the largest of them and the smallest sample above
//     it, which are the only two values the verdict can hinge on. The estimates are split at
//     the targets too, so a reported percentile is never on the other side of its target
//     than the verdict says.
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
	targetsNs  [2]int64 // the SLA targets, a sample is within one when its ns ≤ it
	windowSec  int64
	ring       []rawSample // the newest samples, for exact percentiles of small windows
	ringNext   uint64
}

// rawSample is one request kept raw: its bucket slot and latency.
type rawSample struct {
	slot int64
	ns   int64
}

// exactSamples bounds the raw samples kept (16 B each): windows holding at most this many get
// exact percentiles.
const exactSamples = 4096

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
	within [2]targetCount // per SLA target
}

// targetCount is what the exact SLA verdict needs of one bucket for one target.
type targetCount struct {
	n       uint32 // samples within the target
	maxIn   int64  // ns, the largest of them
	minOver int64  // ns, the smallest sample above the target; math.MaxInt64 when none
}

func newWindow(length time.Duration, maxSamples int, slaP95, slaP99 float64) *window {
	ms := length.Milliseconds()
	if ms < 1000 {
		ms = 1000
	}
	width := max(int64(1000), (ms+maxBuckets-1)/maxBuckets)
	span := (ms + width - 1) / width
	w := &window{widthMs: width, span: span, maxSamples: maxSamples, buckets: make([]wbucket, span+1),
		slaP95: slaP95, slaP99: slaP99, windowSec: ms / 1000, ring: make([]rawSample, exactSamples)}
	w.targetsNs = [2]int64{int64(math.Floor(slaP95 * 1e6)), int64(math.Floor(slaP99 * 1e6))}
	for i := range w.buckets {
		w.buckets[i].reset(-1)
	}
	for i := range w.ring {
		w.ring[i].slot = -1
	}
	return w
}

func (b *wbucket) reset(slot int64) {
	*b = wbucket{slot: slot}
	for i := range b.within {
		b.within[i].minOver = math.MaxInt64
	}
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

// Record adds one request that started at start and took latency. It is filed under its
// completion time, as the contract records it: filed under its start, a request slower than
// the window would land in (and reset) the slot of the current bucket. Cost: a lock, a few
// increments, and a bucket reset once per bucket width.
func (w *window) Record(start time.Time, latency time.Duration, status int) {
	slot := start.Add(latency).UnixMilli() / w.widthMs
	ns := max(latency.Nanoseconds(), 0)
	li := latIndex(latency.Microseconds())
	f := family(status)
	w.mu.Lock()
	b := &w.buckets[slot%int64(len(w.buckets))]
	if b.slot != slot {
		b.reset(slot)
	}
	b.count++
	b.status[f]++
	b.lat[li]++
	for i, t := range w.targetsNs {
		tc := &b.within[i]
		if ns <= t {
			tc.n++
			tc.maxIn = max(tc.maxIn, ns)
		} else {
			tc.minOver = min(tc.minOver, ns)
		}
	}
	if len(w.ring) > 0 {
		w.ring[w.ringNext%uint64(len(w.ring))] = rawSample{slot: slot, ns: ns}
		w.ringNext++
	}
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
	within := [2]targetCount{{minOver: math.MaxInt64}, {minOver: math.MaxInt64}}
	var withinN [2]int64
	oldest := cur + 1
	w.mu.Lock()
	for s := cur; s >= cur-w.span && s >= 0; s-- {
		b := &w.buckets[s%int64(len(w.buckets))]
		if b.slot != s || b.count == 0 {
			continue
		}
		if n > 0 && n+int64(b.count) > int64(w.maxSamples) {
			break
		}
		oldest = s
		n += int64(b.count)
		for i, c := range b.status {
			status[i] += int64(c)
		}
		for i, c := range b.lat {
			if c != 0 {
				lat[i] += int64(c)
			}
		}
		for i, tc := range b.within {
			withinN[i] += int64(tc.n)
			within[i].maxIn = max(within[i].maxIn, tc.maxIn)
			within[i].minOver = min(within[i].minOver, tc.minOver)
		}
	}
	raw := w.rawSamples(oldest, cur, n)
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
	var valueAt func(i int64) float64 // the i-th smallest sample in ms
	if raw != nil {
		slices.Sort(raw)
		valueAt = func(i int64) float64 { return float64(raw[i]) / 1e6 }
	} else {
		est := newEstimate(&lat, w.targetsNs, withinN, within)
		valueAt = est.valueAt
	}
	out.SLA.P95Met = met(withinN[0], within[0], n, 0.95, w.targetsNs[0])
	out.SLA.P99Met = met(withinN[1], within[1], n, 0.99, w.targetsNs[1])
	for _, q := range []struct {
		name   string
		q      float64
		missed bool // the verdict says the percentile is above its target
	}{{"p50", 0.50, false}, {"p95", 0.95, !out.SLA.P95Met}, {"p99", 0.99, !out.SLA.P99Met}} {
		v := round3(percentile(valueAt, n, q.q))
		if q.missed {
			// Rounding must not put a missed percentile at its target (120.0004 shown as
			// 120.0 beside p95_met false): round it up.
			v = math.Ceil(percentile(valueAt, n, q.q)*1000) / 1000
		}
		out.LatencyMs[q.name] = &v
	}
	return out
}

// rawSamples returns the latencies (ns) of the n samples of the slots oldest..cur when the
// ring still holds all of them, else nil. The caller holds w.mu.
func (w *window) rawSamples(oldest, cur, n int64) []int64 {
	if n == 0 || n > int64(len(w.ring)) || w.ringNext < uint64(n) {
		return nil
	}
	out := make([]int64, 0, n)
	for _, r := range w.ring {
		// A slot whose bucket was reused is not in the merge, nor are its raw samples.
		if r.slot >= oldest && r.slot <= cur && w.buckets[r.slot%int64(len(w.buckets))].slot == r.slot {
			if int64(len(out)) == n {
				return nil
			}
			out = append(out, r.ns)
		}
	}
	if int64(len(out)) != n {
		return nil // some were overwritten
	}
	return out
}

// met decides exactly whether the contract's q-quantile of the n samples is within the target:
// within samples are ≤ target. The quantile interpolates between the samples of rank lo and
// lo+1; when the target falls between them, they are the largest sample within and the
// smallest above, both known.
func met(within int64, tc targetCount, n int64, q float64, targetNs int64) bool {
	r := float64(n-1) * q
	lo := int64(math.Floor(r))
	frac := r - float64(lo)
	switch {
	case within >= lo+2 || (within == lo+1 && (frac == 0 || lo+1 >= n)):
		return true
	case within <= lo:
		return false
	}
	v := float64(tc.maxIn) + float64(tc.minOver-tc.maxIn)*frac
	return v <= float64(targetNs)
}

// percentile returns the q-quantile by the contract's rule over the sorted sample values.
func percentile(valueAt func(int64) float64, n int64, q float64) float64 {
	r := float64(n-1) * q
	lo := int64(math.Floor(r))
	frac := r - float64(lo)
	v := valueAt(lo)
	if frac == 0 || lo+1 >= n {
		return v
	}
	return v + (valueAt(lo+1)-v)*frac
}

// estimate gives the i-th smallest sample of a histogram: the samples of a bucket are spread
// evenly across its range. A bucket holding an SLA target is split there, with the counts on
// either side known, and the samples just below and above a target are the exact ones, so no
// estimate crosses a target.
type estimate struct {
	pieces []piece
	exact  map[int64]float64 // rank → ms
}

type piece struct {
	low, high float64 // ms
	n         int64
}

func newEstimate(lat *[latBuckets]int64, targetsNs [2]int64, withinN [2]int64, within [2]targetCount) *estimate {
	e := &estimate{exact: map[int64]float64{}}
	var n int64
	for _, c := range lat {
		n += c
	}
	for i, w := range withinN {
		if w > 0 {
			e.exact[w-1] = float64(within[i].maxIn) / 1e6
		}
		if w < n {
			e.exact[w] = float64(within[i].minOver) / 1e6
		}
	}
	var seen int64
	for b, c := range lat {
		if c == 0 {
			continue
		}
		lowUs, highUs := latBounds(b)
		low, high := lowUs/1000, highUs/1000
		// Split points inside this bucket, in order, with the samples up to each.
		for _, i := range splitOrder(targetsNs) {
			t := float64(targetsNs[i]) / 1e6
			if t < low || t >= high {
				continue
			}
			k := min(max(withinN[i]-seen, 0), c)
			e.pieces = append(e.pieces, piece{low, t, k})
			c -= k
			seen += k
			low = t
		}
		e.pieces = append(e.pieces, piece{low, high, c})
		seen += c
	}
	return e
}

func splitOrder(t [2]int64) []int {
	if t[1] < t[0] {
		return []int{1, 0}
	}
	return []int{0, 1}
}

func (e *estimate) valueAt(i int64) float64 {
	if v, ok := e.exact[i]; ok {
		return v
	}
	var seen int64
	for _, p := range e.pieces {
		if i < seen+p.n {
			pos := (float64(i-seen) + 0.5) / float64(p.n)
			return p.low + (p.high-p.low)*pos
		}
		seen += p.n
	}
	return 0
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
