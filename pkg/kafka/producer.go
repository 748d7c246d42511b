package kafka

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"slices"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// Producer writes each WriteMessages call as one produce request per leader broker, holding
// every topic and partition the call touches. kafka-go's Writer sends one request per
// partition: a relay claim of a few events spread over the partitions cost the broker a request
// per partition, and at 1,000 events/s that made the broker the costliest process per event
// after PostgreSQL (BenchmarkRelayCommitToAck on one partition instead of six: broker CPU per
// event halved, ack p99 7 → 3 ms).
//
// It keeps the Writer's contract where the relay relies on it: acks=all; the partition is the
// Writer's (kafka-go's Hash balancer over the partition count), so keys stay where they were;
// a message larger than MaxBytes fails the call with kafkago.MessageTooLargeError before
// anything is sent; otherwise the result is nil or kafkago.WriteErrors, one per message. Nothing
// is retried here (the outbox owns retries), with one exception: a record batch of several
// messages the broker refuses as too large (MessageSizeTooLarge, RecordListTooLarge: the
// topic's max.message.bytes is below MaxBytes) is split and sent again, down to single
// messages. The broker's error is about the batch and appends nothing of it, so the split
// sends nothing twice, and a message carries MessageSizeTooLarge only when the broker refused
// it alone. A partition's messages over MaxBytes go out in several record batches, each sent
// only after the one before it was acked, and a failed batch fails its partition's later ones
// unsent (NotSentError), so a partition never receives a later message without the earlier
// ones. A call that finds a partition's leader moved, or its broker unreachable, replaces the
// transport (see transports), so that the next one reaches the new leader.
type Producer struct {
	addr     net.Addr
	trs      *transports // *kafkago.Transport; its metadata cache routes requests
	maxBytes int64
	timeout  time.Duration
	balancer kafkago.Hash
}

// ProducerOptions tune a Producer.
type ProducerOptions struct {
	// MaxBytes bounds a partition's record batch (kafka-go's Writer.BatchBytes); 0 means
	// kafka-go's default of 1 MiB.
	MaxBytes int64
	// MetadataTTL is how long topic metadata (partitions, leaders) is served from the cache;
	// 0 means 10 s.
	MetadataTTL time.Duration
}

// NewProducer returns a Producer on the client's brokers, with its own transport (connections
// and metadata cache). The caller closes it.
func (c *Client) NewProducer(o ProducerOptions) *Producer {
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 20
	}
	if o.MetadataTTL <= 0 {
		o.MetadataTTL = 10 * time.Second
	}
	return &Producer{
		addr:     kafkago.TCP(c.Brokers...),
		trs:      newTransports(func() kafkago.RoundTripper { return c.Transport(3*time.Second, o.MetadataTTL) }),
		maxBytes: o.MaxBytes,
		timeout:  c.RequestTimeout,
	}
}

// Close releases the producer's idle connections.
func (p *Producer) Close() error {
	p.trs.close()
	return nil
}

// topicPartition names a partition.
type topicPartition struct {
	topic     string
	partition int32
}

// chunk is one record batch: message indexes of one partition, in call order.
type chunk struct {
	topicPartition
	idx []int32
}

// NotSentError is the error of a message that was not sent because an earlier record batch of
// its partition failed; the broker never saw it, so sending it again publishes it once.
type NotSentError struct {
	// Cause is the earlier batch's error. It is not unwrapped: errors.Is(err,
	// kafkago.MessageSizeTooLarge) must stay about the message itself.
	Cause error
}

func (e NotSentError) Error() string {
	return fmt.Sprintf("not sent: an earlier record batch of its partition failed: %v", e.Cause)
}

// WriteMessages sends msgs (each naming its topic) and waits for the acks.
func (p *Producer) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for i := range msgs {
		if MessageSize(&msgs[i]) > p.maxBytes {
			rest := make([]kafkago.Message, 0, len(msgs)-1)
			rest = append(append(rest, msgs[:i]...), msgs[i+1:]...)
			return kafkago.MessageTooLargeError{Message: msgs[i], Remaining: rest}
		}
	}
	errs := make(kafkago.WriteErrors, len(msgs))
	tr := p.trs.acquire()
	defer tr.release()
	leaders, err := p.assign(ctx, tr.rt, msgs, errs)
	if err != nil {
		if unreachable(err) {
			p.trs.renew(tr)
		}
		return err
	}
	var wg sync.WaitGroup
	for _, parts := range leaders {
		wg.Go(func() { p.sendRounds(ctx, tr.rt, msgs, parts, errs) })
	}
	wg.Wait()
	failed := false
	for _, e := range errs {
		if e != nil {
			failed = true
			if leaderMoved(e) || unreachable(e) {
				// The outbox sends the message again after its backoff: to the new leader.
				p.trs.renew(tr)
				break
			}
		}
	}
	if failed {
		return errs
	}
	return nil
}

