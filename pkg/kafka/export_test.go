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

// NewFetcher is a reader outside any group, for FetchLeaders and FetchAll to drive; its
// transport refreshes its metadata within metadataTTL.
func NewFetcher(c *Client, maxWait, metadataTTL time.Duration) *GroupReader {
	return &GroupReader{o: ReaderOptions{MaxWait: maxWait, MaxBytes: 16 << 20, MinBytes: 1}, addr: kafkago.TCP(c.Brokers...),
		timeout: c.RequestTimeout, trs: newTransports(func() kafkago.RoundTripper { return c.Transport(5*time.Second, metadataTTL) }),
		out: make(chan []kafkago.Message, 1), done: make(chan struct{})}
}

func fetchStates(parts []FetchPart) []*fetchState {
	out := make([]*fetchState, len(parts))
	for i, p := range parts {
		out[i] = &fetchState{topicPartition: topicPartition{p.Topic, int32(p.Partition)}, offset: p.Offset}
	}
	return out
}

// FetchLeaders runs r's fetch loops over groups as if each group had its own leader broker
// (the local broker is a single node), until one of them ends or parks a partition, and
// stops the others, as fetchGrouped stops every loop to start them over; it returns the
// first loop's error and each partition's next offset to fetch, which is where the loops
// start again.
func FetchLeaders(ctx context.Context, r *GroupReader, groups ...[]FetchPart) ([][]int64, error) {
	byLeader := make([][]*fetchState, len(groups))
	for i, g := range groups {
		byLeader[i] = fetchStates(g)
	}
	tr := r.trs.acquire()
	ctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 2*len(byLeader))
	var wg sync.WaitGroup
	for _, parts := range byLeader {
		wg.Go(func() {
			_, err := r.fetchLoop(ctx, tr.rt, parts, &loopAdds{}, func(_ []*fetchState, err error) {
				errc <- err
				cancel()
			})
			errc <- err
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

// FetchAll runs r's fetches of parts, as a group member does those of its assignment, until
// ctx ends.
func FetchAll(ctx context.Context, r *GroupReader, parts ...FetchPart) {
	r.fetchAll(ctx, fetchStates(parts))
}
