package relay

import (
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config of the relay role (flags relay.*).
type Config struct {
	BatchSize    int
	BatchEvents  int
	Workers      int
	PollInterval time.Duration
	Linger       time.Duration
	// ImpressionLinger is the pace of claims while the commits announced carry impressions
	// only (outbox.NotifyImpressionsOnly); a commit with anything else hurries the next claim
	// to --relay.linger.
	ImpressionLinger time.Duration
	Listen           bool
	Lease            time.Duration
	RetryBase        time.Duration
	RetryMax         time.Duration
	PublishTimeout   time.Duration
	MaxBatchBytes    int64
	ProbeInterval    time.Duration
	// UnreadyAfter claims failed in a row, or as many attempts to record batch outcomes, make
	// /readyz fail (the workers keep claiming and recording).
	UnreadyAfter int

	StartupBackoff    time.Duration
	StartupMaxRetries int
	ShutdownTimeout   time.Duration

	ReapInterval      time.Duration
	Retention         time.Duration
	RetentionBatch    int
	RetentionInterval time.Duration

	SnapshotInterval   time.Duration
	SnapshotCountLimit int
}

// NewConfig returns the defaults.
func NewConfig() *Config {
	return &Config{
		BatchSize:          1000,
		BatchEvents:        10_000,
		Workers:            2,
		PollInterval:       500 * time.Millisecond,
		Linger:             4 * time.Millisecond,
		ImpressionLinger:   20 * time.Millisecond,
		Listen:             true,
		Lease:              30 * time.Second,
		RetryBase:          time.Second,
		RetryMax:           60 * time.Second,
		PublishTimeout:     10 * time.Second,
		MaxBatchBytes:      1 << 20,
		ProbeInterval:      time.Second,
		UnreadyAfter:       5,
		StartupBackoff:     2 * time.Second,
		StartupMaxRetries:  0,
		ShutdownTimeout:    15 * time.Second,
		ReapInterval:       time.Second,
		Retention:          0,
		RetentionBatch:     5000,
		RetentionInterval:  30 * time.Second,
		SnapshotInterval:   5 * time.Second,
		SnapshotCountLimit: 100_000,
	}
}

// RegisterFlags adds the relay.* flags and the original service's variable names.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.BatchSize, "relay.batch-size", c.BatchSize, "most outbox rows claimed and published as one batch")
	fs.IntVar(&c.BatchEvents, "relay.batch-events", c.BatchEvents, "most events (Kafka messages) claimed and published as one batch; a batch row carries many events, and a row larger than this still goes out alone")
	fs.IntVar(&c.Workers, "relay.workers", c.Workers, "batches published at once per relay process (each worker claims and publishes its own batch, and records the previous one's outcome meanwhile)")
	fs.DurationVar(&c.PollInterval, "relay.poll-interval", c.PollInterval, "idle wait between claims when no NOTIFY arrives; a lost notification costs at most this")
	fs.DurationVar(&c.Linger, "relay.linger", c.Linger, "least time between the starts of two claims while there is no backlog, so one claim carries the commits of that window: at low volume each claim costs PostgreSQL about 0.5 ms of CPU and each publish a produce request, whatever the rows in it; adds at most this to commit-to-ack latency; 0 claims at every wake-up")
	fs.DurationVar(&c.ImpressionLinger, "relay.impression-linger", c.ImpressionLinger, "least time between the starts of two claims while the commits announced carry impressions only (a feed's auto-logged lists): fewer, larger claims, publishes and consumer fetches; adds at most this to an impression's commit-to-ack latency, while a commit with a watch hurries the next claim to --relay.linger; below --relay.linger it is --relay.linger")
	fs.BoolVar(&c.Listen, "relay.listen", c.Listen, "LISTEN on the recsys_outbox channel so a commit wakes the relay at once (polling stays as the fallback)")
	fs.DurationVar(&c.Lease, "relay.lease", c.Lease, "lease on claimed rows; renewed every third of it while a batch is published and until its outcome is recorded, taken over by another relay after it expires")
	fs.DurationVar(&c.RetryBase, "relay.retry-base", c.RetryBase, "backoff after a row's first failed attempt; doubles per attempt, with jitter")
	fs.DurationVar(&c.RetryMax, "relay.retry-max", c.RetryMax, "longest backoff between two attempts of a row")
	fs.DurationVar(&c.PublishTimeout, "relay.publish-timeout", c.PublishTimeout, "longest wait for Kafka to ack one batch; the batch is retried later when it passes")
	fs.Int64Var(&c.MaxBatchBytes, "relay.max-batch-bytes", c.MaxBatchBytes, "largest record batch per partition, and so the largest message; at most the topics' max.message.bytes (the relay checks at start and refuses to run above it), and well above the API's --ingest.max-event-bytes (a larger event goes dead on its own)")
	fs.DurationVar(&c.ProbeInterval, "relay.probe-interval", c.ProbeInterval, "while Kafka is unreachable, how often the relay probes it before claiming again (no attempts are spent meanwhile)")
	fs.IntVar(&c.UnreadyAfter, "relay.unready-after-failures", c.UnreadyAfter, "claims failed in a row, or attempts to record batch outcomes failed in a row (PostgreSQL refusing or timing out the relay's writes: a full disk, a revoked permission), before /readyz fails; claims go on every --relay.poll-interval per worker, recordings are retried, and the first claim (or recording) that succeeds makes the relay ready again, as does no recording failing for --relay.lease + --relay.retry-max + 1m")
	fs.DurationVar(&c.StartupBackoff, "relay.startup-backoff", c.StartupBackoff, "wait before retrying topic provisioning at start, times the attempt number (at most 30s)")
	fs.IntVar(&c.StartupMaxRetries, "relay.startup-max-retries", c.StartupMaxRetries, "topic provisioning attempts before the relay gives up and the process exits; 0 retries forever")
	fs.DurationVar(&c.ShutdownTimeout, "relay.shutdown-timeout", c.ShutdownTimeout, "longest wait for in-flight batches at shutdown; unfinished rows are taken over after their lease expires")
	fs.DurationVar(&c.ReapInterval, "relay.reap-interval", c.ReapInterval, "how often expired leases are returned to pending (or dead)")
	fs.DurationVar(&c.Retention, "relay.retention", c.Retention, "how long rows Kafka acked are kept as 'published' (for inspection) before the retention loop deletes them; 0 deletes them when the ack is recorded, the cheapest path")
	fs.IntVar(&c.RetentionBatch, "relay.retention-batch", c.RetentionBatch, "rows deleted per retention statement")
	fs.DurationVar(&c.RetentionInterval, "relay.retention-interval", c.RetentionInterval, "pause between retention passes")
	fs.DurationVar(&c.SnapshotInterval, "relay.snapshot-interval", c.SnapshotInterval, "how often the backlog snapshot (gauges, /healthz) is refreshed")
	fs.IntVar(&c.SnapshotCountLimit, "relay.snapshot-count-limit", c.SnapshotCountLimit, "backlog counts stop at this value (reported as capped) so a huge backlog is never counted in full")
	flagenv.Alias(fs, "relay.batch-size", "OUTBOX_RELAY_BATCH_SIZE")
	flagenv.Alias(fs, "relay.poll-interval", "OUTBOX_RELAY_POLL_INTERVAL_MS:ms")
	flagenv.Alias(fs, "relay.lease", "OUTBOX_RELAY_LEASE_SEC:s")
	flagenv.Alias(fs, "relay.retry-base", "OUTBOX_RELAY_BASE_RETRY_SEC:s")
	flagenv.Alias(fs, "relay.retry-max", "OUTBOX_RELAY_MAX_RETRY_SEC:s")
	flagenv.Alias(fs, "relay.publish-timeout", "OUTBOX_RELAY_PUBLISH_TIMEOUT_SEC:s")
	flagenv.Alias(fs, "relay.startup-backoff", "OUTBOX_RELAY_STARTUP_BACKOFF_SEC:s")
	flagenv.Alias(fs, "relay.startup-max-retries", "OUTBOX_RELAY_STARTUP_MAX_RETRIES")
	flagenv.Alias(fs, "relay.shutdown-timeout", "OUTBOX_RELAY_SHUTDOWN_TIMEOUT_SEC:s")
}

