package consumer_test

import (
	"log/slog"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/events"
	"recsys/pkg/logging"
	"recsys/pkg/testutil"
)

// withMessage returns the log lines whose message is msg.
func withMessage(lines []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, m := range lines {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// A dead-lettered message's log line carries the correlation id of its Kafka header (the
// request that sent the event) and its event id, so an operator can follow a request from the
// API's access log to the DLQ (contract §16.12: the original's correlation stopped at the API).
func TestPoisonLogCarriesTheEventsCorrelationID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	user := "user-poison-log"
	msg := func(value, eventType, eventID, correlationID string) kafkago.Message {
		h := []kafkago.Header{{Key: events.HeaderEventType, Value: []byte(eventType)}}
		if eventID != "" {
			h = append(h, kafkago.Header{Key: events.HeaderEventID, Value: []byte(eventID)})
		}
		if correlationID != "" {
			h = append(h, kafkago.Header{Key: events.HeaderCorrelationID, Value: []byte(correlationID)})
		}
		return kafkago.Message{Topic: e.TopicWatch, Key: []byte(user), Value: []byte(value), Headers: h}
	}
	cases := []struct {
		name                       string
		msg                        kafkago.Message
		wantEventID, wantCorrelate string
	}{
		{"undecodable", msg("not json", "watch", "ev-undecodable", "corr-undecodable"), "ev-undecodable", "corr-undecodable"},
		{"invalid event", msg(`{"event_id":"ev-invalid","user_id":"","ts_ms":1,"item_id":"x","watch_time_sec":-1,"event_type":"watch"}`,
			"watch", "ev-invalid", "corr-invalid"), "ev-invalid", "corr-invalid"},
		{"unknown type", msg(`{}`, "rating", "ev-rating", "corr-rating"), "ev-rating", "corr-rating"},
		{"no correlation header", msg("nope", "watch", "ev-bare", ""), "ev-bare", "-"},
	}
	for _, tc := range cases {
		e.produceRaw(t, tc.msg)
	}
	var logs testutil.SyncBuffer
	log, err := logging.New(&logs, "json", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	e.startWith(t, e.config(), log.With("module", "consumer"))
	waitFor(t, "the poison lines", 60*time.Second, func() bool {
		return len(withMessage(logs.JSONLines(t), "poison message to dlq")) == len(cases)
	})
	byEvent := map[string]map[string]any{}
	for _, l := range withMessage(logs.JSONLines(t), "poison message to dlq") {
		id, _ := l["event_id"].(string)
		byEvent[id] = l
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := byEvent[tc.wantEventID]
			if l == nil {
				t.Fatalf("no poison line with event_id %q: %v", tc.wantEventID, byEvent)
			}
			if l["correlation_id"] != tc.wantCorrelate || l["component"] != "feature-consumer" {
				t.Errorf("correlation_id %v, component %v; want %q, feature-consumer: %v", l["correlation_id"], l["component"], tc.wantCorrelate, l)
			}
		})
	}
}
