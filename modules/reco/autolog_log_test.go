package reco

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/logging"
	"recsys/pkg/testutil"
)

// refusingWriter refuses every event as the database refuses a bad row: not transient.
type refusingWriter struct{}

func (refusingWriter) Write(context.Context, []events.Any, string) ([]ingest.Result, error) {
	return nil, errors.New("insert impressions: violates check constraint")
}

// A served list the database refuses is logged with the IDs of the /reco request that served
// it, whether the write ran in the request (sync) or after the answer (async), so the error
// line leads to the request's access log line.
func TestAutologRejectionLineCarriesTheRequestIDs(t *testing.T) {
	for _, async := range []bool{false, true} {
		t.Run(map[bool]string{false: "sync", true: "async"}[async], func(t *testing.T) {
			var logs testutil.SyncBuffer
			log, err := logging.New(&logs, "json", slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			cfg := NewConfig()
			cfg.AutologAsync = async
			m := newRecoMetrics(metrics.NewSet())
			a := newAutolog(cfg, refusingWriter{}, newBreaker(100, nil), m, log.With("module", "reco"))
			ev := servedImpression("refused")
			ctx := logging.WithIDs(context.Background(), logging.IDs{RequestID: ev.RequestID, CorrelationID: "corr-refused"})
			a.Log(ctx, ev, "corr-refused")
			deadline := time.Now().Add(5 * time.Second)
			for m.autologDropped[dropRejected].Get() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			a.Shutdown(time.Second, nil)
			var line map[string]any
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) == nil && m["message"] == "autolog impression rejected by the database" {
					line = m
				}
			}
			if line == nil {
				t.Fatalf("no rejection line in %q", logs.String())
			}
			if line["request_id"] != ev.RequestID || line["correlation_id"] != "corr-refused" {
				t.Errorf("request_id %v, correlation_id %v; want %q, corr-refused: %v", line["request_id"], line["correlation_id"], ev.RequestID, line)
			}
		})
	}
}
