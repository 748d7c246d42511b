package kafka

// Assigned is the number of partitions the reader's current generation gives it.
func Assigned(r *GroupReader) int {
	g := r.gen.Load()
	if g == nil {
		return 0
	}
	return len(g.owned)
}
