package features

import (
	"math"
	"time"
)

// RebaseExponent is the largest forward-decay exponent (t−L)/h a store should let happen
// before it rebases. 2^500 ≈ 3e150 leaves ~150 orders of magnitude of float64 headroom for
// sums, and Lua (double) and PostgreSQL double precision share the same limit.
const RebaseExponent = 500.0

// Decay is exponential time decay with half-life h as forward decay relative to a landmark L:
//
//	stored  = Σ w_i · 2^((t_i − L)/h)       (only ever incremented, never swept)
//	value(now) = stored · 2^(−(now − L)/h)   (= Σ w_i · 2^(−(now − t_i)/h))
//
// Ordering items by stored value equals ordering them by current value, so sorted sets (Redis
// ZSETs) stay valid without rewriting. When a new event would have an exponent above
// RebaseExponent, the store rebases: multiply every stored value of this half-life by
// Factor(newL) (in Redis one ZUNIONSTORE key 1 key WEIGHTS f per key; in SQL one UPDATE) and
// move L to newL — typically the event's time. With h = 6 h that happens every ~125 days,
// with h = 7 d every ~10 years.
type Decay struct {
	HalfLifeMs float64
	LandmarkMs int64
}

// NewDecay returns a Decay with the given half-life and landmark.
func NewDecay(halfLife time.Duration, landmarkMs int64) Decay {
	return Decay{HalfLifeMs: float64(halfLife.Milliseconds()), LandmarkMs: landmarkMs}
}

// Exponent is (ts − L)/h.
func (d Decay) Exponent(tsMs int64) float64 { return float64(tsMs-d.LandmarkMs) / d.HalfLifeMs }

// Forward is the stored increment for weight w at time ts: w·2^((ts−L)/h).
func (d Decay) Forward(w float64, tsMs int64) float64 { return w * math.Exp2(d.Exponent(tsMs)) }

// At is the current value at now of a stored sum: stored·2^(−(now−L)/h).
func (d Decay) At(stored float64, nowMs int64) float64 {
	return stored * math.Exp2(-d.Exponent(nowMs))
}

// NeedsRebase reports whether storing an increment at ts would exceed RebaseExponent.
func (d Decay) NeedsRebase(tsMs int64) bool { return d.Exponent(tsMs) > RebaseExponent }

// Rebase moves the landmark to newLandmarkMs and returns the factor every stored value must be
// multiplied by: 2^(−(newL − L)/h).
func (d Decay) Rebase(newLandmarkMs int64) (factor float64, next Decay) {
	factor = math.Exp2(-float64(newLandmarkMs-d.LandmarkMs) / d.HalfLifeMs)
	return factor, Decay{HalfLifeMs: d.HalfLifeMs, LandmarkMs: newLandmarkMs}
}
