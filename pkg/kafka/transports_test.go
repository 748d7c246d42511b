package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
)

// Only a request the broker did not answer renews the transport: a broker's error code
// (kafkago.Error has the methods of a net.Error) is about the partition, not the route.
func TestUnreachable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errRefused, true},
		{fmt.Errorf("fetch: %w", errRefused), true},
		{fmt.Errorf("produce: %w", io.ErrUnexpectedEOF), true},
		{context.DeadlineExceeded, true}, // the request's timeout: a broker that hangs
		{kafkago.BrokerNotAvailable, true},
		{context.Canceled, false},
		{fmt.Errorf("fetch a/1: %w", kafkago.KafkaStorageError), false},
		{errors.Join(fmt.Errorf("fetch a/1: %w", kafkago.OffsetOutOfRange)), false},
		{kafkago.NotLeaderForPartition, false}, // leaderMoved's
		{NotSentError{Cause: errRefused}, false},
	} {
		if got := unreachable(tc.err); got != tc.want {
			t.Errorf("unreachable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
