package ingest

import (
	"errors"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/events"
	"recsys/pkg/flagenv"
	writer "recsys/pkg/ingest"
	"recsys/pkg/kpi"
)

// Config of the ingest module (flags ingest.*).
type Config struct {
	MaxEventFuture     time.Duration
	MaxEventAge        time.Duration
	MaxBatchSize       int
	MaxImpressionItems int
	// MaxEventBytes bounds one event's encoded outbox frame (see pkg/ingest.Config).
	MaxEventBytes int
	// MissingEventID says which id an event sent without one gets: MissingIDContent or
	// MissingIDRandom (see events.Limits.RandomMissingIDs).
	MissingEventID string

	WatchFeatureUpdateMode string
	OutboxMaxAttempts      int

	WriteTimeout         time.Duration
	GroupCommitMaxWait   time.Duration
	GroupCommitMaxEvents int
	// GroupCommitCopyMinEvents is the group size from which COPY replaces the unnest
	// statement (see pkg/ingest).
	GroupCommitCopyMinEvents int
	GroupCommitWorkers       int
	QueueSize                int

	RawRetention       time.Duration
	DedupRetention     time.Duration
	RetentionInterval  time.Duration
	RetentionBatchSize int

	// SLATargetP95Ms and SLATargetP99Ms are what /contract serves as the latency targets: the
	// binary sets them from the reco module's settings (the targets /metrics/reco judges
	// against), so they are not flags of their own. Default: the contract's.
	SLATargetP95Ms, SLATargetP99Ms float64
}

// NewConfig returns the defaults: the contract's limits, 1 s write timeout, 30 days of raw
// events and 31 days of dedup keys.
func NewConfig() *Config {
	return &Config{
		MaxEventFuture:           events.DefaultMaxFutureMs * time.Millisecond,
		MaxEventAge:              events.DefaultMaxAgeMs * time.Millisecond,
		MaxBatchSize:             events.DefaultMaxBatchSize,
		MaxImpressionItems:       events.DefaultMaxItems,
		MaxEventBytes:            writer.DefaultMaxEventBytes,
		MissingEventID:           MissingIDContent,
		SLATargetP95Ms:           float64(kpi.ContractSLA.RecoP95Ms),
		SLATargetP99Ms:           float64(kpi.ContractSLA.RecoP99Ms),
		WatchFeatureUpdateMode:   "async_consumer",
		OutboxMaxAttempts:        25,
		WriteTimeout:             time.Second,
		GroupCommitMaxWait:       time.Millisecond,
		GroupCommitMaxEvents:     2000,
		GroupCommitCopyMinEvents: 256,
		GroupCommitWorkers:       2,
		QueueSize:                4096,
		RawRetention:             30 * 24 * time.Hour,
		DedupRetention:           31 * 24 * time.Hour,
		RetentionInterval:        time.Minute,
		RetentionBatchSize:       5000,
	}
}

