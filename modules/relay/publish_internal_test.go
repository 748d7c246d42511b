package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"

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

func TestPublishTopicErrors(t *testing.T) {
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
			res := r.publishTopic(context.Background(), rows)
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
				switch {
				case r.NotSent:
					got[id] = "notsent"
				case r.Permanent:
					got[id] = "permanent"
				case r.Err != nil:
					got[id] = "err"
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
