// Package infra opens the shared clients a process needs (PostgreSQL pool, Redis client,
// Kafka factories) for exactly the modules it runs, hands each module its scoped handles, and
// closes them last, in reverse order of opening.
package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"github.com/spf13/pflag"

	"recsys/pkg/kafka"
	"recsys/pkg/migrate"
	"recsys/pkg/postgres"
	"recsys/pkg/redis"
)

// Need is a set of shared clients a module uses.
type Need uint8

// The clients a module can need.
const (
	Postgres Need = 1 << iota
	Redis
	Kafka
)

// Has reports whether n includes all of o.
func (n Need) Has(o Need) bool { return n&o == o }

func (n Need) String() string {
	var s []string
	for _, x := range []struct {
		n    Need
		name string
	}{{Postgres, "postgres"}, {Redis, "redis"}, {Kafka, "kafka"}} {
		if n.Has(x.n) {
			s = append(s, x.name)
		}
	}
	if len(s) == 0 {
		return "-"
	}
	return fmt.Sprint(s)
}

// Config gathers the settings of every shared client.
type Config struct {
	PG    postgres.Config
	Redis redis.Config
	Kafka kafka.Config
	// OutboxLanes is the lane count (pkg/outbox.Lane) of the event_outbox batch rows. It is
	// shared config rather than a module's because every writer of event_outbox (ingest and
	// the /reco autolog) must use the same count, or one user's events could sit in two order
	// units.
	//
	// Fewer lanes mean fewer, fuller rows: the relay's claim, its publish and its delete, and
	// the broker's produce requests are paid per row. The /reco autolog (a group commit of
	// ~40 lists, one user each) wrote ~28 rows per commit over 32 lanes and ~8 over 8:
	// PostgreSQL 97-108 → 83-88 µs and the machine 340-364 → 310-320 µs per list, 5,490-
	// 5,953 → 6,187-6,389 lists/s (docs/performance-log.md, session 15). Lanes bound the relay's
	// parallelism (one claim in flight per lane): 8 still drain 294,000-317,000 messages/s
	// (32: 361,000-423,000), and 4 or 2 saved nothing more.
	OutboxLanes int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{PG: postgres.DefaultConfig(), Redis: redis.DefaultConfig(), Kafka: kafka.DefaultConfig(), OutboxLanes: 8}
}

// RegisterFlags adds the flags of the clients in need.
func (c *Config) RegisterFlags(fs *pflag.FlagSet, need Need) {
	if need.Has(Postgres) {
		c.PG.RegisterFlags(fs)
	}
	if need.Has(Redis) {
		c.Redis.RegisterFlags(fs)
	}
	if need.Has(Kafka) {
		c.Kafka.RegisterFlags(fs)
	}
	if need&(Kafka|Postgres) != 0 {
		c.Kafka.RegisterTopicFlags(fs)
	}
	if need.Has(Postgres) {
		fs.IntVar(&c.OutboxLanes, "ingest.outbox-lanes", c.OutboxLanes, "lanes of the event_outbox batch rows: a group commit writes at most this many outbox rows per topic, a user's events always in the same lane; used by every writer (ingest, reco autolog); change it only with a drained outbox")
	}
}

// Validate checks the settings of the clients in need only, so a relay pod is not asked for a
// Redis URL.
func (c Config) Validate(need Need) error {
	var errs []error
	if need.Has(Postgres) {
		errs = append(errs, c.PG.Validate())
		if c.OutboxLanes < 1 || c.OutboxLanes > 1024 {
			errs = append(errs, fmt.Errorf("--ingest.outbox-lanes must be between 1 and 1024, got %d", c.OutboxLanes))
		}
	}
	if need.Has(Redis) {
		errs = append(errs, c.Redis.Validate())
	}
	if need.Has(Kafka) {
		errs = append(errs, c.Kafka.Validate())
	}
	return errors.Join(errs...)
}

// Deps is what a module's constructor receives. Handles the module did not declare in Needs
// are nil on purpose: a missing Needs bit fails the first test instead of opening a silent
// extra connection in production.
type Deps struct {
	Name    string
	Log     *slog.Logger
	Metrics *metrics.Set
	PG      *pgxpool.Pool
	Redis   rueidis.Client
	Kafka   *kafka.Client
	Config  Config
}

// Infra is the set of opened clients.
type Infra struct {
	cfg     Config
	need    Need
	log     *slog.Logger
	PG      *pgxpool.Pool
	Redis   rueidis.Client
	Kafka   *kafka.Client
	closers []func()
	sets    []*metrics.Set

	mu      sync.Mutex
	cached  map[string]checkResult
	running map[string]chan struct{} // checks in flight (cachedCheck), closed when done
	schema  Schema
}

