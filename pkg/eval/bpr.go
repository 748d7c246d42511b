package eval

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// BPROptions are the hyperparameters of the BPR matrix-factorisation baseline, the model
// Gorse's master fits periodically for collaborative filtering.
type BPROptions struct {
	Factors int
	Epochs  int
	LR      float64
	Reg     float64
	InitStd float64
	// Seed seeds the initial factors and the SGD sampling; every training starts from it, so a
	// model is a pure function of the observed stream and the tables reproduce exactly.
	Seed uint64
	// RetrainEvery retrains after this many observations (prequential; 0: only Train).
	RetrainEvery int
}

// DefaultBPROptions returns Gorse's BPR defaults (model/cf BPR.SetParams: 100 epochs, lr
// 0.05, reg 0.01, initial factors N(0, 0.001)) except 50 factors instead of 16, the better
// setting on the tuning part (docs/evaluation.md); retrained as often as item-kNN.
func DefaultBPROptions() BPROptions {
	return BPROptions{Factors: 50, Epochs: 100, LR: 0.05, Reg: 0.01, InitStd: 0.001, Seed: 1, RetrainEvery: 2000}
}

// Validate reports every invalid option.
func (o BPROptions) Validate() error {
	var errs []error
	if o.Factors < 1 || o.Factors > 1024 {
		errs = append(errs, fmt.Errorf("factors must be between 1 and 1024, got %d", o.Factors))
	}
	if o.Epochs < 1 {
		errs = append(errs, fmt.Errorf("epochs must be >= 1, got %d", o.Epochs))
	}
	if !(o.LR > 0) || math.IsInf(o.LR, 0) {
		errs = append(errs, fmt.Errorf("lr must be > 0, got %v", o.LR))
	}
	if !(o.Reg >= 0) || math.IsInf(o.Reg, 0) {
		errs = append(errs, fmt.Errorf("reg must be >= 0, got %v", o.Reg))
	}
	if !(o.InitStd > 0) || math.IsInf(o.InitStd, 0) {
		errs = append(errs, fmt.Errorf("init-std must be > 0, got %v", o.InitStd))
	}
	if o.RetrainEvery < 0 {
		errs = append(errs, fmt.Errorf("retrain-every must be >= 0, got %d", o.RetrainEvery))
	}
	return errors.Join(errs...)
}

// BPR is Gorse-style matrix factorisation trained with Bayesian Personalised Ranking (Rendle
// et al. 2009) on implicit feedback: every rating is a positive; each epoch draws as many
// (user, positive, negative) triples as there are positives, the user uniformly, the positive
// uniformly among the user's items, the negative uniformly among the items the user has not
// rated, and takes one SGD step on ln σ(p_u·(q_i − q_j)) with L2 regularisation, as Gorse's
// BPR.Fit does (single-threaded here, so the result is deterministic). The model is refitted
// from scratch on everything observed so far, like Gorse's periodic fit. A user's top k is the
// highest p_u·q_j over the items known at training that the user has not rated so far; a user
// who arrived after the last training has no factors and gets the most popular unrated items,
// as Gorse serves its non-personalised fallback to users the model does not know.
type BPR struct {
	opts BPROptions

	data    *interactions
	pop     *counter
	pending int
	Trains  int

	users [][]float32 // by user id at the last training
	items [][]float32 // by item id at the last training
}

// NewBPR returns the BPR baseline; o must have passed Validate.
func NewBPR(o BPROptions) *BPR {
	return &BPR{opts: o, data: newInteractions(), pop: newCounter()}
}

func (m *BPR) Name() string { return MethodBPR }

func (m *BPR) Observe(r Rating) {
	m.data.add(r.User, r.Item)
	m.pop.inc(r.Item)
	m.pending++
	if m.opts.RetrainEvery > 0 && m.pending >= m.opts.RetrainEvery {
		m.Train()
	}
}

// Train refits the factors on every observation so far.
func (m *BPR) Train() {
	m.pending = 0
	m.Trains++
	m.users, m.items = trainBPR(m.data, m.opts)
}

func trainBPR(x *interactions, o BPROptions) (users, items [][]float32) {
	rng := rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15))
	f := o.Factors
	normal := func(n int) [][]float32 {
		flat := make([]float32, n*f)
		for i := range flat {
			flat[i] = float32(rng.NormFloat64() * o.InitStd)
		}
		out := make([][]float32, n)
		for i := range out {
			out[i] = flat[i*f : (i+1)*f : (i+1)*f]
		}
		return out
	}
	nu, ni := len(x.users), len(x.items)
	users, items = normal(nu), normal(ni)
	positives := 0
	for _, its := range x.users {
		positives += len(its)
	}
	if nu == 0 || ni == 0 {
		return users, items
	}
	lr, reg := float32(o.LR), float32(o.Reg)
	pu := make([]float32, f)
	qi := make([]float32, f)
	qj := make([]float32, f)
	for range o.Epochs {
		for range positives {
			u := rng.IntN(nu)
			its := x.users[u]
			if len(its) == ni {
				continue // no negative exists
			}
			i := its[rng.IntN(len(its))]
			var j int32
			for {
				j = int32(rng.IntN(ni))
				if !x.seen[u][j] {
					break
				}
			}
			copy(pu, users[u])
			copy(qi, items[i])
			copy(qj, items[j])
			var diff float32
			for k := range f {
				diff += pu[k] * (qi[k] - qj[k])
			}
			// d/d diff of ln σ(diff) = σ(−diff)
			g := float32(1 / (1 + math.Exp(float64(diff))))
			up, ip, jp := users[u], items[i], items[j]
			for k := range f {
				ip[k] += lr * (g*pu[k] - reg*qi[k])
				jp[k] += lr * (-g*pu[k] - reg*qj[k])
				up[k] += lr * (g*(qi[k]-qj[k]) - reg*pu[k])
			}
		}
	}
	return users, items
}

func (m *BPR) Recommend(user string, _ int64, k int) []string {
	u, ok := m.data.userIdx[user]
	if !ok {
		return nil
	}
	seen := m.data.seen[u]
	if u >= len(m.users) {
		return m.pop.top(k, func(it string) bool { return seen[m.data.itemID[it]] })
	}
	p := m.users[u]
	type sc struct {
		j int32
		s float32
	}
	better := func(a, b sc) bool {
		if a.s != b.s {
			return a.s > b.s
		}
		return m.data.items[a.j] < m.data.items[b.j]
	}
	// k is small: keep the best k in a sorted slice, inserting only what beats the last.
	top := make([]sc, 0, k+1)
	for j, q := range m.items {
		if seen[int32(j)] {
			continue
		}
		var s float32
		for f, v := range q {
			s += p[f] * v
		}
		c := sc{int32(j), s}
		if len(top) == k && !better(c, top[k-1]) {
			continue
		}
		at, _ := slices.BinarySearchFunc(top, c, func(a, b sc) int {
			if better(a, b) {
				return -1
			}
			if better(b, a) {
				return 1
			}
			return 0
		})
		top = slices.Insert(top, at, c)
		if len(top) > k {
			top = top[:k]
		}
	}
	out := make([]string, len(top))
	for i, c := range top {
		out[i] = m.data.items[c.j]
	}
	return out
}
