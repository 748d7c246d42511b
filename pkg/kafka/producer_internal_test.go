package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// cluster answers metadata from a fixed layout (the local broker is a single node, so it
// cannot show leaders spread over brokers) and produce requests with programmed partition
// errors, recording what each request held.
type cluster struct {
	leaders map[string][]int32 // topic -> leader per partition
	fail    map[string]int16   // "topic/partition" -> error code for every batch
	failNth map[string]int     // "topic/partition" -> fail only its n-th batch (0-based)
	// down refuses every produce request as a crashed broker's connection does.
	down bool
	// limit refuses a batch of the partition whose record values exceed that many bytes in
	// all with MessageSizeTooLarge (a topic's max.message.bytes).
	limit map[string]int

	mu       sync.Mutex
	requests []map[string][]string // per request: "topic/partition" -> values of its records
	appended map[string][]string   // "topic/partition" -> values of the batches it accepted
	batches  map[string]int
}

func (c *cluster) RoundTrip(_ context.Context, _ net.Addr, req protocol.Message) (protocol.Message, error) {
	switch r := req.(type) {
	case *metadataAPI.Request:
		res := &metadataAPI.Response{}
		for _, name := range r.TopicNames {
			ls, ok := c.leaders[name]
			if !ok {
				res.Topics = append(res.Topics, metadataAPI.ResponseTopic{Name: name, ErrorCode: int16(kafkago.UnknownTopicOrPartition)})
				continue
			}
			t := metadataAPI.ResponseTopic{Name: name}
			for i := len(ls) - 1; i >= 0; i-- { // any order: partitions are known by index
				t.Partitions = append(t.Partitions, metadataAPI.ResponsePartition{PartitionIndex: int32(i), LeaderID: ls[i]})
			}
			res.Topics = append(res.Topics, t)
		}
		return res, nil
	case *produceAPI.Request:
		if c.down {
			return nil, errRefused
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.batches == nil {
			c.batches = map[string]int{}
		}
		seen := map[string][]string{}
		res := &produceAPI.Response{}
		for _, t := range r.Topics {
			rt := produceAPI.ResponseTopic{Topic: t.Topic}
			for _, pt := range t.Partitions {
				k := fmt.Sprintf("%s/%d", t.Topic, pt.Partition)
				var vals []string
				size := 0
				for {
					rec, err := pt.RecordSet.Records.ReadRecord()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						return nil, err
					}
					v, _ := protocol.ReadAll(rec.Value)
					vals = append(vals, string(v))
					size += len(v)
				}
				seen[k] = append(seen[k], vals...)
				code := c.fail[k]
				if n, ok := c.failNth[k]; ok && n == c.batches[k] {
					code = int16(kafkago.NotLeaderForPartition)
				}
				if l, ok := c.limit[k]; ok && size > l {
					code = int16(kafkago.MessageSizeTooLarge)
				}
				if code == 0 {
					if c.appended == nil {
						c.appended = map[string][]string{}
					}
					c.appended[k] = append(c.appended[k], vals...)
				}
				c.batches[k]++
				rt.Partitions = append(rt.Partitions, produceAPI.ResponsePartition{Partition: pt.Partition, ErrorCode: code})
			}
			res.Topics = append(res.Topics, rt)
		}
		c.requests = append(c.requests, seen)
		return res, nil
	}
	return nil, fmt.Errorf("unexpected request %T", req)
}