// Schema is the applied schema version as the last readiness check saw it.
type Schema struct {
	Version uint `json:"version"`
	Dirty   bool `json:"dirty"`
	Binary  uint `json:"binary_expects"`
}

// Ahead reports whether the schema is newer than this binary: normal during a rollout or
// after a rollback, and, when dirty, the next release's failed migration. Neither fails
// readiness; both are shown in /healthz.
func (s Schema) Ahead() bool { return s.Version > s.Binary }

type checkResult struct {
	err error
	at  time.Time
}

// Open opens the clients in need. Nothing here waits for a server to be up: pools and
// clients reconnect by themselves, and readiness reports what is down meanwhile.
func Open(ctx context.Context, cfg Config, need Need, log *slog.Logger) (*Infra, error) {
	in := &Infra{cfg: cfg, need: need, log: log, cached: map[string]checkResult{}}
	warnUnverified(log, cfg, need)
	if need.Has(Postgres) {
		pool, err := postgres.Open(ctx, cfg.PG)
		if err != nil {
			return nil, err
		}
		in.PG = pool
		in.closers = append(in.closers, pool.Close)
	}
	if need.Has(Redis) {
		cl, err := redis.Open(cfg.Redis)
		if err != nil {
			in.Close()
			return nil, err
		}
		in.Redis = cl
		in.closers = append(in.closers, cl.Close)
	}
	if need.Has(Kafka) {
		in.Kafka = kafka.New(cfg.Kafka)
	}
	return in, nil
}

// Deps returns the handles for one module with its scoped logger and metrics set.
func (in *Infra) Deps(name string, need Need) Deps {
	set := metrics.NewSet()
	metrics.RegisterSet(set)
	in.sets = append(in.sets, set)
	d := Deps{Name: name, Log: in.log.With("module", name), Metrics: set, Config: in.cfg}
	if need.Has(Postgres) {
		d.PG = in.PG
	}
	if need.Has(Redis) {
		d.Redis = in.Redis
	}
	if need.Has(Kafka) {
		d.Kafka = in.Kafka
	}
	return d
}

// Close closes the clients in reverse order of opening and unregisters module metrics.
func (in *Infra) Close() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
	in.closers = nil
	for _, s := range in.sets {
		metrics.UnregisterSet(s, true)
	}
	in.sets = nil
}

// checkTTL caches check results so a probe storm does not become a query storm.
const checkTTL = 2 * time.Second

// CheckBudget bounds how long Checks, and so a health probe, waits on the dependencies all
// together: a hung PostgreSQL (accepting, never answering) must not hold /readyz past the
// probes' timeouts, or every pod leaves the Service while its degraded mode still serves.
// The probes' timeoutSeconds in deploy/k8s keep a margin above it (test/deploy checks it).
const CheckBudget = time.Second

// Checks pings each opened client (at most once per checkTTL) and reports "ok" or the error.
// With PostgreSQL up, "schema" requires the schema to be at the binary's version. The clients
// are checked concurrently and the whole call returns within CheckBudget: a check that has not
// answered by then is reported as such.
func (in *Infra) Checks(ctx context.Context) map[string]error {
	ctx, cancel := context.WithTimeout(ctx, CheckBudget)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	var checks []func(chan<- result)
	if in.PG != nil {
		checks = append(checks, func(out chan<- result) {
			err := in.cachedCheck(ctx, "postgres", func(ctx context.Context) error {
				// A standby answers a ping as well as the primary does, and refuses every
				// write: it is down for every role but /reco's reads.
				var readOnly string
				if err := in.PG.QueryRow(ctx, "SELECT current_setting('transaction_read_only')").Scan(&readOnly); err != nil {
					return fmt.Errorf("postgres ping: %w", err)
				}
				if readOnly == "on" {
					return errors.New("postgres is read-only (a standby, or default_transaction_read_only): nothing can be written")
				}
				return nil
			})
			out <- result{"postgres", err}
			if err == nil {
				out <- result{"schema", in.cachedCheck(ctx, "schema", in.checkSchema)}
			}
		})
	}
	if in.Redis != nil {
		checks = append(checks, func(out chan<- result) {
			out <- result{"redis", in.cachedCheck(ctx, "redis", func(ctx context.Context) error {
				return redis.Ping(ctx, in.Redis, CheckBudget)
			})}
		})
	}
	if in.Kafka != nil {
		checks = append(checks, func(out chan<- result) {
			out <- result{"kafka", in.cachedCheck(ctx, "kafka", func(ctx context.Context) error {
				return in.Kafka.Ping(ctx, CheckBudget)
			})}
		})
	}
	// Buffered for every result, so a check finishing after the budget never blocks.
	results := make(chan result, 2*len(checks))
	finished := make(chan struct{}, len(checks))
	for _, c := range checks {
		go func() {
			c(results)
			finished <- struct{}{}
		}()
	}
	out := map[string]error{}
	for pending := len(checks); pending > 0; {
		select {
		case r := <-results:
			out[r.name] = r.err
		case <-finished:
			pending--
		case <-ctx.Done():
			pending = 0
		}
	}
	// Drain what arrived together with the last completion or the deadline.
drain:
	for {
		select {
		case r := <-results:
			out[r.name] = r.err
		default:
			break drain
		}
	}
	timeout := fmt.Errorf("no answer within %s", CheckBudget)
	for _, c := range []struct {
		name   string
		opened bool
	}{{"postgres", in.PG != nil}, {"redis", in.Redis != nil}, {"kafka", in.Kafka != nil}} {
		if _, ok := out[c.name]; c.opened && !ok {
			out[c.name] = timeout
		}
	}
	// The schema is checked only once PostgreSQL answered.
	if _, ok := out["schema"]; in.PG != nil && !ok && out["postgres"] == nil {
		out["schema"] = timeout
	}
	return out
}

