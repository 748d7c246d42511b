// Package kafka holds the process' Kafka settings and the clients built on kafka-go from them:
// a Producer (one produce request per leader broker, acks=all), a GroupReader (a consumer
// group member fetching all its partitions in one request per leader broker, explicit
// commits), and topic provisioning.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/listoffsets"
	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config holds the Kafka settings (flags kafka.*). Topic names live here because the API
// writes them into outbox rows, the relay publishes to them and the consumer reads them.
type Config struct {
	Brokers           []string
	ClientID          string
	RequestTimeout    time.Duration
	TopicImpressions  string
	TopicWatches      string
	Partitions        int
	ReplicationFactor int
	Security          Security
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Brokers: []string{"127.0.0.1:9092"}, ClientID: "recsys", RequestTimeout: 15 * time.Second,
		TopicImpressions: "recsys.impressions.v1", TopicWatches: "recsys.watches.v1", Partitions: 6, ReplicationFactor: 1}
}

// RegisterFlags adds the kafka.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Brokers, "kafka.brokers", c.Brokers, "Kafka bootstrap servers, comma separated host:port")
	fs.StringVar(&c.ClientID, "kafka.client-id", c.ClientID, "client id sent to the brokers")
	fs.DurationVar(&c.RequestTimeout, "kafka.request-timeout", c.RequestTimeout, "timeout of one broker request (produce ack wait, metadata)")
	fs.IntVar(&c.Partitions, "kafka.partitions", c.Partitions, "partitions of each topic when recsys creates it")
	fs.IntVar(&c.ReplicationFactor, "kafka.replication-factor", c.ReplicationFactor, "replication factor of each topic when recsys creates it")
	c.Security.registerFlags(fs)
	flagenv.Alias(fs, "kafka.brokers", "KAFKA_BOOTSTRAP_SERVERS")
	flagenv.Alias(fs, "kafka.client-id", "KAFKA_CLIENT_ID")
	flagenv.Alias(fs, "kafka.request-timeout", "KAFKA_REQUEST_TIMEOUT_MS:ms")
}

// RegisterTopicFlags adds the topic names. They are separate from RegisterFlags because the
// API, which never talks to Kafka, writes them into outbox rows.
func (c *Config) RegisterTopicFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.TopicImpressions, "kafka.topic-impressions", c.TopicImpressions, "topic of impression events; the same in every pod of one deployment (the first records it in PostgreSQL, a process with another refuses: docs/runbook.md)")
	fs.StringVar(&c.TopicWatches, "kafka.topic-watches", c.TopicWatches, "topic of watch events; the same in every pod of one deployment (the first records it in PostgreSQL, a process with another refuses: docs/runbook.md)")
	flagenv.Alias(fs, "kafka.topic-impressions", "KAFKA_TOPIC_IMPRESSIONS")
	flagenv.Alias(fs, "kafka.topic-watches", "KAFKA_TOPIC_WATCHES")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("--kafka.brokers (RECSYS_KAFKA_BROKERS or KAFKA_BOOTSTRAP_SERVERS) is required"))
	}
	for _, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(b)); err != nil {
			errs = append(errs, fmt.Errorf("--kafka.brokers: %q is not host:port", b))
		}
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--kafka.request-timeout must be > 0, got %s", c.RequestTimeout))
	}
	if c.TopicImpressions == "" || c.TopicWatches == "" || c.TopicImpressions == c.TopicWatches {
		errs = append(errs, errors.New("--kafka.topic-impressions and --kafka.topic-watches must be set and differ"))
	}
	if c.Partitions < 1 {
		errs = append(errs, fmt.Errorf("--kafka.partitions must be >= 1, got %d", c.Partitions))
	}
	if c.ReplicationFactor < 1 {
		errs = append(errs, fmt.Errorf("--kafka.replication-factor must be >= 1, got %d", c.ReplicationFactor))
	}
	errs = append(errs, c.Security.validate())
	return errors.Join(errs...)
}

// Client builds kafka-go writers and readers from one configuration.
type Client struct {
	Config
	admin *kafkago.Client
}

// New returns a client; it opens no connection.
func New(c Config) *Client {
	trs := newTransports(func() kafkago.RoundTripper { return c.Transport(5*time.Second, 6*time.Second) })
	return &Client{Config: c, admin: &kafkago.Client{Addr: kafkago.TCP(c.Brokers...), Timeout: c.RequestTimeout,
		Transport: renewing{trs}}}
}

// renewing sends each request on the current transport of trs and replaces it when the
// request did not reach a broker, or a ListOffsets found a partition's leader moved. The
// admin client lives as long as the process: with one transport, its requests (topic
// creation, configuration reads, the consumer's lag reads) failed for good once the brokers'
// certificate moved to a new CA or the client's was rotated (the transport reads the TLS
// files once), and waited out the metadata TTL after a broker crashed or a leader moved.
type renewing struct{ trs *transports }

func (r renewing) RoundTrip(ctx context.Context, addr net.Addr, req kafkago.Request) (kafkago.Response, error) {
	tr := r.trs.acquire()
	res, err := tr.rt.RoundTrip(ctx, addr, req)
	tr.release()
	if unreachable(err) || misrouted(res) {
		r.trs.renew(tr)
	}
	return res, err
}

