package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
	"recsys/pkg/logging"
	"recsys/pkg/outbox"
)

// fakePublisher answers each WriteMessages call with the next programmed result.
type fakePublisher struct {
	answers []func(msgs []kafkago.Message) error
	calls   [][]int64 // outbox ids per call
}

func (f *fakePublisher) WriteMessages(_ context.Context, msgs ...kafkago.Message) error {
	var ids []int64
	for _, m := range msgs {
		ids = append(ids, outboxID(m))
	}
	f.calls = append(f.calls, ids)
	if len(f.answers) == 0 {
		return nil
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	return a(msgs)
}

func (f *fakePublisher) Close() error { return nil }

func TestPublishRowsErrors(t *testing.T) {
	rows := []outbox.Row{
		{ID: 1, Key: "a", Topic: "t"}, {ID: 2, Key: "b", Topic: "t"}, {ID: 3, Key: "a", Topic: "t"}, {ID: 4, Key: "c", Topic: "t"},
	}
	tooLarge := func(id int64) func([]kafkago.Message) error {
		return func(msgs []kafkago.Message) error {
			for i, m := range msgs {
				if outboxID(m) == id {
					rest := append(append([]kafkago.Message{}, msgs[:i]...), msgs[i+1:]...)
					return kafkago.MessageTooLargeError{Message: m, Remaining: rest}
				}
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name    string
		answers []func([]kafkago.Message) error
		want    map[int64]string // id -> "err", "permanent", "notsent"; absent = acked
		calls   int
	}{
		{name: "all acked", calls: 1, want: map[int64]string{}},
		{name: "connection error fails every row", calls: 1,
			answers: []func([]kafkago.Message) error{func([]kafkago.Message) error { return io.ErrUnexpectedEOF }},
			want:    map[int64]string{1: "err", 2: "err", 3: "err", 4: "err"}},
		{name: "per-message errors", calls: 1,
			answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
				return kafkago.WriteErrors{nil, kafkago.NotLeaderForPartition, nil, kafkago.MessageSizeTooLarge}
			}},
			want: map[int64]string{2: "err", 4: "permanent"}},
		{name: "too large: dropped with its key's later rows, the rest resent", calls: 2,
			answers: []func([]kafkago.Message) error{tooLarge(1)},
			want:    map[int64]string{1: "permanent", 3: "notsent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakePublisher{answers: tc.answers}
			r := &Relay{cfg: NewConfig(), pub: f, m: newMetrics(metrics.NewSet()), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			items, _ := r.decode(context.Background(), rows)
			res := r.publishRows(context.Background(), items)
			if len(f.calls) != tc.calls {
				t.Fatalf("%d WriteMessages calls, want %d: %v", len(f.calls), tc.calls, f.calls)
			}
			if tc.name == "too large: dropped with its key's later rows, the rest resent" {
				if got := f.calls[1]; len(got) != 2 || got[0] != 2 || got[1] != 4 {
					t.Fatalf("resent %v, want [2 4]", got)
				}
			}
			got := map[int64]string{}
			for id, r := range res {
				if o := outcome(r); o != "" {
					got[id] = o
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("results %v, want %v", got, tc.want)
			}
			for id, w := range tc.want {
				if got[id] != w {
					t.Fatalf("results %v, want %v", got, tc.want)
				}
			}
			if r, ok := res[1]; ok && r.Permanent && !strings.Contains(r.Err.Error(), "--relay.max-batch-bytes") {
				t.Fatalf("too-large error %q does not name the flag", r.Err)
			}
		})
	}
}

func batchRow(id int64, lane int, events ...string) outbox.Row {
	var p []byte
	for _, ev := range events {
		p = outbox.AppendFrame(p, outbox.Message{EventID: ev, EventType: "watch", Key: "user-" + ev,
			CorrelationID: "corr-" + ev, SchemaVersion: 1, Payload: []byte(`{"event_id":"` + ev + `"}`)})
	}
	return outbox.Row{ID: id, Topic: "t", Key: outbox.LaneKey(lane), EventID: "batch:" + events[0], EventType: "watch",
		PayloadFormat: outbox.FormatBatch, EventCount: len(events), Payload: p}
}

// A batch row publishes one message per frame with the frame's key and headers; one failed
// message fails its whole row (sent again whole), not the other rows; a row that does not
// decode is permanent (dead) and never sent.
func TestPublishBatchRows(t *testing.T) {
	corrupt := batchRow(4, 1, "d1", "d2")
	corrupt.Payload = corrupt.Payload[:len(corrupt.Payload)-3]
	rows := []outbox.Row{
		batchRow(1, 0, "a1", "a2", "a3"),
		// Another schema version than the frames': each message carries its own.
		{ID: 2, Key: "solo", Topic: "t", EventID: "s1", EventType: "impression", SchemaVersion: 2, Payload: []byte("{}"),
			PayloadFormat: outbox.FormatSingle, EventCount: 1},
		batchRow(3, 1, "c1", "c2"),
		corrupt,
	}
	f := &fakePublisher{answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
		errs := make(kafkago.WriteErrors, len(msgs))
		errs[1] = kafkago.NotLeaderForPartition // a2: the second message of row 1
		return errs
	}}}
	r := &Relay{cfg: NewConfig(), pub: f, m: newMetrics(metrics.NewSet()), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	items, res := r.decode(context.Background(), rows)
	if got := res[4]; !got.Permanent || got.Err == nil || !strings.Contains(got.Err.Error(), "decode outbox batch") {
		t.Fatalf("corrupt row result %+v, want a permanent decode error", got)
	}
	var sent []kafkago.Message
	inner := f.answers[0]
	f.answers[0] = func(msgs []kafkago.Message) error { sent = msgs; return inner(msgs) }
	for id, v := range r.publishRows(context.Background(), items) {
		res[id] = v
	}
	if len(sent) != 6 {
		t.Fatalf("sent %d messages, want 6 (3 + 1 + 2; the corrupt row never)", len(sent))
	}
	want := []struct{ id, key, row, seq, typ, version string }{
		{"a1", "user-a1", "1", "0", "watch", "1"}, {"a2", "user-a2", "1", "1", "watch", "1"}, {"a3", "user-a3", "1", "2", "watch", "1"},
		{"s1", "solo", "2", "", "impression", "2"}, {"c1", "user-c1", "3", "0", "watch", "1"}, {"c2", "user-c2", "3", "1", "watch", "1"},
	}
	hv := func(m kafkago.Message, k string) string {
		for _, h := range m.Headers {
			if h.Key == k {
				return string(h.Value)
			}
		}
		return ""
	}
	for i, w := range want {
		m := sent[i]
		got := []string{hv(m, "event_id"), string(m.Key), hv(m, "outbox_id"), hv(m, "outbox_seq"), hv(m, "event_type"), hv(m, "schema_version")}
		if exp := []string{w.id, w.key, w.row, w.seq, w.typ, w.version}; strings.Join(got, ",") != strings.Join(exp, ",") {
			t.Errorf("message %d: event_id,key,outbox_id,outbox_seq,event_type,schema_version = %v, want %v", i, got, exp)
		}
		if w.row != "2" && (hv(m, "correlation_id") != "corr-"+w.id || string(m.Value) != `{"event_id":"`+w.id+`"}`) {
			t.Errorf("message %d: correlation_id %q value %s", i, hv(m, "correlation_id"), m.Value)
		}
	}
	if len(res) != 2 || res[1].Err == nil || res[1].Permanent || !res[4].Permanent {
		t.Fatalf("results %+v, want row 1 failed (retryable) and row 4 permanent, rows 2 and 3 acked", res)
	}
}

func TestBrokerAnswered(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{kafkago.UnknownTopicOrPartition, true},
		{kafkago.WriteErrors{kafkago.NotLeaderForPartition}[0], true},
		{io.ErrUnexpectedEOF, false},
		{context.DeadlineExceeded, false},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
	} {
		if got := brokerAnswered(tc.err); got != tc.want {
			t.Errorf("brokerAnswered(%v) = %t, want %t", tc.err, got, tc.want)
		}
	}
}

// An event no retry can publish (larger than the writer or the broker accepts) is taken out
// of its batch row as a dead letter and the row's other events are published; a row with
// nothing else, or with another failure to retry, keeps its whole-row outcome.
func TestPublishBatchRowsDeadLetters(t *testing.T) {
	byEvent := func(msgs []kafkago.Message, fail map[string]error) error {
		errs := make(kafkago.WriteErrors, len(msgs))
		for i, m := range msgs {
			for _, h := range m.Headers {
				if h.Key == "event_id" {
					errs[i] = fail[string(h.Value)]
				}
			}
		}
		return errs
	}
	rows := []outbox.Row{batchRow(1, 0, "a1", "a2", "a3"), batchRow(2, 1, "b1"), batchRow(3, 0, "c1")}
	for _, tc := range []struct {
		name    string
		answers []func([]kafkago.Message) error
		sends   []int              // messages per WriteMessages call
		want    map[int64]string   // id -> "err", "permanent", "notsent"; absent = acked
		dead    map[int64][]string // dead letters of acked rows
	}{
		{name: "larger than the writer accepts", answers: []func([]kafkago.Message) error{tooLargeEvent("a2")},
			sends: []int{5, 4}, want: map[int64]string{}, dead: map[int64][]string{1: {"a2"}}},
		{name: "refused by the broker", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			return byEvent(msgs, map[string]error{"a2": kafkago.MessageSizeTooLarge})
		}}, sends: []int{5}, want: map[int64]string{}, dead: map[int64][]string{1: {"a2"}}},
		{name: "alone in its row", answers: []func([]kafkago.Message) error{tooLargeEvent("b1")},
			sends: []int{5, 4}, want: map[int64]string{2: "permanent"}},
		{name: "alone in its row, refused by the broker", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			return byEvent(msgs, map[string]error{"b1": kafkago.MessageSizeTooLarge})
		}}, sends: []int{5}, want: map[int64]string{2: "permanent"}},
		// Taken out in the first round, then the resend fails: the row is retried whole, its
		// dead letter with it; taking the dead letter as the row's outcome would record the
		// events Kafka never acked as published.
		{name: "larger than the writer accepts, then the resend fails", answers: []func([]kafkago.Message) error{tooLargeEvent("a2"),
			func([]kafkago.Message) error { return io.ErrUnexpectedEOF }},
			sends: []int{5, 4}, want: map[int64]string{1: "err", 2: "err", 3: "err"}},
		{name: "with another failure of its row", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			return byEvent(msgs, map[string]error{"a2": kafkago.MessageSizeTooLarge, "a3": kafkago.NotLeaderForPartition})
		}}, sends: []int{5}, want: map[int64]string{1: "err"}},
		// The producer sends nothing of a partition after a failed batch: what waited behind a
		// message refused alone is sent again at once, and nothing Kafka acked is.
		{name: "refused by the broker, what waited behind it sent again", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			behind := kafka.NotSentError{Cause: kafkago.MessageSizeTooLarge}
			return byEvent(msgs, map[string]error{"a2": kafkago.MessageSizeTooLarge, "a3": behind, "c1": behind})
		}}, sends: []int{5, 2}, want: map[int64]string{}, dead: map[int64][]string{1: {"a2"}}},
		{name: "not sent behind another failure", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			behind := kafka.NotSentError{Cause: kafkago.NotLeaderForPartition}
			return byEvent(msgs, map[string]error{"a2": kafkago.NotLeaderForPartition, "a3": behind, "c1": behind})
		}}, sends: []int{5}, want: map[int64]string{1: "err", 3: "err"}},
		{name: "not sent behind a refused message of a row retried whole", answers: []func([]kafkago.Message) error{func(msgs []kafkago.Message) error {
			behind := kafka.NotSentError{Cause: kafkago.MessageSizeTooLarge}
			return byEvent(msgs, map[string]error{"a2": kafkago.MessageSizeTooLarge, "a3": kafkago.NotLeaderForPartition, "c1": behind})
		}}, sends: []int{5}, want: map[int64]string{1: "err", 3: "err"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakePublisher{answers: tc.answers}
			r := &Relay{cfg: NewConfig(), pub: f, m: newMetrics(metrics.NewSet()), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			items, _ := r.decode(context.Background(), rows)
			res := r.publishRows(context.Background(), items)
			var sends []int
			for _, c := range f.calls {
				sends = append(sends, len(c))
			}
			if fmt.Sprint(sends) != fmt.Sprint(tc.sends) {
				t.Errorf("messages per call %v, want %v", sends, tc.sends)
			}
			got, dead := map[int64]string{}, map[int64][]string{}
			for id, r := range res {
				if o := outcome(r); o != "" {
					got[id] = o
				}
				for _, d := range r.DeadLetters {
					if d.Err == "" || d.Key != "user-"+d.EventID || string(d.Payload) != `{"event_id":"`+d.EventID+`"}` {
						t.Errorf("dead letter %+v", d)
					}
					dead[id] = append(dead[id], d.EventID)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || fmt.Sprint(dead) != fmt.Sprint(tc.dead) {
				t.Errorf("results %v, dead letters %v; want %v, %v", got, dead, tc.want, tc.dead)
			}
		})
	}
}

// outcome names a row's publish result as the tables above do ("" when it was published).
func outcome(r outbox.Result) string {
	switch {
	case r.NotSent:
		return "notsent"
	case r.Permanent:
		return "permanent"
	case r.Err != nil:
		return "err"
	}
	return ""
}

// A retried Complete that matches none of its rows while the lease cannot have expired means
// an earlier attempt committed (its answer was lost), not that the lease was lost: the
// outcomes count as recorded, nothing as fenced.
func TestRecordedEarlier(t *testing.T) {
	lease := 30 * time.Second
	for _, tt := range []struct {
		name       string
		attempt    int
		done       outbox.Completed
		sinceLease time.Duration
		want       bool
	}{
		{"first attempt fenced: the lease was lost", 1, outbox.Completed{Fenced: 3}, time.Second, false},
		{"retry matched nothing within the lease", 2, outbox.Completed{Fenced: 3}, 12 * time.Second, true},
		{"retry matched nothing after the lease could expire", 3, outbox.Completed{Fenced: 3}, lease, false},
		{"retry matched some rows: the first attempt did not commit", 2, outbox.Completed{Published: 2, Fenced: 1}, time.Second, false},
		{"retry recorded everything", 2, outbox.Completed{Published: 3}, time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := recordedEarlier(tt.attempt, tt.done, 3, tt.sinceLease, lease); got != tt.want {
				t.Errorf("recordedEarlier = %t, want %t", got, tt.want)
			}
		})
	}
	outcomes := []outbox.Outcome{
		{ID: 1, Status: outbox.StatusPublished, DeadLetters: make([]outbox.DeadLetter, 2)},
		{ID: 2, Status: outbox.StatusPending},
		{ID: 3, Status: outbox.StatusDead},
		{ID: 4, Status: outbox.StatusPending, Refund: true},
	}
	if got, want := intended(outcomes), (outbox.Completed{Published: 1, Retried: 2, Dead: 1, DeadLettered: 2}); got != want {
		t.Errorf("intended = %+v, want %+v", got, want)
	}
}

