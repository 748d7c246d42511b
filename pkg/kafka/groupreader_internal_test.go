package kafka

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// fetchCluster is one partition, a/0, holding one record at offset 0, as seen through a
// transport: stale (its metadata names a broker that no longer leads a/0, which refuses
// every fetch) or fresh.
type fetchCluster struct{ stale bool }

func (c *fetchCluster) RoundTrip(ctx context.Context, _ net.Addr, req protocol.Message) (protocol.Message, error) {
	switch r := req.(type) {
	case *metadataAPI.Request:
		return &metadataAPI.Response{Topics: []metadataAPI.ResponseTopic{{Name: "a",
			Partitions: []metadataAPI.ResponsePartition{{PartitionIndex: 0, LeaderID: 1}}}}}, nil
	case *fetchAPI.Request:
		pt := fetchAPI.ResponsePartition{Partition: 0, HighWatermark: 1}
		switch off := r.Topics[0].Partitions[0].FetchOffset; {
		case c.stale:
			pt.ErrorCode = int16(kafkago.NotLeaderForPartition)
		case off == 0:
			pt.RecordSet = protocol.RecordSet{Version: 2, Records: protocol.NewRecordReader(
				protocol.Record{Offset: 0, Time: time.Now(), Value: protocol.NewBytes([]byte("v"))})}
		default: // nothing new: the broker's long poll
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return &fetchAPI.Response{Topics: []fetchAPI.ResponseTopic{{Topic: "a", Partitions: []fetchAPI.ResponsePartition{pt}}}}, nil
	}
	return nil, fmt.Errorf("unexpected request %T", req)
}

// After a partition's leader moved, the reader's transport keeps sending its fetches to the
// old leader until its cached metadata expires (up to the metadata TTL: 10 s of a stalled
// partition after every leader move of a rolling broker restart). A refused fetch replaces
// the transport, and the next attempt fetches from the new leader.
func TestGroupReaderRenewsItsTransportWhenALeaderMoved(t *testing.T) {
	var made atomic.Int32
	r := &GroupReader{o: ReaderOptions{MaxWait: 50 * time.Millisecond, MaxBytes: 1 << 20, MinBytes: 1}, addr: kafkago.TCP("127.0.0.1:1"),
		timeout: time.Second, out: make(chan []kafkago.Message, 1), done: make(chan struct{}),
		trs: newTransports(func() kafkago.RoundTripper { return &fetchCluster{stale: made.Add(1) == 1} })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.fetchAll(ctx, []*fetchState{{topicPartition: topicPartition{"a", 0}}}) }()
	defer func() { cancel(); <-done }()
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	defer fcancel()
	msgs, err := r.FetchBatch(fctx)
	if err != nil {
		t.Fatalf("no message after the leader moved: %v (transports made: %d, errors: %d)", err, made.Load(), r.errs.Load())
	}
	if len(msgs) != 1 || msgs[0].Offset != 0 || string(msgs[0].Value) != "v" {
		t.Fatalf("got %+v", msgs)
	}
}
