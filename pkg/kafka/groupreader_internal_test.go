package kafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
	"github.com/segmentio/kafka-go/protocol/listoffsets"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// fetchCluster is one partition, a/0, holding one record at offset 0, as seen through a
// transport: fresh, or stale in one of three ways: its metadata names a broker that no
// longer leads a/0, which refuses every fetch (notLeader); or one that crashed, whose
// connections are refused (down); or it never got any metadata, the cluster being
// unreachable when it started (noMetadata).
type fetchCluster struct{ notLeader, down, noMetadata, offsetsNotLeader bool }

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}

func (c *fetchCluster) RoundTrip(ctx context.Context, _ net.Addr, req protocol.Message) (protocol.Message, error) {
	switch r := req.(type) {
	case *metadataAPI.Request:
		if c.noMetadata {
			return nil, errRefused
		}
		return &metadataAPI.Response{Topics: []metadataAPI.ResponseTopic{{Name: "a",
			Partitions: []metadataAPI.ResponsePartition{{PartitionIndex: 0, LeaderID: 1}}}}}, nil
	case *listoffsets.Request:
		pt := listoffsets.ResponsePartition{Partition: 0, Timestamp: r.Topics[0].Partitions[0].Timestamp}
		if c.offsetsNotLeader {
			pt.ErrorCode, pt.Offset = int16(kafkago.NotLeaderForPartition), -1
		}
		return &listoffsets.Response{Topics: []listoffsets.ResponseTopic{{Topic: "a", Partitions: []listoffsets.ResponsePartition{pt}}}}, nil
	case *fetchAPI.Request:
		if c.down {
			return nil, errRefused
		}
		pt := fetchAPI.ResponsePartition{Partition: 0, HighWatermark: 1}
		switch off := r.Topics[0].Partitions[0].FetchOffset; {
		case c.notLeader:
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
// partition after every leader move of a rolling broker restart); after a broker crashed,
// to the dead broker; and a transport that could not reach the cluster when it started
// keeps failing every lookup as long. A refused or failed fetch or lookup replaces the
// transport, and the next attempt fetches from the new leader.
func TestGroupReaderRenewsItsTransportWhenALeaderMoved(t *testing.T) {
	for name, stale := range map[string]fetchCluster{"a leader moved": {notLeader: true},
		"the leader's broker down": {down: true}, "no metadata": {noMetadata: true},
		"a leader moved, found by the first offset's lookup": {offsetsNotLeader: true}} {
		t.Run(name, func(t *testing.T) {
			// A partition without a committed offset reads from the first one, looked up
			// first (routed by the transport's metadata as well).
			offset := int64(0)
			if stale.offsetsNotLeader {
				offset = kafkago.FirstOffset
			}
			var made atomic.Int32
			r := &GroupReader{o: ReaderOptions{MaxWait: 50 * time.Millisecond, MaxBytes: 1 << 20, MinBytes: 1}, addr: kafkago.TCP("127.0.0.1:1"),
				timeout: time.Second, out: make(chan []kafkago.Message, 1), done: make(chan struct{}),
				trs: newTransports(func() kafkago.RoundTripper {
					if made.Add(1) == 1 {
						return &stale
					}
					return &fetchCluster{}
				})}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.fetchAll(ctx, []*fetchState{{topicPartition: topicPartition{"a", 0}, offset: offset}})
			}()
			defer func() { cancel(); <-done }()
			fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
			defer fcancel()
			msgs, err := r.FetchBatch(fctx)
			if err != nil {
				t.Fatalf("no message: %v (transports made: %d, errors: %d)", err, made.Load(), r.errs.Load())
			}
			if len(msgs) != 1 || msgs[0].Offset != 0 || string(msgs[0].Value) != "v" {
				t.Fatalf("got %+v", msgs)
			}
		})
	}
}

// partsCluster is topic a, each partition holding one record at offset 0, as seen through a
// transport: leaders[p] leads partition p (-1: none), a fetch from a broker in down fails at
// once, as its dial does, the others answer after a few milliseconds, a fetch of a
// partition in refuse is answered at once with a storage error for it, and ListOffsets
// finds no first offset of the partitions in noFirst. It counts the fetches refused so, and
// the long polls cut short by their caller.
type partsCluster struct {
	mu      sync.Mutex
	leaders []int32
	down    map[int32]bool
	noFirst map[int32]bool
	refuse  map[int32]bool

	refused, cut atomic.Int32
}

func (c *partsCluster) RoundTrip(ctx context.Context, _ net.Addr, req protocol.Message) (protocol.Message, error) {
	c.mu.Lock()
	leaders, down, noFirst, refuse := slices.Clone(c.leaders), maps.Clone(c.down), maps.Clone(c.noFirst), maps.Clone(c.refuse)
	c.mu.Unlock()
	switch r := req.(type) {
	case *metadataAPI.Request:
		t := metadataAPI.ResponseTopic{Name: "a"}
		for p, l := range leaders {
			pt := metadataAPI.ResponsePartition{PartitionIndex: int32(p), LeaderID: l}
			if l < 0 {
				pt.ErrorCode = int16(kafkago.LeaderNotAvailable)
			}
			t.Partitions = append(t.Partitions, pt)
		}
		return &metadataAPI.Response{Topics: []metadataAPI.ResponseTopic{t}}, nil
	case *listoffsets.Request:
		t := listoffsets.ResponseTopic{Topic: "a"}
		for _, p := range r.Topics[0].Partitions {
			pt := listoffsets.ResponsePartition{Partition: p.Partition, Timestamp: p.Timestamp}
			if noFirst[p.Partition] {
				pt.ErrorCode = int16(kafkago.KafkaStorageError)
			}
			t.Partitions = append(t.Partitions, pt)
		}
		return &listoffsets.Response{Topics: []listoffsets.ResponseTopic{t}}, nil
	case *fetchAPI.Request:
		if l := leaders[r.Topics[0].Partitions[0].Partition]; down[l] {
			return nil, fmt.Errorf("dial broker %d: connection refused", l)
		}
		select { // the network
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		t := fetchAPI.ResponseTopic{Topic: "a"}
		answer := false // at once
		for _, p := range r.Topics[0].Partitions {
			pt := fetchAPI.ResponsePartition{Partition: p.Partition, HighWatermark: 1}
			if refuse[p.Partition] {
				pt.ErrorCode = int16(kafkago.KafkaStorageError)
				c.refused.Add(1)
				answer = true
			} else if p.FetchOffset == 0 {
				pt.RecordSet = protocol.RecordSet{Version: 2, Records: protocol.NewRecordReader(
					protocol.Record{Offset: 0, Time: time.Now(), Value: protocol.NewBytes([]byte("v"))})}
			}
			t.Partitions = append(t.Partitions, pt)
		}
		if answer || slices.ContainsFunc(t.Partitions, func(pt fetchAPI.ResponsePartition) bool { return pt.RecordSet.Records != nil }) {
			return &fetchAPI.Response{Topics: []fetchAPI.ResponseTopic{t}}, nil
		}
		select { // nothing new: the broker's long poll
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			c.cut.Add(1)
			return nil, ctx.Err()
		}
		return &fetchAPI.Response{Topics: []fetchAPI.ResponseTopic{t}}, nil
	}
	return nil, fmt.Errorf("unexpected request %T", req)
}

// A partition the reader cannot fetch (no leader, its leader's broker down, its first
// offset not found) waits without holding back the member's other partitions, and is read
// once it can be. Any one of them stopped every partition of the member, for good with a
// topic of one replica whose broker is down.
func TestGroupReaderFetchesAroundAPartitionItCannotFetch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     *partsCluster
		from1 int64 // a/1's offset: symbolic when no offset is committed
		heal  func(c *partsCluster)
	}{
		{"no leader, then the leader of the other partition", &partsCluster{leaders: []int32{1, -1}}, 0,
			func(c *partsCluster) { c.leaders[1] = 1 }},
		{"its leader's broker down, then up", &partsCluster{leaders: []int32{1, 2}, down: map[int32]bool{2: true}}, 0,
			func(c *partsCluster) { c.down = nil }},
		{"no first offset, then found", &partsCluster{leaders: []int32{1, 1}, noFirst: map[int32]bool{1: true}}, kafkago.FirstOffset,
			func(c *partsCluster) { c.noFirst = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &GroupReader{o: ReaderOptions{MaxWait: 50 * time.Millisecond, MaxBytes: 1 << 20, MinBytes: 1}, addr: kafkago.TCP("127.0.0.1:1"),
				timeout: time.Second, out: make(chan []kafkago.Message, 1), done: make(chan struct{}),
				trs: newTransports(func() kafkago.RoundTripper { return tc.c })}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			parts := []*fetchState{{topicPartition: topicPartition{"a", 0}}, {topicPartition: topicPartition{"a", 1}, offset: tc.from1}}
			go func() { defer close(done); r.fetchAll(ctx, parts) }()
			defer func() { cancel(); <-done }()
			read := func(want int) {
				t.Helper()
				fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
				defer fcancel()
				msgs, err := r.FetchBatch(fctx)
				if err != nil {
					t.Fatalf("partition %d not read: %v (errors: %d)", want, err, r.errs.Load())
				}
				if len(msgs) != 1 || msgs[0].Partition != want || msgs[0].Offset != 0 {
					t.Fatalf("got %+v, want a/%d@0", msgs, want)
				}
			}
			read(0)
			tc.c.mu.Lock()
			tc.heal(tc.c)
			tc.c.mu.Unlock()
			read(1)
		})
	}
}

// A partition its broker keeps refusing (a storage error) is tried again, with backoff, in
// the fetch loop of its broker's other partitions, which goes on meanwhile: it is not cut
// short to start over with the refused partition. Every such restart abandoned the loop's
// long poll, whose connection stays busy until the broker answers it, every 2 s at most for
// as long as the partition was refused.
func TestGroupReaderRetriesARefusedPartitionInItsBrokersLoop(t *testing.T) {
	c := &partsCluster{leaders: []int32{1, 1}, refuse: map[int32]bool{1: true}}
	r := &GroupReader{o: ReaderOptions{MaxWait: 50 * time.Millisecond, MaxBytes: 1 << 20, MinBytes: 1}, addr: kafkago.TCP("127.0.0.1:1"),
		timeout: time.Second, out: make(chan []kafkago.Message, 1), done: make(chan struct{}),
		trs: newTransports(func() kafkago.RoundTripper { return c })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.fetchAll(ctx, []*fetchState{{topicPartition: topicPartition{"a", 0}}, {topicPartition: topicPartition{"a", 1}}})
	}()
	defer func() { cancel(); <-done }()
	read := func(want int) {
		t.Helper()
		fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
		defer fcancel()
		msgs, err := r.FetchBatch(fctx)
		if err != nil || len(msgs) != 1 || msgs[0].Partition != want {
			t.Fatalf("got %+v, %v; want a/%d@0", msgs, err, want)
		}
	}
	read(0)
	for deadline := time.Now().Add(5 * time.Second); c.refused.Load() < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the refused partition asked for %d times in 5 s", c.refused.Load())
		}
	}
	if n := c.cut.Load(); n > 0 {
		t.Errorf("the other partition's long poll cut short %d times in %d retries of the refused one", n, c.refused.Load())
	}
	c.mu.Lock()
	c.refuse = nil
	c.mu.Unlock()
	read(1)
}