// Validate reports every invalid setting, naming the flag.
func (c *Config) Validate() error {
	var p flagenv.Problems
	p.IntBetween("relay.batch-size", c.BatchSize, 1, 10_000)
	p.IntBetween("relay.batch-events", c.BatchEvents, 1, 1_000_000)
	p.IntBetween("relay.workers", c.Workers, 1, 64)
	p.IntBetween("relay.unready-after-failures", c.UnreadyAfter, 1, 1_000_000)
	p.IntBetween("relay.startup-max-retries", c.StartupMaxRetries, 0, 1_000_000)
	p.IntBetween("relay.retention-batch", c.RetentionBatch, 1, 100_000)
	p.IntBetween("relay.snapshot-count-limit", c.SnapshotCountLimit, 1, 100_000_000)
	p.DurationAtLeast("relay.poll-interval", c.PollInterval, 10*time.Millisecond)
	if c.Linger < 0 || c.Linger > time.Second {
		p.Addf("--relay.linger must be between 0 and 1s, got %s", c.Linger)
	}
	if c.ImpressionLinger < 0 || c.ImpressionLinger > time.Second {
		p.Addf("--relay.impression-linger must be between 0 and 1s, got %s", c.ImpressionLinger)
	}
	p.DurationAtLeast("relay.lease", c.Lease, time.Second)
	p.DurationAtLeast("relay.retry-base", c.RetryBase, time.Millisecond)
	p.DurationAtLeast("relay.publish-timeout", c.PublishTimeout, 10*time.Millisecond)
	p.DurationAtLeast("relay.probe-interval", c.ProbeInterval, 10*time.Millisecond)
	p.DurationAtLeast("relay.startup-backoff", c.StartupBackoff, time.Millisecond)
	p.DurationAtLeast("relay.shutdown-timeout", c.ShutdownTimeout, time.Millisecond)
	p.DurationAtLeast("relay.reap-interval", c.ReapInterval, 10*time.Millisecond)
	p.DurationAtLeast("relay.retention", c.Retention, 0)
	p.DurationAtLeast("relay.retention-interval", c.RetentionInterval, 10*time.Millisecond)
	p.DurationAtLeast("relay.snapshot-interval", c.SnapshotInterval, 10*time.Millisecond)
	if c.RetryMax < c.RetryBase {
		p.Addf("--relay.retry-max (%s) must be >= --relay.retry-base (%s)", c.RetryMax, c.RetryBase)
	}
	if c.MaxBatchBytes < 1024 {
		p.Addf("--relay.max-batch-bytes must be >= 1024, got %d", c.MaxBatchBytes)
	}
	return p.Err()
}
