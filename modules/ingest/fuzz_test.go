package ingest

import (
	"strconv"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// FuzzEndpoints posts arbitrary bodies to every ingestion endpoint of a module backed by a
// real PostgreSQL: the answer is always 200, 413 or 422, never a 5xx (a NUL character, a
// huge number or an odd escape must be refused as input, not fail in the database). With
// `go test` only the seeds run.
func FuzzEndpoints(f *testing.F) {
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	for _, s := range []string{
		`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":1}`,
		`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"items":[{"item_id":"a","position":9223372036854775807}]}`,
		`{"events":[{"user_id":"\u0000","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":1e308}]}`,
		`{"user_id":"u","item_id":"i","event_type":"purchase","ts":` + ts + `}`,
		`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":0,"context":{"device":"\ud800"}}`,
		`{`, `nul`, `{"events":[]}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	v := newEnv(f, testutil.MigratedDatabase(f))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{"/log/impression", "/log/watch", "/log/batch", "/event"} {
			code, resp := v.post(path, string(body))
			switch code {
			case 200, 413, 422:
			default:
				t.Fatalf("%s %q: %d %s", path, body, code, resp)
			}
		}
	})
}