// misrouted reports a ListOffsets response with a partition the transport sent to a broker
// that no longer leads it, or whose part of the request got no answer (kafka-go splits a
// ListOffsets by partition and marks a part that failed, its stale leader's broker down say,
// with error code -1; the request fails only when every part did). Both are per-partition
// errors, never the request's: the consumer's lag of such partitions stopped updating until
// the transport's metadata expired.
func misrouted(res kafkago.Response) bool {
	lo, ok := res.(*listoffsets.Response)
	if !ok {
		return false
	}
	for _, t := range lo.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode == int16(kafkago.Unknown) || (p.ErrorCode != 0 && leaderMoved(kafkago.Error(p.ErrorCode))) {
				return true
			}
		}
	}
	return false
}

// DefaultFetchMaxWait is the broker's long-poll wait of an idle fetch, the contract's
// FEATURE_CONSUMER_POLL_TIMEOUT_MS: an idle member asks each broker about once per wait.
const DefaultFetchMaxWait = time.Second

// ReaderOptions tune a GroupReader.
type ReaderOptions struct {
	GroupID  string
	Topics   []string
	MaxWait  time.Duration
	MinBytes int
	// MaxBytes bounds one fetch answer (all partitions); 0 means 16 MiB.
	MaxBytes int
	// ErrorLog receives kafka-go's group errors and the reader's fetch errors as warnings
	// (both are retried with backoff); nil drops them.
	ErrorLog *slog.Logger
}

// EnsureTopics creates the topics that are missing with the configured partitions and
// replication factor (existing topics are left as they are), then waits until every
// partition's leader serves it: a producer that fetched metadata before the election would
// get NotLeaderForPartition for its whole metadata TTL, and one that publishes right after
// it for a moment.
//
// A client without the permission to create topics (topics made by whoever runs the
// cluster) is refused even those that exist: the broker checks the permission before
// looking. Such a topic is fine when the broker describes it; the error is the refusal when
// it does not (missing, or not even described to this client).
func (c *Client) EnsureTopics(ctx context.Context, topics ...string) error {
	req := &kafkago.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafkago.TopicConfig{Topic: t, NumPartitions: c.Partitions, ReplicationFactor: c.ReplicationFactor})
	}
	resp, err := c.admin.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics %v: %w", topics, err)
	}
	refused := map[string]error{}
	for t, e := range resp.Errors {
		if errors.Is(e, kafkago.TopicAuthorizationFailed) || errors.Is(e, kafkago.ClusterAuthorizationFailed) {
			refused[t] = e
		}
	}
	if err := topicErrors("create", resp.Errors, kafkago.TopicAlreadyExists, kafkago.TopicAuthorizationFailed, kafkago.ClusterAuthorizationFailed); err != nil {
		return err
	}
	d := c.Dialer(time.Second)
	if err := topicsDescribed(ctx, d, c.Brokers, refused); err != nil {
		return err
	}
	for {
		err := leadersServe(ctx, d, c.Brokers, topics)
		if err == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for partition leaders of %v: %w", topics, err)
		case <-t.C:
		}
	}
}

// leadersServe reports nil once the first broker that answers names a leader for every
// partition of topics and each leader serves its partition.
func leadersServe(ctx context.Context, d *kafkago.Dialer, brokers, topics []string) error {
	var errs []error
	for _, addr := range brokers {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		parts, err := conn.ReadPartitions(topics...)
		conn.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range parts {
			if p.Leader.Host == "" || p.Leader.ID < 0 {
				return fmt.Errorf("topic %s partition %d has no leader yet", p.Topic, p.ID)
			}
		}
		// The metadata names a new partition's leader a moment before that broker serves it
		// (a produce then answers Not Leader For Partition: seen on the first publish after
		// start). The leader answering an offset request for it is the broker serving it.
		for _, p := range parts {
			if err := leaderServes(ctx, d, p); err != nil {
				return fmt.Errorf("topic %s partition %d: leader not serving yet: %w", p.Topic, p.ID, err)
			}
		}
		return nil
	}
	return errors.Join(errs...)
}

// topicsDescribed reports nil once the first broker that answers describes every topic of
// refused (its creation refused with the error there), and else the refusals of those it
// does not describe.
func topicsDescribed(ctx context.Context, d *kafkago.Dialer, brokers []string, refused map[string]error) error {
	if len(refused) == 0 {
		return nil
	}
	var errs []error
	for _, addr := range brokers {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var missing []error
		for t, cause := range refused {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			_, err = conn.ReadPartitions(t)
			var ke kafkago.Error
			if errors.As(err, &ke) {
				missing = append(missing, fmt.Errorf("create topic %s: %w; the broker does not describe it either: %w", t, cause, err))
				err = nil
				continue
			}
			if err != nil {
				break
			}
		}
		conn.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return errors.Join(missing...)
	}
	return fmt.Errorf("describe the topics this client may not create: %w", errors.Join(errs...))
}

