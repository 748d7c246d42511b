package loadgen

import (
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 5 minutes with 3 significant digits: a
// reported percentile is within 0.1 % of the exact order statistic, whatever the load.
const (
	histMinUs     = 1
	histMaxUs     = int64(5 * time.Minute / time.Microsecond)
	histSigDigits = 3
	// Per-second timeline histograms only feed the latency-over-time plot; 2 digits (1 %)
	// keep each one at ~20 KiB so a long run stays small.
	timelineSigDigits = 2
)

// Result is one HTTP request of the benchmark.
type Result struct {
	Endpoint string
	// At is when the request was due: the intended send time in open-loop mode (so waiting
	// for a free worker counts as latency, no coordinated omission), the actual send time in
	// closed-loop mode.
	At      time.Time
	Latency time.Duration
	Status  int    // HTTP status, 0 when no response arrived
	Err     string // "" for 2xx; "HTTPError: <code>" or "<Kind>: <message>"
}

// OK reports a 2xx response.
func (r Result) OK() bool { return r.Status >= 200 && r.Status < 300 }

// series accumulates one endpoint's results.
type series struct {
	hist     *hdrhistogram.Histogram
	count    int64
	ok       int64
	notSent  int64 // open-loop operations recorded as failed but never sent (errNotSent)
	sumUs    float64
	maxUs    int64
	statuses map[int]int64
	errors   map[string]int64
}

func newSeries() *series {
	return &series{hist: hdrhistogram.New(histMinUs, histMaxUs, histSigDigits), statuses: map[int]int64{}, errors: map[string]int64{}}
}

func (s *series) add(r Result) {
	us := r.Latency.Microseconds()
	if us < histMinUs {
		us = histMinUs
	}
	if us > histMaxUs {
		us = histMaxUs
	}
	_ = s.hist.RecordValue(us) // in range by construction
	s.count++
	s.sumUs += float64(us)
	if us > s.maxUs {
		s.maxUs = us
	}
	s.statuses[r.Status]++
	if r.OK() {
		s.ok++
	} else {
		s.errors[r.Err]++
	}
	if r.Err == errNotSent {
		s.notSent++
	}
}

type second struct {
	count, errors int64
	hist          *hdrhistogram.Histogram
}

// Recorder collects results from every worker. One mutex is enough: an update costs well
// under a microsecond next to a loopback HTTP round trip.
type Recorder struct {
	mu       sync.Mutex
	start    time.Time
	all      *series
	byEP     map[string]*series
	timeline []*second
}

// NewRecorder starts a recorder whose timeline counts seconds from start.
func NewRecorder(start time.Time) *Recorder {
	return &Recorder{start: start, all: newSeries(), byEP: map[string]*series{}}
}

// Add records one result.
func (rc *Recorder) Add(r Result) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.all.add(r)
	s := rc.byEP[r.Endpoint]
	if s == nil {
		s = newSeries()
		rc.byEP[r.Endpoint] = s
	}
	s.add(r)
	sec := int(r.At.Sub(rc.start) / time.Second)
	if sec < 0 {
		sec = 0
	}
	for len(rc.timeline) <= sec {
		rc.timeline = append(rc.timeline, nil)
	}
	b := rc.timeline[sec]
	if b == nil {
		b = &second{hist: hdrhistogram.New(histMinUs, histMaxUs, timelineSigDigits)}
		rc.timeline[sec] = b
	}
	b.count++
	if !r.OK() {
		b.errors++
	}
	us := min(max(r.Latency.Microseconds(), histMinUs), histMaxUs)
	_ = b.hist.RecordValue(us)
}

// Count returns how many results were recorded.
func (rc *Recorder) Count() int64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.all.count
}

// LatencyMs are the latency statistics of a summary, in milliseconds with 3 decimals.
type LatencyMs struct {
	P50  *float64 `json:"p50"`
	P90  *float64 `json:"p90"`
	P95  *float64 `json:"p95"`
	P99  *float64 `json:"p99"`
	P999 *float64 `json:"p99_9"`
	Mean *float64 `json:"mean"`
	Max  *float64 `json:"max"`
}

