package kafka

import (
	"context"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// Assigned is the number of partitions the reader's current generation gives it.
func Assigned(r *GroupReader) int {
	g := r.gen.Load()
	if g == nil {
		return 0
	}
	return len(g.owned)
}

// FetchPart is a partition to fetch from an offset.
type FetchPart struct {
	Topic     string
	Partition int
	Offset    int64
}

// NewFetcher is a reader outside any group, for FetchLeaders to drive.
func NewFetcher(c *Client, maxWait time.Duration) *GroupReader {
	return &GroupReader{o: ReaderOptions{MaxWait: maxWait, MaxBytes: 16 << 20, MinBytes: 1}, addr: kafkago.TCP(c.Brokers...),
		timeout: c.RequestTimeout, trs: newTransports(func() kafkago.RoundTripper { return c.Transport(5*time.Second, 10*time.Second) }),
		out: make(chan []kafkago.Message, 1), done: make(chan struct{})}
}

// FetchLeaders runs r's fetch loops over groups as if each group had its own leader broker
// (the local broker is a single node), until one of them ends, and stops the others, as
// fetchGrouped stops every loop to start them over; it returns the first loop's error and
// each partition's next offset to fetch, which is where the loops start again.
func FetchLeaders(ctx context.Context, r *GroupReader, groups ...[]FetchPart) ([][]int64, error) {
	byLeader := make([][]*fetchState, len(groups))
	for i, g := range groups {
		for _, p := range g {
			byLeader[i] = append(byLeader[i], &fetchState{topicPartition: topicPartition{p.Topic, int32(p.Partition)}, offset: p.Offset})
		}
	}
	tr := r.trs.acquire()
	ctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, len(byLeader))
	var wg sync.WaitGroup
	for _, parts := range byLeader {
		wg.Go(func() {
			errc <- r.fetchLoop(ctx, tr.rt, parts)
			cancel()
		})
	}
	wg.Wait()
	cancel()
	tr.release()
	next := make([][]int64, len(byLeader))
	for i, g := range byLeader {
		for _, p := range g {
			next[i] = append(next[i], p.offset)
		}
	}
	return next, <-errc
}
