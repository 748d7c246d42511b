package eval

import (
	"cmp"
	"context"
	"runtime"
	"slices"
	"time"
)

// Metrics are HR@k and NDCG@k over N test cases.
type Metrics struct {
	N    int     `json:"n"`
	HR   float64 `json:"hr"`
	NDCG float64 `json:"ndcg"`
}

func metricsOf(a Acc) Metrics { return Metrics{N: a.N, HR: a.HR(), NDCG: a.MeanNDCG()} }

// Window is the metrics of one slice of the replay (equal numbers of events).
type Window struct {
	FromEvent int     `json:"from_event"`
	ToEvent   int     `json:"to_event"`
	FromTs    string  `json:"from_ts"`
	ToTs      string  `json:"to_ts"`
	Metrics   Metrics `json:"metrics"`
}

// MethodResult is one method's outcome of a protocol.
type MethodResult struct {
	Method  string  `json:"method"`
	Overall Metrics `json:"overall"`
	// Tuning covers the replay before the held-out part, Holdout the held-out part (prequential).
	Tuning  *Metrics `json:"tuning,omitempty"`
	Holdout *Metrics `json:"holdout,omitempty"`
	Windows []Window `json:"windows,omitempty"`
	// Coverage is distinct recommended items / distinct items in the dataset.
	Coverage float64 `json:"catalog_coverage"`
	// MeanLatencyUs is the mean wall time of one Recommend call, microseconds.
	MeanLatencyUs float64 `json:"mean_latency_us"`
	// MeanCPUUs is the mean CPU time of the thread during one Recommend call (Linux; 0
	// elsewhere): unlike wall time it does not count waiting for a core on a busy machine.
	MeanCPUUs float64 `json:"mean_cpu_us"`
	// Curve is HR@k per equal slice of the replay (for the plot).
	Curve []float64 `json:"curve,omitempty"`
}

// PrequentialOptions configures Prequential.
type PrequentialOptions struct {
	K int
	// Windows is the number of equal-count windows reported.
	Windows int
	// HoldoutFrom is the fraction of the stream after which events form the held-out part.
	HoldoutFrom float64
	// CurvePoints is the number of points of the HR curve.
	CurvePoints int
	// TestEvery tests only every n-th event (all events are still applied); 1 tests all.
	TestEvery int
	// Progress, when set, is called with the number of events done so far.
	Progress func(done int)
}

type runState struct {
	m        Method
	all      Acc
	tune     Acc
	hold     Acc
	windows  []Acc
	curve    []Acc
	recd     map[string]struct{}
	latency  time.Duration
	cpuNs    int64
	requests int
}

// timed calls m.Recommend and returns its list, wall time and thread CPU time.
func timed(m Method, user string, nowMs int64, k int) ([]string, time.Duration, int64) {
	c0, _ := threadCPU()
	t0 := time.Now()
	list := m.Recommend(user, nowMs, k)
	wall := time.Since(t0)
	c1, _ := threadCPU()
	return list, wall, c1 - c0
}

// Prequential replays ratings in order; before applying each, every method is asked for the
// user's top K and the rating's item is looked up in it (test, then learn). A test at time t
// sees only ratings strictly before t.
func Prequential(ctx context.Context, ratings []Rating, methods []Method, o PrequentialOptions) ([]MethodResult, error) {
	n := len(ratings)
	o.Windows = max(o.Windows, 1)
	o.CurvePoints = max(o.CurvePoints, 1)
	o.TestEvery = max(o.TestEvery, 1)
	holdAt := int(float64(n) * o.HoldoutFrom)
	// The thread CPU clock needs the calls to stay on one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	states := make([]*runState, len(methods))
	for i, m := range methods {
		states[i] = &runState{m: m, windows: make([]Acc, o.Windows), curve: make([]Acc, o.CurvePoints), recd: map[string]struct{}{}}
	}
	groupStart := 0
	for idx, r := range ratings {
		if idx%o.TestEvery == 0 {
			for _, st := range states {
				list, wall, cpu := timed(st.m, r.User, r.TsMs, o.K)
				st.latency += wall
				st.cpuNs += cpu
				st.requests++
				rank := Rank(list, r.Item)
				st.all.Add(rank)
				if idx >= holdAt {
					st.hold.Add(rank)
				} else {
					st.tune.Add(rank)
				}
				st.windows[idx*o.Windows/n].Add(rank)
				st.curve[idx*o.CurvePoints/n].Add(rank)
				for _, it := range list {
					st.recd[it] = struct{}{}
				}
			}
		}
		// Ratings sharing a timestamp are simultaneous (MovieLens records a page of ratings
		// under one second; their line order is the file's, e.g. by movie id): none may inform
		// the test of another, so they are applied together after the last of them is tested.
		if idx == n-1 || ratings[idx+1].TsMs != r.TsMs {
			for _, rr := range ratings[groupStart : idx+1] {
				for _, st := range states {
					st.m.Observe(rr)
				}
			}
			groupStart = idx + 1
		}
		if idx%512 == 0 || idx == n-1 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if o.Progress != nil {
				o.Progress(idx + 1)
			}
		}
	}
	catalog := catalogSize(ratings)
	out := make([]MethodResult, len(states))
	for i, st := range states {
		tune, hold := metricsOf(st.tune), metricsOf(st.hold)
		res := MethodResult{
			Method:   st.m.Name(),
			Overall:  metricsOf(st.all),
			Tuning:   &tune,
			Holdout:  &hold,
			Coverage: float64(len(st.recd)) / float64(max(catalog, 1)),
		}
		if st.requests > 0 {
			res.MeanLatencyUs = float64(st.latency.Nanoseconds()) / 1e3 / float64(st.requests)
			res.MeanCPUUs = float64(st.cpuNs) / 1e3 / float64(st.requests)
		}
		for w := range st.windows {
			from, to := w*n/o.Windows, (w+1)*n/o.Windows
			res.Windows = append(res.Windows, Window{
				FromEvent: from, ToEvent: to,
				FromTs: tsString(ratings[from].TsMs), ToTs: tsString(ratings[max(to-1, from)].TsMs),
				Metrics: metricsOf(st.windows[w]),
			})
		}
		for _, c := range st.curve {
			res.Curve = append(res.Curve, c.HR())
		}
		out[i] = res
	}
	return out, nil
}

