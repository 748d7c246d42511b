package ranking

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// EASEOptions configures TrainEASE.
type EASEOptions struct {
	// Lambda is the L2 regularisation added to the Gram matrix diagonal.
	Lambda float64
	// MaxItems restricts the model to the most interacted items (training is O(MaxItems³)).
	MaxItems int
	// Neighbours is how many neighbours per item the model keeps (positive weights only).
	Neighbours int
	// Workers parallelise the matrix inversion.
	Workers int
}

// DefaultEASEOptions are tuned on MovieLens (docs/evaluation.md).
func DefaultEASEOptions() EASEOptions {
	return EASEOptions{Lambda: 250, MaxItems: 1500, Neighbours: 100, Workers: 2}
}

// Validate reports invalid options.
func (o EASEOptions) Validate() error {
	var errs []error
	if !(o.Lambda > 0) {
		errs = append(errs, fmt.Errorf("EASE lambda must be > 0, got %v", o.Lambda))
	}
	if o.MaxItems < 2 || o.MaxItems > 20000 {
		errs = append(errs, fmt.Errorf("EASE max items must be between 2 and 20000, got %d", o.MaxItems))
	}
	if o.Neighbours < 1 {
		errs = append(errs, fmt.Errorf("EASE neighbours must be >= 1, got %d", o.Neighbours))
	}
	if o.Workers < 1 {
		errs = append(errs, fmt.Errorf("EASE workers must be >= 1, got %d", o.Workers))
	}
	return errors.Join(errs...)
}

// ItemModel is a learned item-item model: for each item its strongest neighbours. A trainer
// writes it to the serving store; the Snapshot loader puts the lists of the user's recent
// history items into Snapshot.Similar.
type ItemModel struct {
	Version    string
	neighbours map[string][]Scored
}

// NewItemModel wraps precomputed neighbour lists (strongest first).
func NewItemModel(version string, neighbours map[string][]Scored) *ItemModel {
	return &ItemModel{Version: version, neighbours: neighbours}
}

// Neighbours returns the item's learned neighbours, strongest first (shared, read-only).
func (m *ItemModel) Neighbours(item string) []Scored {
	if m == nil {
		return nil
	}
	return m.neighbours[item]
}

// Len is the number of items with neighbours.
func (m *ItemModel) Len() int {
	if m == nil {
		return 0
	}
	return len(m.neighbours)
}

// Similar builds Snapshot.Similar for a history: the lists of its first n items, each cut to
// per entries.
func (m *ItemModel) Similar(history []HistoryEntry, n, per int) map[string][]Scored {
	if m == nil {
		return nil
	}
	out := make(map[string][]Scored, n)
	for i, h := range history {
		if i >= n {
			break
		}
		if l := m.neighbours[h.ItemID]; len(l) > 0 {
			out[h.ItemID] = l[:min(len(l), per):min(len(l), per)]
		}
	}
	return out
}

// TrainEASE fits EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW
// 2019) on implicit interactions: B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹ and a zero
// diagonal, where X is the binary user × item matrix. users holds each user's items (order
// and repeats do not matter). It is a pure function of its input: a `trainer` can recompute it
// from the durable events and publish the neighbour lists. Items are limited to the
// MaxItems most frequent (ties by id), so cost is O(Σ|user|² + MaxItems³).
func TrainEASE(users [][]string, o EASEOptions) (*ItemModel, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	freq := map[string]int{}
	for _, its := range users {
		for _, it := range dedup(its) {
			freq[it]++
		}
	}
	ids := make([]string, 0, len(freq))
	for it := range freq {
		ids = append(ids, it)
	}
	slices.SortFunc(ids, func(a, b string) int {
		if freq[a] != freq[b] {
			return cmp.Compare(freq[b], freq[a])
		}
		return strings.Compare(a, b)
	})
	if len(ids) > o.MaxItems {
		ids = ids[:o.MaxItems]
	}
	n := len(ids)
	if n < 2 {
		return NewItemModel("ease-empty", map[string][]Scored{}), nil
	}
	index := make(map[string]int, n)
	for i, it := range ids {
		index[it] = i
	}
	g := make([]float64, n*n)
	row := make([]int, 0, 256)
	for _, its := range users {
		row = row[:0]
		for _, it := range dedup(its) {
			if i, ok := index[it]; ok {
				row = append(row, i)
			}
		}
		for _, i := range row {
			gi := g[i*n:]
			for _, j := range row {
				gi[j]++
			}
		}
	}
	for i := 0; i < n; i++ {
		g[i*n+i] += o.Lambda
	}
	invertSPD(g, n, o.Workers)
	nb := make(map[string][]Scored, n)
	// B_ij = −P_ij / P_jj; row i of B lists how much item i predicts each j.
	cand := make([]Scored, 0, n)
	for i := 0; i < n; i++ {
		cand = cand[:0]
		for j := 0; j < n; j++ {
			if j == i {
				continue
			}
			if b := -g[i*n+j] / g[j*n+j]; b > 0 {
				cand = append(cand, Scored{ItemID: ids[j], Score: b})
			}
		}
		slices.SortFunc(cand, func(a, b Scored) int {
			if a.Score != b.Score {
				return cmp.Compare(b.Score, a.Score)
			}
			return strings.Compare(a.ItemID, b.ItemID)
		})
		k := min(o.Neighbours, len(cand))
		if k > 0 {
			nb[ids[i]] = slices.Clone(cand[:k])
		}
	}
	return NewItemModel(fmt.Sprintf("ease-l%g-n%d", o.Lambda, n), nb), nil
}

func dedup(its []string) []string {
	if len(its) < 2 {
		return its
	}
	seen := make(map[string]struct{}, len(its))
	out := make([]string, 0, len(its))
	for _, it := range its {
		if _, ok := seen[it]; !ok {
			seen[it] = struct{}{}
			out = append(out, it)
		}
	}
	return out
}

// invertSPD inverts the symmetric positive definite n×n row-major matrix a in place by
// Gauss–Jordan elimination without pivoting (stable for SPD matrices), splitting the row
// updates of each step over workers goroutines.
func invertSPD(a []float64, n, workers int) {
	workers = max(1, min(workers, n))
	var wg sync.WaitGroup
	for k := 0; k < n; k++ {
		rk := a[k*n : (k+1)*n]
		inv := 1 / rk[k]
		rk[k] = 1
		for j := range rk {
			rk[j] *= inv
		}
		update := func(lo, hi int) {
			for i := lo; i < hi; i++ {
				if i == k {
					continue
				}
				ri := a[i*n : (i+1)*n]
				f := ri[k]
				if f == 0 {
					continue
				}
				ri[k] = 0
				for j, v := range rk {
					ri[j] -= f * v
				}
			}
		}
		if workers == 1 || n < 256 {
			update(0, n)
			continue
		}
		chunk := (n + workers - 1) / workers
		for w := 0; w < workers; w++ {
			lo, hi := w*chunk, min((w+1)*chunk, n)
			wg.Add(1)
			go func() { defer wg.Done(); update(lo, hi) }()
		}
		wg.Wait()
	}
}
