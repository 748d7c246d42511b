package consumer

import (
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/flagenv"
	"recsys/pkg/kafka"
)

// Config of the consumer role.
type Config struct {
	GroupID  string
	ClientID string
	// MaxBatch caps the messages applied in one PostgreSQL transaction. Large on purpose:
	// under load, every item statistic and co-visitation list a batch touches is rewritten
	// once per batch, so events per transaction is what amortises them (5,000 -> 20,000
	// measured +40-60% apply rate); at low volume batches stay small (whatever is available).
	MaxBatch int
	// Linger is how long a batch waits for more messages once nothing is immediately
	// available; the batch also grows by itself while the previous one is being applied.
	Linger time.Duration
	// ImpressionLinger replaces Linger while the batch holds impressions only. Impressions
	// are most of the stream (one per served list with autolog) and feed only fatigue and
	// impression counts, which nobody reads within milliseconds; every transaction costs
	// the machine the same fixed work whatever its size, and a transaction per few lists was
	// most of the pipeline's CPU below saturation (docs/performance-log.md, session 17). A watch
	// joining the batch brings its wait back to Linger, so watch freshness is unchanged.
	ImpressionLinger time.Duration
	// FetchMaxWait is the broker's long-poll wait of an idle fetch. A message arriving ends
	// the wait, so it does not delay features; a rebalance or a shutdown waits for the
	// partitions' current polls (kafka-go does not interrupt them), so at most this much
	// longer. At 100 ms (the default before session 23) each idle partition cost ~25
	// fetches a second and redialled now and then (kafka.DefaultFetchMaxWait).
	FetchMaxWait time.Duration
	// CommitInterval spaces the Kafka offset commits. Committing after every batch (0) cost
	// the broker a log append per batch, ~150 a second at 1,000 events/s; the dedup record,
	// not the offsets, makes the effects exactly-once, so a crash only redelivers up to this
	// much more (skipped as duplicates).
	CommitInterval time.Duration
	// RetryBackoff doubles up to RetryMaxBackoff between attempts of a failing batch.
	RetryBackoff    time.Duration
	RetryMaxBackoff time.Duration
	// UnreadyAfter consecutive failed attempts make /readyz fail (the consumer keeps trying).
	UnreadyAfter int
	// HealInterval is how often the Redis copy is checked and the write journal healed.
	HealInterval time.Duration
	// DedupRetention is how long applied event ids are remembered; it must exceed the Kafka
	// retention and any replay horizon, or a redelivery older than it would apply twice.
	DedupRetention time.Duration
	// ItemRetention trims items no batch wrote for this long whose long popularity is below
	// one full watch this long ago (featurestore.Store.TrimItems); 0 keeps every item.
	ItemRetention time.Duration
	// UserRetention trims users no batch wrote for this long (featurestore.Store.TrimUsers);
	// 0 keeps every user.
	UserRetention time.Duration
	// DrainTimeout bounds the batch in flight at shutdown.
	DrainTimeout time.Duration
	// MaxEventFuture sends events timed further ahead of the clock to the DLQ
	// (featurestore.CheckNotFuture).
	MaxEventFuture time.Duration
	// MaxInFlight is how many transactions apply at once. Each takes the events of a fixed
	// share of the users (hashed), so one user's events stay in one lane, in order, while
	// PostgreSQL works on one lane's transaction and Go on the other's. 1 applies one batch
	// at a time.
	MaxInFlight int
	// ImpressionsFormat is how the users' impression counters are written
	// (featurestore.ImpressionsFormat); every reader takes both. The array form is the
	// default from the release after the one that taught every reader to take it
	// (docs/rollback.md: an upgrade from an older release pins object for its rollout).
	ImpressionsFormat string
	// ImpressionsOverlay writes impression raises to the counters' overlay instead of
	// rewriting their whole document (featurestore.Store.SetImpressionsOverlay). On by
	// default from the release after the one that taught every role to read overlays, like
	// the array form: a consumer of an older release would drop the overlays it meets, so an
	// upgrade from one pins it off for its rollout (docs/rollback.md).
	ImpressionsOverlay bool
	Features           features.Config
}

