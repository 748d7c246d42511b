// Package postgres opens the process' pgx v5 pool with the session settings every role relies
// on: a statement timeout and a lock timeout, so no query can hang a request or a worker.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config holds the pool settings (flags pg.*).
type Config struct {
	DSN              string
	MaxConns         int
	MinConns         int
	ConnectTimeout   time.Duration
	AcquireTimeout   time.Duration
	StatementTimeout time.Duration
	LockTimeout      time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxConns: 20, MinConns: 1, ConnectTimeout: 2 * time.Second, AcquireTimeout: time.Second,
		StatementTimeout: 5 * time.Second, LockTimeout: time.Second}
}

// RegisterFlags adds the pg.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.DSN, "pg.dsn", c.DSN, "PostgreSQL URL, e.g. postgres://user:pass@host:5432/db?sslmode=disable (secret)")
	fs.IntVar(&c.MaxConns, "pg.max-conns", c.MaxConns, "maximum connections in the pool")
	fs.IntVar(&c.MinConns, "pg.min-conns", c.MinConns, "connections kept open when idle")
	fs.DurationVar(&c.ConnectTimeout, "pg.connect-timeout", c.ConnectTimeout, "timeout to open one connection")
	fs.DurationVar(&c.AcquireTimeout, "pg.acquire-timeout", c.AcquireTimeout, "longest wait for a pooled connection before a request answers 503")
	fs.DurationVar(&c.StatementTimeout, "pg.statement-timeout", c.StatementTimeout, "server-side statement_timeout of every session")
	fs.DurationVar(&c.LockTimeout, "pg.lock-timeout", c.LockTimeout, "server-side lock_timeout of every session")
	flagenv.Alias(fs, "pg.dsn", "DATABASE_URL")
	flagenv.Secret(fs, "pg.dsn")
	flagenv.Alias(fs, "pg.max-conns", "DB_POOL_MAX_SIZE")
	flagenv.Alias(fs, "pg.min-conns", "DB_POOL_MIN_SIZE")
	flagenv.Alias(fs, "pg.connect-timeout", "DB_CONNECT_TIMEOUT_SEC:s")
	flagenv.Alias(fs, "pg.acquire-timeout", "DB_POOL_OPEN_TIMEOUT_SEC:s")
	flagenv.Alias(fs, "pg.statement-timeout", "DB_STATEMENT_TIMEOUT_MS:ms")
	flagenv.Alias(fs, "pg.lock-timeout", "DB_LOCK_TIMEOUT_MS:ms")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("--pg.dsn (RECSYS_PG_DSN or DATABASE_URL) is required"))
	} else if _, err := pgxpool.ParseConfig(c.DSN); err != nil {
		errs = append(errs, fmt.Errorf("--pg.dsn is not a valid PostgreSQL URL: %s", flagenv.Redact(err.Error())))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("--pg.max-conns must be >= 1, got %d", c.MaxConns))
	}
	if c.MinConns < 0 || c.MinConns > c.MaxConns {
		errs = append(errs, fmt.Errorf("--pg.min-conns must be between 0 and --pg.max-conns (%d), got %d", c.MaxConns, c.MinConns))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"pg.connect-timeout", c.ConnectTimeout}, {"pg.acquire-timeout", c.AcquireTimeout}, {"pg.statement-timeout", c.StatementTimeout}, {"pg.lock-timeout", c.LockTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be > 0, got %s", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}

// Open creates the pool. It does not wait for the server: readiness reports when it is down,
// and the pool reconnects by itself when it is back.
func Open(ctx context.Context, c Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(c.DSN)
	if err != nil {
		return nil, fmt.Errorf("parse pg dsn: %s", flagenv.Redact(err.Error()))
	}
	pc.MaxConns = int32(c.MaxConns)
	pc.MinConns = int32(c.MinConns)
	pc.ConnConfig.ConnectTimeout = c.ConnectTimeout
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	pc.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(c.StatementTimeout.Milliseconds())
	pc.ConnConfig.RuntimeParams["lock_timeout"] = fmt.Sprint(c.LockTimeout.Milliseconds())
	pc.ConnConfig.RuntimeParams["application_name"] = "recsys"
	pc.HealthCheckPeriod = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open pg pool: %w", err)
	}
	return pool, nil
}