// The failed-publish warning promises a retry only for rows that get one: rows that go dead
// (undecodable, too large, out of attempts) are named as such.
func TestPublishFailureWarningMitigation(t *testing.T) {
	row := func(id int64, key string, attempts int) outbox.Row {
		return outbox.Row{ID: id, Key: key, Topic: "t", EventID: fmt.Sprint("e", id), EventType: "watch",
			PayloadFormat: outbox.FormatSingle, EventCount: 1, Payload: []byte(`{}`), Attempts: attempts, MaxAttempts: 3}
	}
	poison := batchRow(9, 1, "p1")
	poison.Payload = poison.Payload[:len(poison.Payload)-3]
	unreachable := func([]kafkago.Message) error { return io.ErrUnexpectedEOF }
	for _, tc := range []struct {
		name      string
		rows      []outbox.Row
		answers   []func([]kafkago.Message) error
		want, not string
	}{
		{name: "attempts left", rows: []outbox.Row{row(1, "a", 1)}, answers: []func([]kafkago.Message) error{unreachable},
			want: "retry with backoff", not: "go dead"},
		{name: "last attempt", rows: []outbox.Row{row(1, "a", 3)}, answers: []func([]kafkago.Message) error{unreachable},
			want: "go dead", not: "retry with backoff"},
		{name: "undecodable only", rows: []outbox.Row{row(1, "a", 1), poison},
			want: "go dead", not: "retry with backoff"},
		{name: "both", rows: []outbox.Row{row(1, "a", 1), poison}, answers: []func([]kafkago.Message) error{unreachable},
			want: "later rows of their keys wait; rows no retry can publish"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs strings.Builder
			r := &Relay{cfg: NewConfig(), pub: &fakePublisher{answers: tc.answers}, m: newMetrics(metrics.NewSet()),
				log: slog.New(slog.NewTextHandler(&logs, nil)), backoff: outbox.Backoff{Base: time.Second, Max: time.Minute}}
			r.process(context.Background(), &outbox.Claim{Rows: tc.rows, Lease: time.Hour})
			var warning string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `msg="publish outbox batch"`) {
					warning = l
				}
			}
			if !strings.Contains(warning, tc.want) || (tc.not != "" && strings.Contains(warning, tc.not)) {
				t.Errorf("warning %q; want it to say %q and not %q", warning, tc.want, tc.not)
			}
		})
	}
}