// NewConfig returns the defaults.
func NewConfig() *Config {
	return &Config{GroupID: "recsys-feature-consumer-v1", MaxBatch: 20000, Linger: 2 * time.Millisecond, ImpressionLinger: 100 * time.Millisecond,
		FetchMaxWait: kafka.DefaultFetchMaxWait, CommitInterval: 100 * time.Millisecond, RetryBackoff: 100 * time.Millisecond, RetryMaxBackoff: 30 * time.Second,
		UnreadyAfter: 5, HealInterval: time.Second, DedupRetention: 14 * 24 * time.Hour, ItemRetention: 90 * 24 * time.Hour, UserRetention: 365 * 24 * time.Hour, DrainTimeout: 15 * time.Second, MaxInFlight: 2,
		MaxEventFuture:    featurestore.DefaultMaxEventFuture,
		ImpressionsFormat: string(featurestore.ImpressionsArray), ImpressionsOverlay: true, Features: features.DefaultConfig()}
}

// RegisterFlags adds the consumer.* flags (feature parameters under consumer.features.*).
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.GroupID, "consumer.group-id", c.GroupID, "Kafka consumer group of the feature consumers")
	fs.StringVar(&c.ClientID, "consumer.client-id", c.ClientID, "Kafka client id of the consumer (empty: --kafka.client-id)")
	fs.IntVar(&c.MaxBatch, "consumer.max-batch", c.MaxBatch, "most messages applied in one PostgreSQL transaction")
	fs.DurationVar(&c.MaxEventFuture, "consumer.max-event-future", c.MaxEventFuture, "an event whose ts_ms is further ahead of the consumer's clock goes to the DLQ as invalid instead of moving the decay landmarks to its time (which would zero every popularity and co-visitation value); the API already refuses more than --ingest.max-event-future, so this catches other producers on the topics")
	fs.DurationVar(&c.Linger, "consumer.linger", c.Linger, "wait for more messages before applying a batch that is not full")
	fs.DurationVar(&c.ImpressionLinger, "consumer.impression-linger", c.ImpressionLinger, "wait for more messages before applying a batch of impressions only (a watch in the batch brings the wait back to --consumer.linger); such a batch also waits for every lane and applies as one transaction: fewer, larger transactions for the autolog's stream, at most this much later (plus a transaction) in the impression counts and fatigue")
	fs.DurationVar(&c.FetchMaxWait, "consumer.fetch-max-wait", c.FetchMaxWait, "broker long-poll wait of an idle fetch")
	fs.DurationVar(&c.CommitInterval, "consumer.commit-interval", c.CommitInterval, "least time between Kafka offset commits (0: after every batch); a crash redelivers up to this much more, skipped as duplicates")
	fs.DurationVar(&c.RetryBackoff, "consumer.retry-backoff", c.RetryBackoff, "first wait before retrying a batch after a transient error (doubles each attempt)")
	fs.DurationVar(&c.RetryMaxBackoff, "consumer.retry-max-backoff", c.RetryMaxBackoff, "longest wait between attempts of a failing batch")
	fs.IntVar(&c.UnreadyAfter, "consumer.unready-after-failures", c.UnreadyAfter, "consecutive failed attempts of a batch before /readyz fails (retries go on; valid events never go to the DLQ)")
	fs.DurationVar(&c.HealInterval, "consumer.heal-interval", c.HealInterval, "how often the Redis copy is checked (repopulated when empty) and failed Redis writes are redone")
	fs.DurationVar(&c.DedupRetention, "consumer.dedup-retention", c.DedupRetention, "how long applied event ids are remembered (must exceed Kafka retention and replay horizons)")
	fs.DurationVar(&c.ItemRetention, "consumer.item-retention", c.ItemRetention, "delete an item's features (PostgreSQL rows, Redis keys) once no impression, watch or neighbour-list growth has touched it for this long and its long-term popularity is below one full watch this long ago; at least 24h, 0 keeps every item (docs/scaling.md, Retention)")
	fs.DurationVar(&c.UserRetention, "consumer.user-retention", c.UserRetention, "delete a user's features (PostgreSQL row, Redis hash; not their events) once no event of theirs has been applied for this long: they come back as a new user; at least 24h, 0 keeps every user (docs/scaling.md, Retention)")
	fs.DurationVar(&c.DrainTimeout, "consumer.drain-timeout", c.DrainTimeout, "longest wait for the batch in flight at shutdown")
	fs.IntVar(&c.MaxInFlight, "consumer.max-in-flight", c.MaxInFlight, "most transactions applying at once, each on its own share of the users (1: one batch at a time)")
	fs.BoolVar(&c.ImpressionsOverlay, "consumer.impressions-overlay", c.ImpressionsOverlay, "write each served list's impression counters to a small overlay of the user's counters, folded into them every few lists, instead of rewriting all of them (~300 at a feed's steady state); every reader takes both; off only while a consumer of a release older than the overlay still runs (docs/rollback.md)")
	fs.StringVar(&c.ImpressionsFormat, "consumer.impressions-format", c.ImpressionsFormat, "how the users' impression counters are written: object ({\"item\":{\"count\":N,\"last_ts_ms\":T}}) or array ([\"item\",N,T,...], ~60 % of the bytes); every reader takes both; object only while a release older than this flag still reads the features (docs/rollback.md)")
	c.Features.RegisterFlags(fs, "consumer.features.")
	flagenv.Alias(fs, "consumer.group-id", "FEATURE_CONSUMER_GROUP_ID")
	flagenv.Alias(fs, "consumer.client-id", "FEATURE_CONSUMER_CLIENT_ID")
	flagenv.Alias(fs, "consumer.max-batch", "FEATURE_CONSUMER_MAX_POLL_RECORDS")
	flagenv.Alias(fs, "consumer.fetch-max-wait", "FEATURE_CONSUMER_POLL_TIMEOUT_MS:ms")
	flagenv.Alias(fs, "consumer.unready-after-failures", "FEATURE_CONSUMER_MAX_RETRIES_PER_MESSAGE")
	flagenv.Alias(fs, "consumer.retry-backoff", "FEATURE_CONSUMER_STARTUP_BACKOFF_SEC:s")
	flagenv.Alias(fs, "consumer.drain-timeout", "FEATURE_CONSUMER_SHUTDOWN_TIMEOUT_SEC:s")
	flagenv.Alias(fs, "consumer.features.history-size", "STREAM_FEATURE_HISTORY_SIZE")
}

