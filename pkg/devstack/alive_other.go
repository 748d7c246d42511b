//go:build !unix

package devstack

// alive cannot tell here, so ReapStale never takes another process's cluster for stale.
func alive(int) bool { return true }