// RegisterFlags adds the ingest.* flags with the original service's environment names as
// aliases.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.MaxEventFuture, "ingest.max-event-future", c.MaxEventFuture, "how far ahead of the server clock an event timestamp may be")
	fs.DurationVar(&c.MaxEventAge, "ingest.max-event-age", c.MaxEventAge, "oldest event timestamp accepted, relative to the server clock")
	fs.IntVar(&c.MaxBatchSize, "ingest.max-batch-size", c.MaxBatchSize, "most events in one POST /log/batch")
	fs.IntVar(&c.MaxImpressionItems, "ingest.max-impression-items", c.MaxImpressionItems, "most items in one impression")
	fs.IntVar(&c.MaxEventBytes, "ingest.max-event-bytes", c.MaxEventBytes, "largest encoded event accepted (its Kafka message but for the headers); a larger one is refused with 422. Keep it well below --relay.max-batch-bytes, the largest message the relay can publish, or an accepted event is never published")
	fs.StringVar(&c.MissingEventID, "ingest.missing-event-id", c.MissingEventID, "the event_id of an event sent without one: \"content\" derives it from the event's fields (user, session, request, time, items or watch fields, context), so a client's resend is answered \"duplicate\" and stored once; \"random\" generates a fresh id each time, as the original service did (a resend is stored again)")
	fs.StringVar(&c.WatchFeatureUpdateMode, "ingest.watch-feature-update-mode", c.WatchFeatureUpdateMode, "feature_update_mode echoed in /log/watch and /log/batch responses")
	fs.IntVar(&c.OutboxMaxAttempts, "ingest.outbox-max-attempts", c.OutboxMaxAttempts, "max_attempts stored on each new event_outbox row (one per topic and lane of a group commit)")
	fs.DurationVar(&c.WriteTimeout, "ingest.write-timeout", c.WriteTimeout, "longest a request waits for a writer to take its events, and longest their transaction may take (pool wait included): a request not taken in time answers 503 with nothing written; one taken waits for its transaction's outcome, so a request takes at most about twice this (which must stay below --http.write-timeout: a later answer never reaches its client)")
	fs.DurationVar(&c.GroupCommitMaxWait, "ingest.group-commit-max-wait", c.GroupCommitMaxWait, "longest a writer waits to merge concurrent requests into one transaction (0: merge only what is already queued)")
	fs.IntVar(&c.GroupCommitMaxEvents, "ingest.group-commit-max-events", c.GroupCommitMaxEvents, "most events merged into one transaction (a larger request is never split)")
	fs.IntVar(&c.GroupCommitCopyMinEvents, "ingest.group-commit-copy-min-events", c.GroupCommitCopyMinEvents, "events in a transaction from which the raw and outbox rows are written with COPY instead of one INSERT statement (fewer round trips below, cheaper rows above)")
	fs.IntVar(&c.GroupCommitWorkers, "ingest.group-commit-workers", c.GroupCommitWorkers, "transactions in flight at once")
	fs.IntVar(&c.QueueSize, "ingest.queue-size", c.QueueSize, "requests waiting for a writer before new requests wait for room (bounded by --ingest.write-timeout)")
	fs.DurationVar(&c.RawRetention, "ingest.raw-retention", c.RawRetention, "age (by insert time) after which raw impressions, watches and legacy events are deleted; 0 keeps them")
	fs.DurationVar(&c.DedupRetention, "ingest.dedup-retention", c.DedupRetention, "age after which event_id dedup keys are deleted; 0 keeps them; must exceed --ingest.max-event-age + --ingest.max-event-future")
	fs.DurationVar(&c.RetentionInterval, "ingest.retention-interval", c.RetentionInterval, "pause between retention passes")
	fs.IntVar(&c.RetentionBatchSize, "ingest.retention-batch-size", c.RetentionBatchSize, "rows deleted per retention statement")
	flagenv.Alias(fs, "ingest.max-event-future", "CONTRACT_MAX_EVENT_FUTURE_MS:ms")
	flagenv.Alias(fs, "ingest.max-event-age", "CONTRACT_MAX_EVENT_AGE_MS:ms")
	flagenv.Alias(fs, "ingest.max-batch-size", "CONTRACT_MAX_BATCH_SIZE")
	flagenv.Alias(fs, "ingest.watch-feature-update-mode", "WATCH_FEATURE_UPDATE_MODE")
	flagenv.Alias(fs, "ingest.outbox-max-attempts", "OUTBOX_MAX_ATTEMPTS")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var p flagenv.Problems
	p.DurationPositive("ingest.max-event-future", c.MaxEventFuture)
	p.DurationPositive("ingest.max-event-age", c.MaxEventAge)
	p.IntBetween("ingest.max-batch-size", c.MaxBatchSize, 1, 100_000)
	p.IntBetween("ingest.max-impression-items", c.MaxImpressionItems, 1, 100_000)
	p.IntBetween("ingest.max-event-bytes", c.MaxEventBytes, 1024, 1<<30)
	if c.MissingEventID != MissingIDContent && c.MissingEventID != MissingIDRandom {
		p.Addf("--ingest.missing-event-id must be %q or %q, got %q", MissingIDContent, MissingIDRandom, c.MissingEventID)
	}
	if c.WatchFeatureUpdateMode == "" {
		p.Add(errors.New("--ingest.watch-feature-update-mode must not be empty (default async_consumer)"))
	}
	p.IntBetween("ingest.outbox-max-attempts", c.OutboxMaxAttempts, 1, 1_000_000)
	p.DurationPositive("ingest.write-timeout", c.WriteTimeout)
	if c.GroupCommitMaxWait < 0 || c.GroupCommitMaxWait > time.Second {
		p.Addf("--ingest.group-commit-max-wait must be between 0 and 1s, got %s", c.GroupCommitMaxWait)
	}
	p.IntBetween("ingest.group-commit-max-events", c.GroupCommitMaxEvents, 1, 1_000_000)
	p.IntBetween("ingest.group-commit-copy-min-events", c.GroupCommitCopyMinEvents, 1, 10_000_000)
	p.IntBetween("ingest.group-commit-workers", c.GroupCommitWorkers, 1, 256)
	p.IntBetween("ingest.queue-size", c.QueueSize, 1, 1_000_000)
	if c.RawRetention < 0 {
		p.Addf("--ingest.raw-retention must be >= 0 (0 disables), got %s", c.RawRetention)
	}
	if min := c.MaxEventAge + c.MaxEventFuture; c.DedupRetention != 0 && c.DedupRetention <= min {
		// A shorter window would forget the key of an event the API still accepts, and a
		// resend would be stored twice.
		p.Addf("--ingest.dedup-retention must be 0 (keep) or greater than --ingest.max-event-age + --ingest.max-event-future (%s), got %s", min, c.DedupRetention)
	}
	p.DurationPositive("ingest.retention-interval", c.RetentionInterval)
	p.IntBetween("ingest.retention-batch-size", c.RetentionBatchSize, 1, 1_000_000)
	return p.Err()
}

func (c *Config) limits() events.Limits {
	return events.Limits{MaxFutureMs: c.MaxEventFuture.Milliseconds(), MaxAgeMs: c.MaxEventAge.Milliseconds(),
		MaxBatchSize: c.MaxBatchSize, MaxItems: c.MaxImpressionItems, RandomMissingIDs: c.MissingEventID == MissingIDRandom}
}

// The values of --ingest.missing-event-id.
const (
	MissingIDContent = "content"
	MissingIDRandom  = "random"
)