// Validate reports every invalid setting, naming the flag.
func (c *Config) Validate() error {
	var p flagenv.Problems
	if c.GroupID == "" {
		p.Addf("--consumer.group-id must not be empty")
	}
	p.IntBetween("consumer.max-batch", c.MaxBatch, 1, 100000)
	p.DurationBetween("consumer.max-event-future", c.MaxEventFuture, time.Minute, 365*24*time.Hour)
	p.DurationBetween("consumer.linger", c.Linger, 0, 10*time.Second)
	p.DurationBetween("consumer.impression-linger", c.ImpressionLinger, 0, 10*time.Second)
	p.DurationAtLeast("consumer.fetch-max-wait", c.FetchMaxWait, time.Millisecond)
	p.DurationBetween("consumer.commit-interval", c.CommitInterval, 0, time.Minute)
	p.DurationPositive("consumer.retry-backoff", c.RetryBackoff)
	if c.RetryMaxBackoff < c.RetryBackoff {
		p.Addf("--consumer.retry-max-backoff must be >= --consumer.retry-backoff (%s), got %s", c.RetryBackoff, c.RetryMaxBackoff)
	}
	if c.UnreadyAfter < 1 {
		p.Addf("--consumer.unready-after-failures must be >= 1, got %d", c.UnreadyAfter)
	}
	p.DurationAtLeast("consumer.heal-interval", c.HealInterval, 10*time.Millisecond)
	p.DurationAtLeast("consumer.dedup-retention", c.DedupRetention, time.Hour)
	if c.ItemRetention != 0 && c.ItemRetention < 24*time.Hour {
		p.Addf("--consumer.item-retention must be 0 (keep every item) or at least 24h, got %s", c.ItemRetention)
	}
	if c.UserRetention != 0 && c.UserRetention < 24*time.Hour {
		p.Addf("--consumer.user-retention must be 0 (keep every user) or at least 24h, got %s", c.UserRetention)
	}
	p.IntBetween("consumer.max-in-flight", c.MaxInFlight, 1, 16)
	p.DurationPositive("consumer.drain-timeout", c.DrainTimeout)
	if _, err := featurestore.ParseImpressionsFormat(c.ImpressionsFormat); err != nil {
		p.Addf("--consumer.impressions-format: %v", err)
	}
	p.Add(c.Features.Validate())
	return p.Err()
}