// Requests are grouped by leader broker (never two leaders in one request), a partition's
// record batches go out in order one request after another, and a failed batch fails its
// partition's later batches unsent (NotSentError) while the other partitions carry on. A batch
// of several messages refused as too large is split until the broker takes the pieces, so
// only a message refused alone carries MessageSizeTooLarge.
func TestProducerGroupsByLeaderAndStopsAFailedPartition(t *testing.T) {
	hash := func(key string, n int) int32 {
		parts := make([]int, n)
		for i := range parts {
			parts[i] = i
		}
		return int32((&kafkago.Hash{}).Balance(kafkago.Message{Key: []byte(key)}, parts...))
	}
	// Keys for chosen partitions of a 4-partition topic.
	keyFor := map[int32]string{}
	for i := 0; len(keyFor) < 4; i++ {
		k := fmt.Sprintf("k%d", i)
		if _, ok := keyFor[hash(k, 4)]; !ok {
			keyFor[hash(k, 4)] = k
		}
	}
	for _, tc := range []struct {
		name        string
		fail        map[string]int16
		failNth     map[string]int
		wantFailed  map[string]string   // value -> error fragment
		sent        map[string][]string // partition -> the values it must have received
		maxRequests int
		maxBytes    int64               // the producer's; 0: 120, one message per batch
		limit       map[string]int      // the cluster's
		big         string              // the value made 300 bytes long
		appended    map[string][]string // partition -> the values it must have accepted
	}{
		// 2 leaders, 3 rounds of one-message batches.
		{name: "all acked", maxRequests: 2 * 3, sent: map[string][]string{"a/0": {"a0-0", "a0-1", "a0-2"}, "b/0": {"b0-0", "b0-1", "b0-2"}}},
		{name: "a partition refuses every batch", fail: map[string]int16{"a/1": int16(kafkago.MessageSizeTooLarge)},
			wantFailed: map[string]string{"a1-0": "Message Size Too Large", "a1-1": "not sent", "a1-2": "not sent"},
			sent:       map[string][]string{"a/1": {"a1-0"}, "a/3": {"a3-0", "a3-1", "a3-2"}}},
		{name: "a partition's second batch fails", failNth: map[string]int{"a/2": 1},
			wantFailed: map[string]string{"a2-1": "Not Leader For Partition", "a2-2": "not sent"},
			sent:       map[string][]string{"a/2": {"a2-0", "a2-1"}, "a/0": {"a0-0", "a0-1", "a0-2"}}},
		{name: "unknown topic fails alone", wantFailed: map[string]string{"z0-0": "Unknown Topic Or Partition"}},
		// One batch per partition; a/1 takes 100 bytes of values (two messages) per batch.
		{name: "a batch over the topic's limit is split", maxBytes: 1000, limit: map[string]int{"a/1": 100},
			appended: map[string][]string{"a/1": {"a1-0", "a1-1", "a1-2"}, "a/2": {"a2-0", "a2-1", "a2-2"}}},
		{name: "a split finds the one message over the limit", maxBytes: 1000, limit: map[string]int{"a/1": 100}, big: "a1-1",
			wantFailed: map[string]string{"a1-1": "Message Size Too Large", "a1-2": "not sent"},
			appended:   map[string][]string{"a/1": {"a1-0"}, "a/2": {"a2-0", "a2-1", "a2-2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cluster{leaders: map[string][]int32{"a": {1, 2, 1, 2}, "b": {2}}, fail: tc.fail, failNth: tc.failNth}
			// ~65-byte messages and 120-byte batches: one message per record batch.
			c.limit = tc.limit
			p := &Producer{trs: newTransports(func() kafkago.RoundTripper { return c }), maxBytes: cmp.Or(tc.maxBytes, 120), timeout: time.Second}
			var msgs []kafkago.Message
			for i := range 3 {
				for pt := range int32(4) {
					msgs = append(msgs, kafkago.Message{Topic: "a", Key: []byte(keyFor[pt]), Value: []byte(fmt.Sprintf("a%d-%d", pt, i) + strings.Repeat(".", 36))})
				}
				msgs = append(msgs, kafkago.Message{Topic: "b", Key: []byte("x"), Value: []byte(fmt.Sprintf("b0-%d", i) + strings.Repeat(".", 36))})
			}
			for i := range msgs {
				if v := string(msgs[i].Value[:4]); v == tc.big {
					msgs[i].Value = []byte(v + strings.Repeat(".", 296))
				}
			}
			if tc.name == "unknown topic fails alone" {
				msgs = append(msgs, kafkago.Message{Topic: "z", Key: []byte("x"), Value: []byte("z0-0")})
			}
			err := p.WriteMessages(context.Background(), msgs...)
			got := map[string]string{}
			var we kafkago.WriteErrors
			if errors.As(err, &we) {
				for i, e := range we {
					if e != nil {
						got[strings.TrimRight(string(msgs[i].Value), ".")] = e.Error()
					}
				}
			} else if err != nil {
				t.Fatalf("error %v is not WriteErrors", err)
			}
			if len(got) != len(tc.wantFailed) {
				t.Fatalf("failed %v, want %v", got, tc.wantFailed)
			}
			for v, frag := range tc.wantFailed {
				if !strings.Contains(got[v], frag) {
					t.Errorf("message %s: error %q, want one with %q", v, got[v], frag)
				}
			}
			// Per partition, the values the cluster received, in request order.
			received := map[string][]string{}
			for ri, req := range c.requests {
				leaders := map[int32]bool{}
				for k, vals := range req {
					var topic string
					var pt int32
					fmt.Sscanf(strings.Replace(k, "/", " ", 1), "%s %d", &topic, &pt)
					leaders[c.leaders[topic][pt]] = true
					for _, v := range vals {
						received[k] = append(received[k], strings.TrimRight(v, "."))
					}
				}
				if len(leaders) != 1 {
					t.Errorf("request %d spans leaders %v", ri, leaders)
				}
			}
			if tc.maxRequests > 0 && len(c.requests) > tc.maxRequests {
				t.Errorf("%d requests, want at most %d", len(c.requests), tc.maxRequests)
			}
			for k, want := range tc.sent {
				if fmt.Sprint(received[k]) != fmt.Sprint(want) {
					t.Errorf("%s received %v, want %v", k, received[k], want)
				}
			}
			for k, want := range tc.appended {
				var got []string
				for _, v := range c.appended[k] {
					got = append(got, strings.TrimRight(v, "."))
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s accepted %v, want %v", k, got, want)
				}
			}
			for k, vals := range c.appended {
				if !sort.StringsAreSorted(vals) {
					t.Errorf("%s accepted %v out of order", k, vals)
				}
			}
			for k, vals := range received {
				if tc.limit == nil && !sort.StringsAreSorted(vals) { // a split sends refused values again
					t.Errorf("%s received %v out of order", k, vals)
				}
			}
		})
	}
}

// kafka-go's Transport keeps routing a partition to the broker its cached metadata names
// for up to its metadata TTL: after a leader's broker crashed, every call would fail to
// connect to it until then. The call that failed so replaces the transport, and the next
// call goes by fresh metadata (here: a cluster whose other broker leads the partition).
func TestProducerRenewsItsTransportWhenABrokerIsDown(t *testing.T) {
	stale := &cluster{leaders: map[string][]int32{"a": {1}}, down: true}
	fresh := &cluster{leaders: map[string][]int32{"a": {2}}}
	made := 0
	p := &Producer{maxBytes: 1 << 20, timeout: time.Second, trs: newTransports(func() kafkago.RoundTripper {
		made++
		if made == 1 {
			return stale
		}
		return fresh
	})}
	msg := kafkago.Message{Topic: "a", Key: []byte("k"), Value: []byte("v")}
	var we kafkago.WriteErrors
	if err := p.WriteMessages(context.Background(), msg); !errors.As(err, &we) || !errors.Is(we[0], errRefused) {
		t.Fatalf("first call: %v, want the refused connection", err)
	}
	if err := p.WriteMessages(context.Background(), msg); err != nil {
		t.Fatalf("the call after the refusal: %v (transports made: %d)", err, made)
	}
	if got := fresh.appended["a/0"]; len(got) != 1 {
		t.Fatalf("the new leader accepted %v", got)
	}
}

// kafka-go's Transport keeps routing a partition to the broker its cached metadata names
// for up to its metadata TTL: after a leader moved, every call would be refused with Not
// Leader For Partition until then. The call that is refused so replaces the transport, and
// the next call goes by fresh metadata (here: a cluster that answers).
func TestProducerRenewsItsTransportWhenALeaderMoved(t *testing.T) {
	stale := &cluster{leaders: map[string][]int32{"a": {1}}, fail: map[string]int16{"a/0": int16(kafkago.NotLeaderForPartition)}}
	fresh := &cluster{leaders: map[string][]int32{"a": {2}}}
	var made []*cluster
	p := &Producer{maxBytes: 1 << 20, timeout: time.Second, trs: newTransports(func() kafkago.RoundTripper {
		c := stale
		if len(made) > 0 {
			c = fresh
		}
		made = append(made, c)
		return c
	})}
	msg := kafkago.Message{Topic: "a", Key: []byte("k"), Value: []byte("v")}
	var we kafkago.WriteErrors
	if err := p.WriteMessages(context.Background(), msg); !errors.As(err, &we) || !errors.Is(we[0], kafkago.NotLeaderForPartition) {
		t.Fatalf("first call: %v, want Not Leader For Partition", err)
	}
	if err := p.WriteMessages(context.Background(), msg); err != nil {
		t.Fatalf("the call after the refusal: %v (transports made: %d)", err, len(made))
	}
	if got := fresh.appended["a/0"]; len(got) != 1 {
		t.Fatalf("the new leader accepted %v", got)
	}
	// A refusal right after a renewal does not replace the transport again: an election that
	// lasts is not a new transport per call.
	fresh.fail = map[string]int16{"a/0": int16(kafkago.LeaderNotAvailable)}
	for range 3 {
		_ = p.WriteMessages(context.Background(), msg)
	}
	if len(made) != 2 {
		t.Fatalf("%d transports made, want 2", len(made))
	}
}
