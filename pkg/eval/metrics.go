package eval

import "math"

// Rank is the 1-based position of item in list, 0 when absent.
func Rank(list []string, item string) int {
	for i, x := range list {
		if x == item {
			return i + 1
		}
	}
	return 0
}

// NDCG is the normalised discounted cumulative gain of a list with one relevant item at rank
// (1-based; 0 = absent): 1/log2(rank+1), whose ideal value is 1.
func NDCG(rank int) float64 {
	if rank <= 0 {
		return 0
	}
	return 1 / math.Log2(float64(rank)+1)
}

// Acc accumulates hit-rate and NDCG over test cases.
type Acc struct {
	N    int
	Hits int
	NDCG float64
}

// Add records one test case whose relevant item is at rank (0 = not in the top-k list).
func (a *Acc) Add(rank int) {
	a.N++
	if rank > 0 {
		a.Hits++
		a.NDCG += NDCG(rank)
	}
}

// HR is the hit rate: the fraction of test cases whose item was in the list.
func (a Acc) HR() float64 {
	if a.N == 0 {
		return 0
	}
	return float64(a.Hits) / float64(a.N)
}

// MeanNDCG is the mean NDCG over test cases.
func (a Acc) MeanNDCG() float64 {
	if a.N == 0 {
		return 0
	}
	return a.NDCG / float64(a.N)
}
