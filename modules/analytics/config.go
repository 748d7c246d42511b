package analytics

import (
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config of the analytics module (flags analytics.*).
type Config struct {
	// AttributionWindow: a watch of the same user and item within this long after an
	// impression makes it "watched".
	AttributionWindow time.Duration
	// CommitMargin is how long after its receive time a raw row is surely committed; it must
	// exceed twice the ingest write timeout (--ingest.write-timeout, 1 s by default) and twice
	// /reco's (--reco.autolog-write-timeout, 1 s): a write waits up to its timeout for a
	// writer to take it, then up to its timeout for its transaction.
	CommitMargin time.Duration
	// RollupInterval is the pause between folds once the roll-ups are caught up.
	RollupInterval time.Duration
	// RollupStep bounds the receive-time range folded in one transaction.
	RollupStep time.Duration
	// Retention is how long roll-up rows are kept; it must cover the longest window (30 days).
	Retention time.Duration
	// QueryTimeout bounds one GET /analytics/baseline.
	QueryTimeout time.Duration
	// MaxConcurrent bounds the baselines computed at once by this process.
	MaxConcurrent int
}

// NewConfig returns the defaults.
func NewConfig() *Config {
	return &Config{AttributionWindow: 30 * time.Minute, CommitMargin: time.Minute, RollupInterval: 15 * time.Second,
		RollupStep: 6 * time.Hour, Retention: 31 * 24 * time.Hour, QueryTimeout: 10 * time.Second, MaxConcurrent: 2}
}

// RegisterFlags adds the analytics.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.AttributionWindow, "analytics.attribution-window", c.AttributionWindow, "a watch of the same user and item within this long after an impression makes it watched (changing it rebuilds the roll-ups once no process has folded them with the old value for 10 roll-up intervals)")
	fs.DurationVar(&c.CommitMargin, "analytics.commit-margin", c.CommitMargin, "time after which a received event is surely committed (must exceed twice --ingest.write-timeout and twice --reco.autolog-write-timeout: a write may wait that long for a writer and again in its transaction); the roll-up stays attribution window + this behind the clock")
	fs.DurationVar(&c.RollupInterval, "analytics.rollup-interval", c.RollupInterval, "pause between roll-up folds once caught up")
	fs.DurationVar(&c.RollupStep, "analytics.rollup-step", c.RollupStep, "most receive time folded in one roll-up transaction")
	fs.DurationVar(&c.Retention, "analytics.retention", c.Retention, "age after which roll-up rows are deleted (at least 30 days plus a bucket: the longest window)")
	fs.DurationVar(&c.QueryTimeout, "analytics.query-timeout", c.QueryTimeout, "longest GET /analytics/baseline may take before it answers 503 (must be below --http.write-timeout: a later answer never reaches its client)")
	fs.IntVar(&c.MaxConcurrent, "analytics.max-concurrent", c.MaxConcurrent, "most GET /analytics/baseline computed at once by this process, each holding a PostgreSQL connection of the pool the event writers share; beyond it a request waits for a turn within --analytics.query-timeout, then answers 503 with Retry-After")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var p flagenv.Problems
	p.DurationBetween("analytics.attribution-window", c.AttributionWindow, time.Second, 24*time.Hour)
	p.DurationBetween("analytics.commit-margin", c.CommitMargin, time.Second, time.Hour)
	p.DurationBetween("analytics.rollup-interval", c.RollupInterval, 100*time.Millisecond, time.Hour)
	p.DurationBetween("analytics.rollup-step", c.RollupStep, bucket, 24*time.Hour)
	p.DurationBetween("analytics.query-timeout", c.QueryTimeout, 100*time.Millisecond, 10*time.Minute)
	p.IntBetween("analytics.max-concurrent", c.MaxConcurrent, 1, 1024)
	if min := 30*24*time.Hour + bucket; c.Retention < min {
		p.Addf("--analytics.retention must be at least %s (the longest window plus a bucket), got %s", min, c.Retention)
	}
	return p.Err()
}

// bucket is the roll-up bucket width: the raw head of a window is at most this long.
const bucket = 5 * time.Minute

// topN is the N of CTR@N and coverage@N.
const topN = 20

func (c *Config) definitions() Definitions {
	return Definitions{AttributionWindowMs: c.AttributionWindow.Milliseconds(), BucketMs: bucket.Milliseconds(), TopN: topN}
}

func (c *Config) lag() time.Duration { return c.AttributionWindow + c.CommitMargin }

// rebuildGrace is how long roll-ups with other definitions must have gone unfolded before this
// process rebuilds them: longer than any live process with those definitions pauses between
// folds (were its interval as long as ours), so a rolling deploy does not rebuild back and forth.
func (c *Config) rebuildGrace() time.Duration { return 10 * c.RollupInterval }