// assign picks every message's partition and groups the partitions' record batches by leader
// broker: per leader, per partition (in order of first message), the batches in order. A
// message of a topic the metadata does not know gets its error in errs.
func (p *Producer) assign(ctx context.Context, rt kafkago.RoundTripper, msgs []kafkago.Message, errs kafkago.WriteErrors) (map[int32][][]chunk, error) {
	var topics []string
	for i := range msgs {
		if msgs[i].Topic == "" {
			return nil, fmt.Errorf("produce: message %d has no topic", i)
		}
		if !slices.Contains(topics, msgs[i].Topic) {
			topics = append(topics, msgs[i].Topic)
		}
	}
	tctx, cancel := context.WithTimeout(ctx, p.timeout)
	r, err := rt.RoundTrip(tctx, p.addr, &metadataAPI.Request{TopicNames: topics})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("produce: metadata: %w", err)
	}
	type topicInfo struct {
		err     error
		parts   []int
		leaders map[int32]int32
	}
	info := make(map[string]*topicInfo, len(topics))
	for _, t := range r.(*metadataAPI.Response).Topics {
		ti := &topicInfo{}
		info[t.Name] = ti
		if t.ErrorCode != 0 {
			ti.err = kafkago.Error(t.ErrorCode)
			continue
		}
		ti.parts = make([]int, len(t.Partitions))
		ti.leaders = make(map[int32]int32, len(t.Partitions))
		for i, pt := range t.Partitions {
			ti.parts[i] = i
			ti.leaders[pt.PartitionIndex] = pt.LeaderID
		}
	}
	batches := map[topicPartition][]chunk{}
	bytes := map[topicPartition]int64{}
	var order []topicPartition
	for i := range msgs {
		m := &msgs[i]
		ti := info[m.Topic]
		switch {
		case ti == nil:
			errs[i] = kafkago.UnknownTopicOrPartition
			continue
		case ti.err != nil:
			errs[i] = ti.err
			continue
		case len(ti.parts) == 0:
			errs[i] = kafkago.LeaderNotAvailable
			continue
		}
		k := topicPartition{m.Topic, int32(p.balancer.Balance(*m, ti.parts...))}
		cs, seen := batches[k]
		if !seen {
			order = append(order, k)
		}
		n := MessageSize(m)
		if len(cs) == 0 || bytes[k]+n > p.maxBytes {
			cs = append(cs, chunk{topicPartition: k})
			bytes[k] = 0
		}
		cs[len(cs)-1].idx = append(cs[len(cs)-1].idx, int32(i))
		bytes[k] += n
		batches[k] = cs
	}
	leaders := map[int32][][]chunk{}
	for _, k := range order {
		l := info[k.topic].leaders[k.partition]
		leaders[l] = append(leaders[l], batches[k])
	}
	return leaders, nil
}

// sendRounds sends one leader's partitions: each round holds the next record batch of every
// partition whose batches so far were acked.
func (p *Producer) sendRounds(ctx context.Context, rt kafkago.RoundTripper, msgs []kafkago.Message, parts [][]chunk, errs kafkago.WriteErrors) {
	next := make([]int, len(parts)) // per partition, its batch to send next
	for {
		req := &produceAPI.Request{Acks: int16(kafkago.RequireAll), Timeout: int32(p.timeout.Milliseconds())}
		var sent []int // indexes into parts
		for pi, cs := range parts {
			if next[pi] >= len(cs) {
				continue
			}
			c := cs[next[pi]]
			records := make([]protocol.Record, len(c.idx))
			for j, i := range c.idx {
				m := &msgs[i]
				records[j] = protocol.Record{Time: m.Time, Key: bytesOrNil(m.Key), Value: bytesOrNil(m.Value), Headers: m.Headers}
			}
			req.Topics = appendPartition(req.Topics, c.topic, produceAPI.RequestPartition{
				Partition: c.partition, RecordSet: protocol.RecordSet{Records: protocol.NewRecordReader(records...)},
			})
			sent = append(sent, pi)
		}
		if len(sent) == 0 {
			return
		}
		results, err := p.roundTrip(ctx, rt, req)
		for _, pi := range sent {
			cs := parts[pi]
			c := cs[next[pi]]
			e := err
			if e == nil {
				e = results[c.topicPartition]
			}
			switch {
			case e == nil:
				next[pi]++
			case len(c.idx) > 1 && batchTooLarge(e):
				parts[pi] = split(msgs, cs, next[pi])
			default:
				for _, i := range c.idx {
					errs[i] = e
				}
				for _, later := range cs[next[pi]+1:] {
					for _, i := range later.idx {
						errs[i] = NotSentError{Cause: e}
					}
				}
				next[pi] = len(cs)
			}
		}
	}
}

