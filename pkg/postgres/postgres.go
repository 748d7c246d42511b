// Package postgres opens the process' pgx v5 pool with the session settings every role relies
// on: a statement timeout and a lock timeout, so no query can hang a request or a worker.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	fs.StringVar(&c.DSN, "pg.dsn", c.DSN, "PostgreSQL URL, e.g. postgres://user:pass@host:5432/db?sslmode=verify-full (secret; a password's '@', '/', '%' or ':' percent-encoded); without sslmode the connection tries TLS without checking the server and falls back to plain text, sslmode=disable is plain text")
	fs.IntVar(&c.MaxConns, "pg.max-conns", c.MaxConns, "maximum connections in the pool")
	fs.IntVar(&c.MinConns, "pg.min-conns", c.MinConns, "connections kept open when idle")
	fs.DurationVar(&c.ConnectTimeout, "pg.connect-timeout", c.ConnectTimeout, "timeout to open one connection")
	fs.DurationVar(&c.AcquireTimeout, "pg.acquire-timeout", c.AcquireTimeout, "longest wait of the API's event writers (/log/*, /event, /reco's autolog) for a pooled connection, within their --ingest.write-timeout / --reco.autolog-write-timeout: past it the events' requests answer 503 (autolog lists are retried); /reco's reads and the background roles are bounded by their own timeouts")
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

// DSNRequired is the error for a missing --pg.dsn: it names every way to give it, the
// files of a mounted Secret included.
const DSNRequired = "--pg.dsn is required: give the flag, RECSYS_PG_DSN or DATABASE_URL, or RECSYS_PG_DSN_FILE or DATABASE_URL_FILE naming a file that holds it"

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New(DSNRequired))
	} else if _, err := ParseDSN(c.DSN); err != nil {
		errs = append(errs, fmt.Errorf("--pg.dsn: %w", err))
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
	}{{"pg.connect-timeout", c.ConnectTimeout}, {"pg.acquire-timeout", c.AcquireTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be > 0, got %s", d.name, d.v))
		}
	}
	// Both are sent to the server in whole milliseconds, where 0 means "no timeout" and the
	// server refuses values above INT_MAX (every session would then fail, not the start).
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"pg.statement-timeout", c.StatementTimeout}, {"pg.lock-timeout", c.LockTimeout}} {
		if d.v < time.Millisecond || d.v > maxServerTimeout {
			errs = append(errs, fmt.Errorf("--%s must be between 1ms and 2147483647ms (%s): PostgreSQL takes whole milliseconds, 0 meaning no timeout; got %s", d.name, maxServerTimeout, d.v))
		}
	}
	return errors.Join(errs...)
}

// maxServerTimeout is the largest statement_timeout / lock_timeout PostgreSQL accepts.
const maxServerTimeout = math.MaxInt32 * time.Millisecond

// ParseDSN parses a PostgreSQL URL or key=value connection string. Its error never quotes the
// string: a malformed one can hide its password where no redaction finds it.
func ParseDSN(dsn string) (*pgxpool.Config, error) {
	const want = "want postgres://user:password@host:5432/db?sslmode=... or host=... user=... password=... dbname=..."
	if rawAtInUserInfo(dsn) {
		// pgx, as libpq, ends the user info at its first '@' and takes the rest of the
		// password for the host: the connection errors, in the log and in /readyz (which
		// needs no API key), then named it ("lookup <rest>@db: no such host").
		return nil, fmt.Errorf("not a valid PostgreSQL connection string: its user name or password holds a raw '@', which ends the user info early: percent-encode it as %%40 (%s)", want)
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err == nil {
		return pc, nil
	}
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return nil, fmt.Errorf("not a valid PostgreSQL connection string (%s)", want)
	}
	// pgconn's text is "cannot parse `<redacted string>`: <reason> (<cause>)"; keep the reason
	// and the cause (pgconn strips url.Parse's quoting of the string from it).
	reason := pe.Error()
	if inner := pe.Unwrap(); inner != nil {
		reason = strings.TrimSuffix(reason, " ("+inner.Error()+")") + ": " + inner.Error()
	}
	if i := strings.LastIndex(reason, "`: "); i >= 0 {
		reason = reason[i+3:]
	} else {
		reason = "malformed"
	}
	if i := strings.Index(reason, `missing "=" after `); i >= 0 {
		// The word it quotes follows an unquoted space, most often inside a password.
		reason = reason[:i] + `a word without "=": a value with a space goes in single quotes, e.g. password='a b'`
	}
	return nil, fmt.Errorf("not a valid PostgreSQL connection string: %s (%s)", flagenv.RedactText(reason), want)
}

