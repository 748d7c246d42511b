package events_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"recsys/pkg/events"
)

// BenchmarkDecodeBatch measures the CPU cost of decoding, validating and encoding the
// payloads of a 500-watch /log/batch body (no I/O):
//
//	go test ./pkg/events/ -run '^$' -bench DecodeBatch -benchmem
func BenchmarkDecodeBatch(b *testing.B) {
	now := time.Now()
	ts := strconv.FormatInt(now.UnixMilli(), 10)
	var sb strings.Builder
	sb.WriteString(`{"events":[`)
	for i := range 500 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"event_id":"bench-` + strconv.Itoa(100000+i) + `","user_id":"user-` + strconv.Itoa(i) +
			`","session_id":"sess-1","request_id":"req-1","ts_ms":` + ts + `,"item_id":"item-` + strconv.Itoa(i) +
			`","watch_time_sec":42.5,"percent_watched":80,"ended":true,"context":{"device":"tv"}}`)
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		evs, err := events.DecodeBatch(body, events.DefaultLimits(), now)
		if err != nil {
			b.Fatal(err)
		}
		for _, ev := range evs {
			if _, err := events.Encode(ev); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "events/s")
}