// Summary is the contract's summary block (plus p90 and p99.9).
type Summary struct {
	RequestsTotal  int64            `json:"requests_total"`
	RequestsOK     int64            `json:"requests_ok"`
	RequestsFailed int64            `json:"requests_failed"`
	ErrorRatePct   float64          `json:"error_rate_pct"`
	RPS            float64          `json:"rps"`
	LatencyMs      LatencyMs        `json:"latency_ms"`
	StatusCodes    map[string]int64 `json:"status_codes"`
	Errors         map[string]int64 `json:"errors"`
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func msPtr(us float64) *float64 {
	v := round3(us / 1000)
	return &v
}

func (s *series) summary(elapsed time.Duration) Summary {
	out := Summary{RequestsTotal: s.count, RequestsOK: s.ok, RequestsFailed: s.count - s.ok,
		StatusCodes: map[string]int64{}, Errors: map[string]int64{}}
	// As in the original: 100 % errors when nothing ran, so an empty run never looks healthy.
	out.ErrorRatePct = 100
	if s.count > 0 {
		out.ErrorRatePct = round3(float64(out.RequestsFailed) / float64(s.count) * 100)
	}
	// rps is the throughput the server saw: an operation that fell due but was never sent is a
	// failure (it counts in requests_total and the error rate), not a request per second, or a
	// stalled server would show the --rate it could not keep.
	if elapsed > 0 {
		out.RPS = round3(float64(s.count-s.notSent) / elapsed.Seconds())
	}
	for code, n := range s.statuses {
		out.StatusCodes[strconv.Itoa(code)] = n
	}
	for msg, n := range s.errors {
		out.Errors[msg] = n
	}
	if s.count > 0 {
		q := func(p float64) *float64 { return msPtr(float64(s.at(p))) }
		out.LatencyMs = LatencyMs{P50: q(50), P90: q(90), P95: q(95), P99: q(99), P999: q(99.9),
			Mean: msPtr(s.sumUs / float64(s.count)), Max: msPtr(float64(s.maxUs))}
	}
	return out
}

// at is the latency at percentile p in µs. HDR answers the top of the value's bucket, up to
// 0.1 % above what was recorded: capped at the exact max, no percentile exceeds it.
func (s *series) at(p float64) int64 { return min(s.hist.ValueAtQuantile(p), s.maxUs) }

// PercentilePoint is one point of the percentile distribution (for the plot).
type PercentilePoint struct {
	Percentile float64 `json:"percentile"`
	LatencyMs  float64 `json:"latency_ms"`
}

// percentileCurve samples the distribution at 0, 50, 75, 87.5, ... up to the max: evenly
// spaced on the 1/(1-q) log axis the plot uses.
func (s *series) percentileCurve() []PercentilePoint {
	if s.count == 0 {
		return nil
	}
	var out []PercentilePoint
	for i := 0; i <= 24; i++ {
		p := 100 * (1 - math.Pow(0.5, float64(i)))
		if i > 0 && (1-p/100)*float64(s.count) < 0.5 {
			break
		}
		out = append(out, PercentilePoint{Percentile: round3(p), LatencyMs: round3(float64(s.at(p)) / 1000)})
	}
	out = append(out, PercentilePoint{Percentile: 100, LatencyMs: round3(float64(s.maxUs) / 1000)})
	return out
}

// TimelinePoint is one second of the run.
type TimelinePoint struct {
	Second   int     `json:"second"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	P50Ms    float64 `json:"p50_ms"`
	P95Ms    float64 `json:"p95_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
}

func (rc *Recorder) timelinePoints() []TimelinePoint {
	var out []TimelinePoint
	for i, b := range rc.timeline {
		if b == nil {
			out = append(out, TimelinePoint{Second: i})
			continue
		}
		out = append(out, TimelinePoint{Second: i, Requests: b.count, Errors: b.errors,
			P50Ms: round3(float64(b.hist.ValueAtQuantile(50)) / 1000), P95Ms: round3(float64(b.hist.ValueAtQuantile(95)) / 1000),
			P99Ms: round3(float64(b.hist.ValueAtQuantile(99)) / 1000), MaxMs: round3(float64(b.hist.Max()) / 1000)})
	}
	return out
}

// Snapshot is what the report needs from the recorder.
type Snapshot struct {
	Summary     Summary
	Endpoints   map[string]Summary
	Percentiles map[string][]PercentilePoint
	Timeline    []TimelinePoint
}

// Snapshot summarises everything recorded, with rates over elapsed.
func (rc *Recorder) Snapshot(elapsed time.Duration) Snapshot {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := Snapshot{Summary: rc.all.summary(elapsed), Endpoints: map[string]Summary{}, Percentiles: map[string][]PercentilePoint{}}
	names := make([]string, 0, len(rc.byEP))
	for n := range rc.byEP {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out.Endpoints[n] = rc.byEP[n].summary(elapsed)
		out.Percentiles[n] = rc.byEP[n].percentileCurve()
	}
	out.Percentiles["all"] = rc.all.percentileCurve()
	out.Timeline = rc.timelinePoints()
	return out
}