// batchTooLarge reports the broker refusing a record batch for its size.
func batchTooLarge(err error) bool {
	return errors.Is(err, kafkago.MessageSizeTooLarge) || errors.Is(err, kafkago.RecordListTooLarge)
}

// split re-packs a partition's batches from the refused one (at) on into batches of at most
// half its size (one message at least). The broker's limit is below the refused batch, so the
// later batches, packed the same way, would be refused too.
func split(msgs []kafkago.Message, cs []chunk, at int) []chunk {
	var refused int64
	for _, i := range cs[at].idx {
		refused += MessageSize(&msgs[i])
	}
	limit := refused / 2
	out := append(make([]chunk, 0, len(cs)+1), cs[:at]...)
	var size int64
	for _, c := range cs[at:] {
		for _, i := range c.idx {
			n := MessageSize(&msgs[i])
			if len(out) == at || size+n > limit {
				out = append(out, chunk{topicPartition: c.topicPartition})
				size = 0
			}
			out[len(out)-1].idx = append(out[len(out)-1].idx, i)
			size += n
		}
	}
	return out
}

// roundTrip sends one produce request and returns the error of each partition that failed;
// err fails every partition of the request.
func (p *Producer) roundTrip(ctx context.Context, rt kafkago.RoundTripper, req *produceAPI.Request) (map[topicPartition]error, error) {
	rctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	r, err := rt.RoundTrip(rctx, p.addr, req)
	if err != nil {
		return nil, fmt.Errorf("produce: %w", err)
	}
	res, ok := r.(*produceAPI.Response)
	if !ok {
		return nil, fmt.Errorf("produce: unexpected response %T", r)
	}
	answered := map[topicPartition]error{}
	for _, t := range res.Topics {
		for _, pt := range t.Partitions {
			var e error
			if pt.ErrorCode != 0 {
				e = kafkago.Error(pt.ErrorCode)
				if pt.ErrorMessage != "" {
					e = fmt.Errorf("%w: %s", e, pt.ErrorMessage)
				}
			}
			answered[topicPartition{t.Topic, pt.Partition}] = e
		}
	}
	out := map[topicPartition]error{}
	for _, t := range req.Topics {
		for _, pt := range t.Partitions {
			k := topicPartition{t.Topic, pt.Partition}
			e, ok := answered[k]
			if !ok {
				e = errors.New("produce: the broker did not answer for the partition")
			}
			if e != nil {
				out[k] = e
			}
		}
	}
	return out, nil
}

func appendPartition(topics []produceAPI.RequestTopic, topic string, pt produceAPI.RequestPartition) []produceAPI.RequestTopic {
	for i := range topics {
		if topics[i].Topic == topic {
			topics[i].Partitions = append(topics[i].Partitions, pt)
			return topics
		}
	}
	return append(topics, produceAPI.RequestTopic{Topic: topic, Partitions: []produceAPI.RequestPartition{pt}})
}

func bytesOrNil(b []byte) protocol.Bytes {
	if b == nil {
		return nil
	}
	return protocol.NewBytes(b)
}

// MessageSize is the size kafka-go's Writer counts a message at against its BatchBytes (the
// unexported Message.totalSize of kafka-go v0.4.51), so a message the Writer took is taken
// here too.
func MessageSize(m *kafkago.Message) int64 {
	n := 4 + 1 + 1 + (4 + len(m.Key)) + (4 + len(m.Value)) + 8 // size(): crc, magic, attributes, key, value, timestamp
	n += varintLen(len(m.Headers))
	for _, h := range m.Headers {
		n += varintLen(len(h.Key)) + len(h.Key) + varintLen(len(h.Value)) + len(h.Value)
	}
	return int64(n)
}

// varintLen is the length of n as a zig-zag varint (kafka-go's varIntLen).
func varintLen(n int) int {
	u := uint64(n)<<1 ^ uint64(int64(n)>>63)
	return max(1, (bits.Len64(u)+6)/7)
}
