package relay

import (
	"context"
	"errors"
	"sort"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
)

// tieredPublisher sends each WriteMessages call through the smallest of several kafka-go
// Writers whose BatchSize holds the whole call. kafka-go allocates every partition batch with
// capacity BatchSize, so one writer sized for the largest claim (--relay.batch-events, 10,000
// messages: ~1.5 MB per partition batch) made each small, latency-bound publish allocate and
// zero megabytes; with tiers a call of a few messages allocates a kilobyte or two, and no call
// is ever split over two produce requests per partition by the message count. The smallest
// tier is 8: at 1,000 events/s a claim carries a handful, and a first tier of 64 (~10 kB per
// partition batch) was 13 % of the bytes `recsys all` allocated in EndToEndFreshness.
type tieredPublisher struct {
	sizes     []int // ascending BatchSize of writers
	writers   []*kafkago.Writer
	transport *kafkago.Transport
}

// NewPublisher returns the relay's Kafka publisher: kafka-go Writers (WriterOptions) of
// BatchSize 8, 32, 128, ... up to --relay.batch-events, sharing one transport (connections
// and metadata cache).
func NewPublisher(c *kafka.Client, cfg *Config) Publisher {
	var sizes []int
	for s := 8; s < cfg.BatchEvents; s *= 4 {
		sizes = append(sizes, s)
	}
	sizes = append(sizes, cfg.BatchEvents)
	p := &tieredPublisher{sizes: sizes}
	for _, s := range sizes {
		o := WriterOptions(cfg)
		o.BatchSize = s
		w := c.NewWriter(o)
		if p.transport == nil {
			p.transport, _ = w.Transport.(*kafkago.Transport)
		} else {
			w.Transport = p.transport
		}
		p.writers = append(p.writers, w)
	}
	return p
}

func (p *tieredPublisher) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	return p.writers[p.tier(len(msgs))].WriteMessages(ctx, msgs...)
}

// tier is the writer for a call of n messages: the smallest that holds it, else the largest
// (a row larger than --relay.batch-events goes out alone, split over produce requests).
func (p *tieredPublisher) tier(n int) int {
	return min(sort.SearchInts(p.sizes, n), len(p.sizes)-1)
}

func (p *tieredPublisher) Close() error {
	var errs []error
	for _, w := range p.writers {
		errs = append(errs, w.Close())
	}
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	return errors.Join(errs...)
}