// rawAtInUserInfo reports a postgres:// URL whose host, as pgx reads it (after the first '@'
// of the authority, up to a '/' or '?'), holds an '@': the user info held an unencoded one.
func rawAtInUserInfo(dsn string) bool {
	rest, ok := strings.CutPrefix(dsn, "postgres://")
	if !ok {
		if rest, ok = strings.CutPrefix(dsn, "postgresql://"); !ok {
			return false
		}
	}
	authority, _, _ := strings.Cut(rest, "/")
	_, host, ok := strings.Cut(authority, "@")
	host, _, _ = strings.Cut(host, "?")
	return ok && strings.Contains(host, "@")
}

// Open creates the pool. It does not wait for the server: readiness reports when it is down,
// and the pool reconnects by itself when it is back.
func Open(ctx context.Context, c Config) (*pgxpool.Pool, error) {
	pc, err := ParseDSN(c.DSN)
	if err != nil {
		return nil, fmt.Errorf("--pg.dsn: %w", err)
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
	dropReadOnlySessions(pc)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open pg pool: %w", err)
	}
	return pool, nil
}

// dropReadOnlySessions makes the pool close a session once the server refused a write in it
// as read-only (25006): its server is a standby, the demoted primary of a failover that the
// session still reaches (or reached while DNS still named it), and nothing it sends will ever
// be written. Kept, it fails every writer that draws it until the pool's connection lifetime
// (an hour) ends it; a new session reaches the primary the DSN's host now names. It is closed
// when next drawn from the pool, not at the error, so the statement's caller still reads the
// error as sent, in its transaction. (AfterRelease would close it sooner, but makes the pool
// start a goroutine for every release, on every write's path.)
func dropReadOnlySessions(pc *pgxpool.Config) {
	onErr := pc.ConnConfig.OnPgError
	pc.ConnConfig.OnPgError = func(c *pgconn.PgConn, pe *pgconn.PgError) bool {
		if pe.Code == "25006" { // read_only_sql_transaction
			c.CustomData()[readOnlyKey] = true
		}
		return onErr == nil || onErr(c, pe)
	}
	pc.PrepareConn = func(_ context.Context, c *pgx.Conn) (bool, error) {
		return c.PgConn().CustomData()[readOnlyKey] == nil, nil
	}
}

// readOnlyKey marks, in a session's CustomData, a session refused a write as read-only.
const readOnlyKey = "recsys.read_only"

// RefusesEveryWrite reports a program-limit error (class 54, which otherwise means a value or
// document of the statement's own is too large or too deep) that the server raises for every
// write whatever its data: it stopped assigning transaction ids or multixact ids to avoid
// wraparound, until a VACUUM, or the NOTIFY queue is full (a listener stuck in a
// transaction). Taken for one request's or one event's fault, an outage that lasts until an
// operator acts would drop or dead-letter everything written meanwhile. The routine (the
// server's C function) is matched, not the message, which lc_messages translates.
func RefusesEveryWrite(pe *pgconn.PgError) bool {
	switch pe.Routine {
	case "GetNewTransactionId", "GetNewMultiXactId", "PreCommit_Notify":
		return strings.HasPrefix(pe.Code, "54")
	}
	return false
}

// Untimed runs fn in a transaction on pool without the session's statement_timeout
// (--pg.statement-timeout): for statements whose time grows with the deployment (whole-table
// reads and deletions of the operator commands, an erasure), not with what they were asked
// for. ctx still ends them.
func Untimed(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
			return fmt.Errorf("lift the statement timeout: %w", err)
		}
		return fn(tx)
	})
}