func leaderServes(ctx context.Context, d *kafkago.Dialer, p kafkago.Partition) error {
	conn, err := d.DialPartition(ctx, "tcp", "", p)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	_, err = conn.ReadLastOffset()
	return err
}

// MaxMessageBytes returns each topic's max.message.bytes: the largest record batch its brokers
// accept (the broker's message.max.bytes unless the topic overrides it). Describing a topic's
// configuration needs the DescribeConfigs ACL; without it the error wraps
// kafkago.TopicAuthorizationFailed or kafkago.ClusterAuthorizationFailed.
func (c *Client) MaxMessageBytes(ctx context.Context, topics ...string) (map[string]int64, error) {
	cfgs, err := c.topicConfigInts(ctx, topics, "max.message.bytes")
	out := make(map[string]int64, len(cfgs))
	for t, v := range cfgs {
		out[t] = v["max.message.bytes"]
	}
	return out, err
}

// Retention is how long a topic keeps a message by time.
type Retention struct {
	// Ms is the topic's retention.ms; -1: kept for ever (unless retention.bytes trims it).
	Ms int64
	// SegmentMs is its segment.ms: the broker deletes whole segments once their newest
	// message is older than Ms, and a segment rolls after at most SegmentMs, so a message may
	// stay up to Ms + SegmentMs.
	SegmentMs int64
}

// Horizon is how long a message may stay readable by time; 0: for ever.
func (r Retention) Horizon() time.Duration {
	if r.Ms < 0 {
		return 0
	}
	return time.Duration(r.Ms+r.SegmentMs) * time.Millisecond
}

// Retention returns each topic's time retention (needs DescribeConfigs, as MaxMessageBytes).
func (c *Client) Retention(ctx context.Context, topics ...string) (map[string]Retention, error) {
	cfgs, err := c.topicConfigInts(ctx, topics, "retention.ms", "segment.ms")
	out := make(map[string]Retention, len(cfgs))
	for t, v := range cfgs {
		out[t] = Retention{Ms: v["retention.ms"], SegmentMs: v["segment.ms"]}
	}
	return out, err
}

// topicConfigInts describes the integer settings names of topics; a topic is in the result
// only when every one of names was described.
func (c *Client) topicConfigInts(ctx context.Context, topics []string, names ...string) (map[string]map[string]int64, error) {
	req := &kafkago.DescribeConfigsRequest{}
	for _, t := range topics {
		req.Resources = append(req.Resources, kafkago.DescribeConfigRequestResource{
			ResourceType: kafkago.ResourceTypeTopic, ResourceName: t, ConfigNames: names})
	}
	resp, err := c.admin.DescribeConfigs(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("describe configs of topics %v: %w", topics, err)
	}
	out := make(map[string]map[string]int64, len(topics))
	var errs []error
	for _, r := range resp.Resources {
		if r.Error != nil {
			errs = append(errs, fmt.Errorf("describe configs of topic %s: %w", r.ResourceName, r.Error))
			continue
		}
		got := map[string]int64{}
		for _, e := range r.ConfigEntries {
			if !slices.Contains(names, e.ConfigName) {
				continue
			}
			n, err := strconv.ParseInt(e.ConfigValue, 10, 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("topic %s: %s %q: %w", r.ResourceName, e.ConfigName, e.ConfigValue, err))
				continue
			}
			got[e.ConfigName] = n
		}
		if len(got) == len(names) {
			out[r.ResourceName] = got
		}
	}
	for _, t := range topics {
		if _, ok := out[t]; !ok && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("topic %s: the broker did not describe %s", t, strings.Join(names, ", ")))
		}
	}
	return out, errors.Join(errs...)
}

// DeleteTopics deletes the topics; one that does not exist is not an error, so cleaning up
// twice, or after a run that never created its topics, succeeds.
func (c *Client) DeleteTopics(ctx context.Context, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	resp, err := c.admin.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("delete topics %v: %w", topics, err)
	}
	return topicErrors("delete", resp.Errors, kafkago.UnknownTopicOrPartition)
}

// topicErrors joins the per-topic errors of an admin request but those of skip (the answer
// meaning the topic already is as asked, or a case the caller handles).
func topicErrors(verb string, perTopic map[string]error, skip ...error) error {
	var errs []error
next:
	for t, e := range perTopic {
		if e == nil {
			continue
		}
		for _, s := range skip {
			if errors.Is(e, s) {
				continue next
			}
		}
		errs = append(errs, fmt.Errorf("%s topic %s: %w", verb, t, e))
	}
	return errors.Join(errs...)
}

// Ping opens a fresh connection to a broker and asks it for the broker list, with a bounded
// wait. kafka-go's Client answers metadata from a cache once it has seen the cluster, so it
// would keep reporting a dead cluster as healthy; a new connection cannot.
func (c *Client) Ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := c.Dialer(timeout)
	var errs []error
	for _, b := range c.Brokers {
		conn, err := d.DialContext(ctx, "tcp", strings.TrimSpace(b))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(timeout))
		_, err = conn.Brokers()
		conn.Close()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("kafka ping: %w", errors.Join(errs...))
}

// Admin returns the low-level client for offset and metadata requests.
func (c *Client) Admin() *kafkago.Client { return c.admin }