func (in *Infra) checkSchema(ctx context.Context) error {
	v, dirty, err := migrate.Status(ctx, in.PG)
	if err != nil {
		return err
	}
	now := Schema{Version: v, Dirty: dirty, Binary: migrate.Latest()}
	in.mu.Lock()
	changed := now != in.schema
	in.schema = now
	in.mu.Unlock()
	if changed && now.Ahead() {
		if dirty {
			in.log.Warn("schema is ahead of this binary and dirty: a newer release's migration failed; this binary's schema is intact and it stays ready",
				"version", v, "dirty", dirty, "binary_expects", now.Binary)
		} else {
			in.log.Info("schema is ahead of this binary", "version", v, "binary_expects", now.Binary)
		}
	}
	if err := migrate.Judge(v, dirty); err != nil {
		return err
	}
	// A schema ahead of this binary may have been changed in a way it cannot run on.
	err = migrate.Floor(ctx, in.PG, v, now.Binary)
	var old *migrate.TooOldError
	if changed && errors.As(err, &old) {
		in.log.Error("the schema refuses this binary: unready until another image runs or the schema is reverted", "err", err.Error())
	}
	return err
}

// Schema returns the schema version the last check saw (zero before the first one).
func (in *Infra) Schema() Schema {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.schema
}

// cachedCheck runs fn at most once per checkTTL, however many probes ask at once: those that
// find it running wait for its outcome (within their ctx), so a storm of probes, which need
// no API key, is not a storm of pings and dials at every expiry. fn runs under the budget,
// not the asking probe's context: a probe whose client went away would otherwise fail the
// check, and its failure would be every probe's answer for checkTTL.
func (in *Infra) cachedCheck(ctx context.Context, name string, fn func(context.Context) error) error {
	for {
		in.mu.Lock()
		c, ok := in.cached[name]
		if ok && time.Since(c.at) < checkTTL {
			in.mu.Unlock()
			return c.err
		}
		if done, busy := in.running[name]; busy {
			in.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return fmt.Errorf("%s check: %w", name, ctx.Err())
			}
		}
		done := make(chan struct{})
		if in.running == nil {
			in.running = map[string]chan struct{}{}
		}
		in.running[name] = done
		in.mu.Unlock()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CheckBudget)
		err := fn(cctx)
		cancel()
		in.mu.Lock()
		in.cached[name] = checkResult{err: err, at: time.Now()}
		delete(in.running, name)
		close(done)
		in.mu.Unlock()
		return err
	}
}

// AgreedSettings are the settings of c every pod of one deployment must share
// (postgres.Agree): the topics events travel on and, for a role that reads or writes the
// Redis feature copy (redis), the key prefix the copy lives under.
func AgreedSettings(c Config, redis bool) []postgres.Setting {
	s := []postgres.Setting{{Flag: "kafka.topic-impressions", Value: c.Kafka.TopicImpressions},
		{Flag: "kafka.topic-watches", Value: c.Kafka.TopicWatches}}
	if redis {
		s = append(s, KeyPrefixSetting(c))
	}
	return s
}

// KeyPrefixSetting is the Redis key prefix as a setting every pod must share: the commands
// that write the copy by themselves (`recsys users forget`, `recsys features rebuild`) check it
// alone, since they may run with the topics' defaults.
func KeyPrefixSetting(c Config) postgres.Setting {
	return postgres.Setting{Flag: "redis.key-prefix", Value: c.Redis.KeyPrefix}
}
