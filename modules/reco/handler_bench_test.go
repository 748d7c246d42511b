package reco

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRecoHandler is the CPU cost of one /reco in this process (validation, snapshot
// assembly from cached item features, ranking, JSON), on the in-memory fixture: the part of
// a request's time that is not Redis or the network.
func BenchmarkRecoHandler(b *testing.B) {
	t := &testing.T{}
	h := newHarness(t, nil)
	if err := h.r.serving.refreshGlobal(b.Context()); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UnixMilli()
	for i, it := range []string{"a", "p01", "p02", "p03", "p04", "p05", "p06", "p07", "p08", "p09"} {
		h.redis.apply(watchEv("bench", it, now-int64(10-i)*1000, fmt.Sprintf("bench-%d", i)))
	}
	req := httptest.NewRequest(http.MethodGet, "/reco?user_id=bench&session_id=s&k=20&x_autolog_impressions=false", nil)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.e.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
	// Process CPU time per request: unlike ns/op it does not grow when other processes
	// compete for the cores.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
