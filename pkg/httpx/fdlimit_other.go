//go:build !unix

package httpx

func descriptorLimit() (uint64, bool) { return 0, false }