// LeaveLastOutOptions configures LeaveLastOut.
type LeaveLastOutOptions struct {
	K        int
	Progress func(done int)
}

// LeaveLastOut holds out each user's last rating (replay order), applies every other rating in
// replay order except the user's others at the held-out rating's timestamp, retrains Trainers
// once, then asks each user's top K at the time of the held-out rating. Users with a single
// rating are skipped.
func LeaveLastOut(ctx context.Context, ratings []Rating, methods []Method, o LeaveLastOutOptions) ([]MethodResult, error) {
	last := map[string]int{}
	count := map[string]int{}
	for i, r := range ratings {
		last[r.User] = i
		count[r.User]++
	}
	var tests []int
	for u, i := range last {
		if count[u] > 1 {
			tests = append(tests, i)
		}
	}
	slices.SortFunc(tests, func(a, b int) int { return cmp.Compare(a, b) })
	isTest := make([]bool, len(ratings))
	heldTs := make(map[string]int64, len(tests))
	for _, i := range tests {
		isTest[i] = true
		heldTs[ratings[i].User] = ratings[i].TsMs
	}
	done := 0
	for i, r := range ratings {
		if isTest[i] {
			continue
		}
		// The user's ratings at the held-out rating's own timestamp were made together with
		// it (their order is the file's), so they must not be the history it is predicted from.
		if t, ok := heldTs[r.User]; ok && r.TsMs == t {
			continue
		}
		for _, m := range methods {
			m.Observe(r)
		}
		done++
		if done%512 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if o.Progress != nil {
				o.Progress(done)
			}
		}
	}
	for _, m := range methods {
		if t, ok := m.(Trainer); ok {
			t.Train()
		}
	}
	catalog := catalogSize(ratings)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	out := make([]MethodResult, len(methods))
	for mi, m := range methods {
		var acc Acc
		recd := map[string]struct{}{}
		var lat time.Duration
		var cpuNs int64
		for _, i := range tests {
			r := ratings[i]
			list, wall, cpu := timed(m, r.User, r.TsMs, o.K)
			lat += wall
			cpuNs += cpu
			acc.Add(Rank(list, r.Item))
			for _, it := range list {
				recd[it] = struct{}{}
			}
		}
		out[mi] = MethodResult{
			Method:   m.Name(),
			Overall:  metricsOf(acc),
			Coverage: float64(len(recd)) / float64(max(catalog, 1)),
		}
		if len(tests) > 0 {
			out[mi].MeanLatencyUs = float64(lat.Nanoseconds()) / 1e3 / float64(len(tests))
			out[mi].MeanCPUUs = float64(cpuNs) / 1e3 / float64(len(tests))
		}
		if o.Progress != nil {
			o.Progress(done + (mi+1)*len(tests)/len(methods))
		}
	}
	return out, nil
}

func catalogSize(ratings []Rating) int {
	items := map[string]struct{}{}
	for _, r := range ratings {
		items[r.Item] = struct{}{}
	}
	return len(items)
}

func tsString(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339) }