// The lines about one event (moved to a dead row of its own, or a row that does not decode)
// carry its correlation id, the X-Correlation-ID of the request that sent it, so an operator
// can follow that request from the API's access log to the dead row.
func TestEventLinesCarryTheCorrelationID(t *testing.T) {
	unknownFormat := outbox.Row{ID: 7, Key: "u", Topic: "t", EventID: "e7", EventType: "watch", CorrelationID: "corr-e7",
		PayloadFormat: 9, EventCount: 1, Payload: []byte(`{}`)}
	for _, tc := range []struct {
		name, line, want string
		rows             []outbox.Row
		answers          []func([]kafkago.Message) error
	}{
		{name: "dead letter", line: "outbox events no retry can publish, moving them to dead rows of their own", want: "corr-a2",
			rows: []outbox.Row{batchRow(1, 0, "a1", "a2", "a3")}, answers: []func([]kafkago.Message) error{tooLargeEvent("a2")}},
		{name: "undecodable row", line: "undecodable outbox row, moving it to dead", want: "corr-e7",
			rows: []outbox.Row{unknownFormat}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			log, err := logging.New(&logs, "json", slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			r := &Relay{cfg: NewConfig(), pub: &fakePublisher{answers: tc.answers}, m: newMetrics(metrics.NewSet()),
				log: log.With("module", "relay"), backoff: outbox.Backoff{Base: time.Second, Max: time.Minute}}
			r.process(context.Background(), &outbox.Claim{Rows: tc.rows, Lease: time.Hour})
			var found bool
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("log line %q: %v", l, err)
				}
				if m["message"] != tc.line {
					continue
				}
				found = true
				if m["correlation_id"] != tc.want {
					t.Errorf("correlation_id %v, want %q: %s", m["correlation_id"], tc.want, l)
				}
			}
			if !found {
				t.Fatalf("no line %q in %s", tc.line, logs.String())
			}
		})
	}
}

// tooLargeEvent is a publish that the broker refuses as too large for the message of event
// ev, as kafka-go reports it (the other messages of the call remaining).
func tooLargeEvent(ev string) func([]kafkago.Message) error {
	return func(msgs []kafkago.Message) error {
		for i, m := range msgs {
			for _, h := range m.Headers {
				if h.Key == "event_id" && string(h.Value) == ev {
					rest := append(append([]kafkago.Message{}, msgs[:i]...), msgs[i+1:]...)
					return kafkago.MessageTooLargeError{Message: m, Remaining: rest}
				}
			}
		}
		return nil
	}
}
