// Package migrate applies and checks the embedded schema migrations with golang-migrate (pgx v5
// driver). Several pods may run `migrate up` at once: a PostgreSQL advisory lock serialises
// them, and each applied file's checksum is recorded so edits after the fact are detected.
// Each file runs as one transaction with a lock timeout; one that gives up on a lock, is
// stopped or is cancelled by the server rolls back whole, and its version is set back clean
// (and, for a lock, the file retried) instead of being left dirty for `migrate force`.
package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	gomigrate "github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"recsys/migrations"
	"recsys/pkg/postgres"
)

// advisoryKey serialises recsys' own migration runs (golang-migrate takes its own lock too;
// ours also covers recording checksums).
const advisoryKey = 7_311_500_001

// File is one migration version as found in the embedded folder.
type File struct {
	Version  uint   `json:"seq"`
	Name     string `json:"file"`
	Checksum string `json:"checksum"`
	HasDown  bool   `json:"-"`
}

var namePattern = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$`)

// Local reads the embedded migrations.
func Local() ([]File, []string, error) { return LocalFS(migrations.FS) }

// LocalFS validates file naming and strict ordering and computes checksums of the up files.
// Problems are returned as issues, not errors, so a report can list all of them.
func LocalFS(fsys fs.FS) ([]File, []string, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, nil, fmt.Errorf("read migrations: %w", err)
	}
	var issues []string
	byVer := map[uint]*File{}
	names := map[uint]string{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		m := namePattern.FindStringSubmatch(e.Name())
		if m == nil {
			issues = append(issues, fmt.Sprintf("invalid migration filename %s: want NNNN_<lowercase_name>.up.sql / .down.sql", e.Name()))
			continue
		}
		v64, _ := strconv.ParseUint(m[1], 10, 32)
		v := uint(v64)
		if prev, ok := names[v]; ok && prev != m[2] {
			issues = append(issues, fmt.Sprintf("duplicate sequence number %04d: %s and %s", v, prev, m[2]))
			continue
		}
		names[v] = m[2]
		f := byVer[v]
		if f == nil {
			f = &File{Version: v}
			byVer[v] = f
		}
		if m[3] == "down" {
			f.HasDown = true
			continue
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", e.Name(), err)
		}
		sum := sha256.Sum256(b)
		f.Name, f.Checksum = e.Name(), hex.EncodeToString(sum[:])
	}
	var out []File
	for _, f := range byVer {
		if f.Name == "" {
			issues = append(issues, fmt.Sprintf("migration %04d has a down file but no up file", f.Version))
			continue
		}
		if !f.HasDown {
			issues = append(issues, fmt.Sprintf("migration %s has no down file", f.Name))
		}
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, f := range out {
		if want := uint(i + 1); f.Version != want {
			issues = append(issues, fmt.Sprintf("sequence is not strictly increasing by one: %s has %04d, expected %04d", f.Name, f.Version, want))
			break
		}
	}
	return out, issues, nil
}

// Latest is the highest embedded version: what this binary expects the schema to be at.
func Latest() uint {
	files, _, _ := Local()
	if len(files) == 0 {
		return 0
	}
	return files[len(files)-1].Version
}

// Defaults of Migrator.LockTimeout and Migrator.LockRetryFor.
const (
	DefaultLockTimeout  = 2 * time.Second
	DefaultLockRetryFor = 10 * time.Minute
)

// Migrator runs golang-migrate over the embedded files against one database.
type Migrator struct {
	dsn     string
	appName string
	m       *gomigrate.Migrate
	// Log receives notices such as "schema ahead of this binary"; nil means slog.Default().
	Log *slog.Logger
	// LockTimeout bounds how long a migration file waits for each lock it takes (its
	// lock_timeout; 0: no bound). While a migration waits for a table's lock, every later
	// query of that table queues behind it: without a bound, one long transaction (a backup,
	// a report) holding the table would stall all of its writers for as long as it lasts.
	LockTimeout time.Duration
	// LockRetryFor is how long Up and Down go on retrying a file that gave up waiting for a
	// lock (nothing of it was applied) before they fail, with the schema left clean.
	LockRetryFor time.Duration
}

// lockTimeoutPrefix starts every transactional migration file as it is run, on the file's
// first line so that golang-migrate's line numbers stay those of the file. SET LOCAL lasts
// until the end of the file's transaction: golang-migrate's own statements (its advisory lock,
// the version row) keep the session's settings.
const lockTimeoutPrefix = "SET LOCAL lock_timeout = "

// boundedSource gives every migration file its Migrator's lock timeout.
type boundedSource struct {
	source.Driver
	mg *Migrator
}

func (s boundedSource) ReadUp(version uint) (io.ReadCloser, string, error) {
	r, id, err := s.Driver.ReadUp(version)
	if err != nil {
		return r, id, err
	}
	return s.mg.bounded(r, id)
}

func (s boundedSource) ReadDown(version uint) (io.ReadCloser, string, error) {
	r, id, err := s.Driver.ReadDown(version)
	if err != nil {
		return r, id, err
	}
	return s.mg.bounded(r, id)
}

// concurrently marks a file that cannot run in a transaction (CREATE/DROP INDEX CONCURRENTLY,
// shipped alone in its file): it gets no prefix, which would put it in one, and is not retried,
// since a failed concurrent build leaves an invalid index behind. Comments (which may well
// mention CONCURRENTLY, as 0013's does) are left out of the match.
var concurrently, sqlComment = regexp.MustCompile(`(?i)\bconcurrently\b`), regexp.MustCompile(`(?s)--[^\n]*|/\*.*?\*/`)

func (mg *Migrator) bounded(r io.ReadCloser, id string) (io.ReadCloser, string, error) {
	defer r.Close()
	body, err := io.ReadAll(r)
	if err != nil {
		return nil, id, fmt.Errorf("read migration %s: %w", id, err)
	}
	if concurrently.Match(sqlComment.ReplaceAll(body, nil)) {
		return io.NopCloser(bytes.NewReader(body)), id, nil
	}
	// Also with no bound (0), so that gaveUpOnLock and stopped recognise a transactional file.
	ms := int64(0)
	if mg.LockTimeout > 0 {
		ms = max(mg.LockTimeout.Milliseconds(), 1)
	}
	prefix := fmt.Sprintf("%s%d; ", lockTimeoutPrefix, ms)
	return io.NopCloser(io.MultiReader(strings.NewReader(prefix), bytes.NewReader(body))), id, nil
}

// fileFailed returns the PostgreSQL error of a migration file that ran as one transaction (it
// carries the prefix) and failed with one of codes: nothing of it was applied.
func fileFailed(err error, codes ...string) (*pgconn.PgError, bool) {
	var de database.Error
	if !errors.As(err, &de) || !bytes.HasPrefix(de.Query, []byte(lockTimeoutPrefix)) {
		return nil, false
	}
	var pe *pgconn.PgError
	if errors.As(de.OrigErr, &pe) && slices.Contains(codes, pe.Code) {
		return pe, true
	}
	return nil, false
}

// gaveUpOnLock reports whether err is a migration file that failed for want of a lock: its
// lock timeout expired or it was chosen as a deadlock's victim.
func gaveUpOnLock(err error) (*pgconn.PgError, bool) { return fileFailed(err, "55P03", "40P01") }

// before is the version before the file that failed at dirty version v (-1: none), and that
// file's version. back is as for leftDirty.
func (mg *Migrator) before(v uint, back int) (before int, file uint) {
	before = int(v) + back
	if before == 0 {
		before = database.NilVersion
	}
	file = v // up: the dirty version is the file's; down: the one below it
	if back > 0 {
		file = uint(before)
	}
	return before, file
}

// setBack records the version before the file that failed at dirty version v, clean: its
// transaction rolled back.
func (mg *Migrator) setBack(v uint, back int) (before int, file uint, err error) {
	before, file = mg.before(v, back)
	return before, file, mg.m.Force(before)
}

// cancelRunning stops a run whose context ended (SIGTERM: the Job's deadline, an evicted pod;
// Ctrl-C): golang-migrate starts no further file, and the statement running now is cancelled,
// so its file's transaction rolls back. Without it the process would be killed mid-file while
// PostgreSQL, unaware, went on with the file and committed it, leaving the version dirty
// although applied.
func (mg *Migrator) cancelRunning() {
	select {
	case mg.m.GracefulStop <- true:
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := connect(ctx, mg.dsn)
	if err != nil {
		mg.log().Warn("could not cancel the running migration", "err", err.Error())
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1", mg.appName); err != nil {
		mg.log().Warn("could not cancel the running migration", "err", err.Error())
	}
}

// cancelled is the outcome of a file cancelled by the server, not by this process: a
// statement_timeout of the role or database (the roles' --pg.statement-timeout is per
// session and does not apply here), or pg_cancel_backend. The file rolled back, so the version
// is set back clean rather than left dirty for `migrate force`.
func (mg *Migrator) cancelled(what string, back int, err error) error {
	v, dirty, verr := mg.Version()
	if verr != nil || !dirty {
		return mg.leftDirty(what, back, err)
	}
	before, file, ferr := mg.setBack(v, back)
	if ferr != nil {
		return mg.leftDirty(what, back, errors.Join(err, ferr))
	}
	pe, _ := fileFailed(err, "57014")
	return fmt.Errorf("%s: migration %d was cancelled by the server (a statement_timeout set for the role or database, or pg_cancel_backend) and rolled back; the schema is clean at version %d: run it again without a statement timeout (add statement_timeout=0 to the connection string): %w",
		what, file, max(before, 0), pe)
}

// stopped is the outcome of a run that ended after ctx did. A file cancelled by
// cancelRunning is set back like one that gave up on a lock.
func (mg *Migrator) stopped(ctx context.Context, what string, back int, err error) error {
	if err != nil {
		if _, ok := fileFailed(err, "57014"); !ok {
			return mg.leftDirty(what, back, err)
		}
		v, dirty, verr := mg.Version()
		if verr != nil || !dirty {
			return mg.leftDirty(what, back, err)
		}
		before, file, ferr := mg.setBack(v, back)
		if ferr != nil {
			return mg.leftDirty(what, back, errors.Join(err, ferr))
		}
		return fmt.Errorf("%s: stopped (%w): migration %d was cancelled and rolled back; the schema is clean at version %d", what, ctx.Err(), file, max(before, 0))
	}
	v, dirty, verr := mg.Version()
	if verr != nil {
		return fmt.Errorf("%s: stopped (%w): %w", what, ctx.Err(), verr)
	}
	if back < 0 && v >= Latest() && !dirty {
		return nil // every file ran before the stop
	}
	return fmt.Errorf("%s: stopped (%w) between migrations; the schema is clean at version %d", what, ctx.Err(), v)
}

// lockRetryWait is the first pause before a file that gave up on a lock runs again; it
// doubles up to lockRetryMaxWait.
var lockRetryWait, lockRetryMaxWait = time.Second, 30 * time.Second

// bookkeepingLockTimeout bounds golang-migrate's own lock waits on its session: its advisory
// lock, and the TRUNCATE of schema_migrations that records each version (ACCESS EXCLUSIVE).
// Every role's readiness reads schema_migrations with a 1 s lock_timeout and check budget; a
// TRUNCATE queued behind a long holder of the table (a pg_dump backup holds every table) would
// queue those reads in turn and turn every pod of every release unready for as long.
const bookkeepingLockTimeout = 500 * time.Millisecond

// bookkeepingLock reports whether err is one of golang-migrate's own statements (not a file)
// giving up on a lock.
func bookkeepingLock(err error) bool {
	var de *database.Error
	var pe *pgconn.PgError
	return errors.As(err, &de) && errors.As(de.OrigErr, &pe) && pe.Code == "55P03"
}

// retryLocks runs run (golang-migrate's Up or Steps) until it succeeds, fails for another
// reason, or LockRetryFor has passed. golang-migrate marks a version dirty before running its
// file, so after a file that gave up on a lock the version is set back to the one before it,
// clean, as the rolled-back transaction left the schema. A version write that gave up leaves
// the version as it was, or, after the file completed, dirty: it is then recorded clean. back
// is as for leftDirty.
func (mg *Migrator) retryLocks(ctx context.Context, what string, back int, run func() error) error {
	deadline := time.Now().Add(mg.LockRetryFor)
	wait := lockRetryWait
	pause := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, lockRetryMaxWait)
		return nil
	}
	defer context.AfterFunc(ctx, mg.cancelRunning)()
	for {
		err := run()
		if ctx.Err() != nil {
			return mg.stopped(ctx, what, back, err)
		}
		cause, gaveUp := gaveUpOnLock(err)
		if !gaveUp && !bookkeepingLock(err) {
			if _, cancelled := fileFailed(err, "57014"); cancelled {
				return mg.cancelled(what, back, err)
			}
			return mg.leftDirty(what, back, err)
		}
		v, dirty, verr := mg.Version()
		if verr != nil {
			return mg.leftDirty(what, back, errors.Join(err, verr))
		}
		// The version to record, clean: before the file that gave up; the one the file
		// reached when only its version write gave up.
		record, file := int(v), v
		if gaveUp {
			if !dirty {
				return mg.leftDirty(what, back, err)
			}
			record, file = mg.before(v, back)
		}
		for dirty {
			ferr := mg.m.Force(record)
			if ferr == nil {
				break
			}
			if !bookkeepingLock(ferr) || !time.Now().Add(wait).Before(deadline) {
				return mg.leftDirty(what, back, errors.Join(err, ferr))
			}
			if perr := pause(); perr != nil {
				return mg.leftDirty(what, back, errors.Join(err, perr))
			}
		}
		if !time.Now().Add(wait).Before(deadline) {
			if !gaveUp {
				return fmt.Errorf("%s: recording the schema version waited longer than %s for a lock on schema_migrations, retried for %s; the schema is clean at version %d: find the session holding schema_migrations (pg_locks; a pg_dump?) and run again: %w",
					what, bookkeepingLockTimeout, mg.LockRetryFor, max(record, 0), err)
			}
			// The file's text, which golang-migrate's error quotes whole, says nothing here.
			return fmt.Errorf("%s: migration %d gave up waiting for a lock another transaction holds (lock timeout %s) and was retried for %s; nothing of it was applied and the schema is clean at version %d: find the blocking session (pg_stat_activity, pg_locks) or run again with a longer --migrate.lock-timeout: %w",
				what, file, mg.LockTimeout, mg.LockRetryFor, max(record, 0), cause)
		}
		if gaveUp {
			mg.log().Warn("a migration gave up waiting for a lock another transaction holds; nothing of it was applied, retrying",
				"migration", file, "lock_timeout", mg.LockTimeout.String(), "retry_in", wait.String(), "err", cause.Error())
		} else {
			mg.log().Warn("recording the schema version gave up waiting for a lock on schema_migrations, retrying",
				"version", max(record, 0), "retry_in", wait.String(), "err", err.Error())
		}
		if perr := pause(); perr != nil {
			return fmt.Errorf("%s: stopped while waiting to retry; the schema is clean at version %d: %w", what, max(record, 0), perr)
		}
	}
}

// Open prepares a migrator; dsn is a postgres:// URL or a key=value connection string. The
// string is parsed by pgx first: a parse error must not quote it, as url.Parse's errors do
// (with the password).
func Open(dsn string) (*Migrator, error) {
	pc, err := postgres.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	// A name of its own, by which cancelRunning finds the session that runs the files.
	var token [8]byte
	if _, err := rand.Read(token[:]); err != nil {
		return nil, fmt.Errorf("open migrator: %w", err)
	}
	appName := "recsys migrate " + hex.EncodeToString(token[:])
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	pc.ConnConfig.RuntimeParams["application_name"] = appName
	boundConnect(pc.ConnConfig)
	db := stdlib.OpenDB(*pc.ConnConfig)
	drv, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open migrator: %w", err)
	}
	// After the driver's set-up, which waits for a run of another process to end.
	if err := drv.Run(strings.NewReader(fmt.Sprintf("SET lock_timeout = %d", bookkeepingLockTimeout.Milliseconds()))); err != nil {
		drv.Close()
		return nil, fmt.Errorf("open migrator: %w", err)
	}
	mg := &Migrator{dsn: dsn, appName: appName, LockTimeout: DefaultLockTimeout, LockRetryFor: DefaultLockRetryFor}
	m, err := gomigrate.NewWithInstance("iofs", boundedSource{Driver: src, mg: mg}, "pgx5", drv)
	if err != nil {
		drv.Close()
		return nil, fmt.Errorf("open migrator: %w", err)
	}
	mg.m = m
	return mg, nil
}

func (mg *Migrator) log() *slog.Logger {
	if mg.Log != nil {
		return mg.Log
	}
	return slog.Default()
}

// Close releases the migrator's connections.
func (mg *Migrator) Close() error {
	se, de := mg.m.Close()
	return errors.Join(se, de)
}

// Up applies every pending migration under the advisory lock and records checksums. A clean
// schema newer than this binary is not an error: it is what a rollback to the previous image
// finds (docs/rollback.md), and every service waits for `migrate up` to succeed.
func (mg *Migrator) Up(ctx context.Context) error {
	return mg.locked(ctx, func() error {
		v, dirty, err := mg.Version()
		if err != nil {
			return err
		}
		if latest := Latest(); v > latest && !dirty {
			mg.log().Info(fmt.Sprintf("schema at %d is ahead of this binary (%d); nothing to apply", v, latest),
				"version", v, "binary_latest", latest)
			// Not a failure of `up`, which has nothing to do: the roles of this image say it
			// too, and refuse (a rollback that skipped the schema's, docs/rollback.md).
			if err := mg.floor(ctx, v, latest); err != nil {
				mg.log().Warn("the schema refuses this binary: its relay and consumer will not start, its api stays unready", "err", err.Error())
			}
			return nil
		}
		return mg.retryLocks(ctx, "migrate up", -1, func() error {
			if err := mg.m.Up(); err != nil && !errors.Is(err, gomigrate.ErrNoChange) {
				return err
			}
			return nil
		})
	})
}

// floor is Floor over a connection of its own, bounded as every other (connect).
func (mg *Migrator) floor(ctx context.Context, schema, binary uint) error {
	conn, err := connect(ctx, mg.dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	return Floor(ctx, conn, schema, binary)
}

// leftDirty wraps the error of a failed run. A migration that fails leaves the version it was
// moving to marked dirty, which keeps every role unready and every later run refused until an
// operator forces a version; golang-migrate's error names the failed statement only (with the
// whole file), so the state it left and the way out come first. back is the direction the
// version moves back to its value before the failed migration: -1 for up, +1 for down.
func (mg *Migrator) leftDirty(what string, back int, err error) error {
	if err == nil {
		return nil
	}
	var de gomigrate.ErrDirty
	if errors.As(err, &de) {
		return fmt.Errorf("%s: %w", what, err) // dirty before this run; the error says so
	}
	v, dirty, verr := mg.Version()
	if verr != nil || !dirty {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: failed and left the schema dirty at version %d; roles stay unready until it is repaired by hand and forced: `recsys migrate force %d` once the schema is as version %d leaves it, or `recsys migrate force %d` once it is as before the failed migration (then run it again): %w",
		what, v, v, v, int(v)+back, err)
}

// Down reverts n migrations.
func (mg *Migrator) Down(ctx context.Context, n int) error {
	if n < 1 {
		return fmt.Errorf("down needs a positive number of steps, got %d", n)
	}
	return mg.locked(ctx, func() error {
		v, err := mg.downFrom()
		if err != nil {
			return err
		}
		// golang-migrate reverts what there is and only then reports the shortfall: `down 30`
		// on 24 applied migrations dropped every table and failed.
		if n > int(v) {
			return fmt.Errorf("migrate down %d: only %d migrations are applied (version %d); nothing reverted (revert them all with --to-version 0)", n, v, v)
		}
		return mg.down(ctx, fmt.Sprintf("migrate down %d", n), int(v)-n)
	})
}

// DownTo reverts the migrations above version target; at or below it, it does nothing. Unlike
// Down it is safe to run twice (a rollback step repeated, a Job retried): the second run does
// not revert one more release's migration, and with it that release's data.
func (mg *Migrator) DownTo(ctx context.Context, target uint) error {
	return mg.locked(ctx, func() error {
		v, err := mg.downFrom()
		if err != nil {
			return err
		}
		what := fmt.Sprintf("migrate down --to-version %d", target)
		if _, dirty, err := mg.Version(); err != nil {
			return err
		} else if dirty {
			return fmt.Errorf("%s: %w", what, gomigrate.ErrDirty{Version: int(v)})
		}
		if v <= target {
			mg.log().Info(fmt.Sprintf("schema at %d is not above %d; nothing to revert", v, target), "version", v, "target", target)
			return nil
		}
		return mg.down(ctx, what, int(target))
	})
}

// downFrom is the version a down run starts from: one this binary has down files for.
func (mg *Migrator) downFrom() (uint, error) {
	v, _, err := mg.Version()
	if err != nil {
		return 0, err
	}
	if latest := Latest(); v > latest {
		return 0, fmt.Errorf("database is at %d, newer than this binary (%d): run down with the newer image", v, latest)
	}
	return v, nil
}

// down reverts to version target. Versions are consecutive (LocalFS), so the steps left are
// the distance to target, also after a retry that reverted some of them.
func (mg *Migrator) down(ctx context.Context, what string, target int) error {
	return mg.retryLocks(ctx, what, 1, func() error {
		cur, _, err := mg.Version()
		if err != nil {
			return err
		}
		return mg.m.Steps(-(int(cur) - target))
	})
}

// ErrRunning is Force's refusal while another run holds the migration lock.
var ErrRunning = errors.New("a migration is running (another `recsys migrate` holds the migration lock): its version shows dirty until it ends; wait for it, then look again with `recsys migrate version`")

// Force sets the version without running anything, clearing the dirty flag. It refuses while
// another run holds the migration lock: a version is dirty for as long as its migration runs,
// and a version forced meanwhile would be overwritten by the run's end or, forced below a file
// the run then completes, have the next `up` apply that file a second time.
func (mg *Migrator) Force(ctx context.Context, v int) error {
	conn, err := connect(ctx, mg.dsn)
	if err != nil {
		return fmt.Errorf("connect for migration lock: %w", err)
	}
	defer conn.Close(context.Background())
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", int64(advisoryKey)).Scan(&got); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	if !got {
		return fmt.Errorf("force version %d: %w", v, ErrRunning)
	}
	if err := mg.m.Force(v); err != nil {
		return fmt.Errorf("force version %d: %w", v, err)
	}
	return nil
}

// Running reports whether a run (of any process) holds the migration lock now.
func Running(ctx context.Context, q Querier) (bool, error) {
	var held bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1)`, int64(advisoryKey)).Scan(&held)
	if err != nil {
		return false, fmt.Errorf("look for a running migration: %w", err)
	}
	return held, nil
}

// State is the schema's version and whether a migration is running now.
type State struct {
	Version        uint
	Dirty, Running bool
}

// Inspect reads the State over a plain connection. Open cannot answer while a migration
// runs: golang-migrate takes its lock there, and waits for the run to end.
func Inspect(ctx context.Context, dsn string) (State, error) {
	conn, err := connect(ctx, dsn)
	if err != nil {
		return State{}, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	var st State
	if st.Version, st.Dirty, err = Status(ctx, conn); err != nil {
		return State{}, err
	}
	if st.Running, err = Running(ctx, conn); err != nil {
		return State{}, err
	}
	return st, nil
}

// Version returns the applied version; 0 when nothing is applied.
func (mg *Migrator) Version() (uint, bool, error) {
	v, dirty, err := mg.m.Version()
	if errors.Is(err, gomigrate.ErrNilVersion) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read version: %w", err)
	}
	return v, dirty, nil
}

func (mg *Migrator) locked(ctx context.Context, fn func() error) error {
	conn, err := connect(ctx, mg.dsn)
	if err != nil {
		return fmt.Errorf("connect for migration lock: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(advisoryKey)); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(advisoryKey)) //nolint:errcheck // closing the session releases it too
	if err := fn(); err != nil {
		return err
	}
	// A run that completed although it was told to stop still records what it applied.
	return recordChecksums(context.WithoutCancel(ctx), conn)
}

// recordChecksums stores the checksum of every applied version that has none yet and removes
// rows of versions that were rolled back.
func recordChecksums(ctx context.Context, conn *pgx.Conn) error {
	var ver int64
	var dirty bool
	err := conn.QueryRow(ctx, "SELECT version, dirty FROM schema_migrations LIMIT 1").Scan(&ver, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		ver = 0
	} else if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_migration_checksums') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("look for checksum table: %w", err)
	}
	if !exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "DELETE FROM schema_migration_checksums WHERE version > $1", ver); err != nil {
		return fmt.Errorf("prune checksums: %w", err)
	}
	files, _, err := Local()
	if err != nil {
		return err
	}
	for _, f := range files {
		if int64(f.Version) > ver || (dirty && int64(f.Version) == ver) {
			break
		}
		if _, err := conn.Exec(ctx, `INSERT INTO schema_migration_checksums (version, name, checksum) VALUES ($1, $2, $3)
			ON CONFLICT (version) DO NOTHING`, int64(f.Version), f.Name, f.Checksum); err != nil {
			return fmt.Errorf("record checksum of %s: %w", f.Name, err)
		}
	}
	return nil
}

// Querier is what Status needs: a pool or a connection.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Status reports the applied version and dirty flag, for readiness: a role refuses to be
// ready while the schema is behind the binary or dirty.
func Status(ctx context.Context, q Querier) (version uint, dirty bool, err error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return 0, false, fmt.Errorf("look for schema_migrations: %w", err)
	}
	if !exists {
		return 0, false, nil
	}
	var v int64
	err = q.QueryRow(ctx, "SELECT version, dirty FROM schema_migrations LIMIT 1").Scan(&v, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read schema version: %w", err)
	}
	return uint(v), dirty, nil
}

// CheckSchema returns an error unless the schema is at least the binary's version and, up to
// that version, clean, and no newer migration recorded that this binary must not run on it
// (a *TooOldError, see Floor).
func CheckSchema(ctx context.Context, q Querier) error { return CheckBinary(ctx, q, Latest()) }

// CheckBinary is CheckSchema for a binary whose newest migration is binary.
func CheckBinary(ctx context.Context, q Querier, binary uint) error {
	v, dirty, err := Status(ctx, q)
	if err != nil {
		return err
	}
	if err := judge(v, dirty, binary); err != nil {
		return err
	}
	return Floor(ctx, q, v, binary)
}

// Judge is CheckSchema's verdict on a version read with Status, before Floor.
func Judge(v uint, dirty bool) error { return judge(v, dirty, Latest()) }

func judge(v uint, dirty bool, want uint) error {
	// A dirty version above this binary's is the next release's failed migration: this
	// binary's schema is intact, so the fleet still serving must stay ready.
	if dirty && v <= want {
		return fmt.Errorf("schema version %d is dirty: its migration is running, or failed (`recsys migrate version` tells which; a failed one is fixed, then `recsys migrate force`)", v)
	}
	if v < want {
		return fmt.Errorf("schema version %d is behind this binary (%d): run `recsys migrate up`", v, want)
	}
	return nil
}

// connectTimeout bounds how long `check` waits for the database, as the original tool did.
const connectTimeout = 3 * time.Second

// ConnectTimeout bounds each connection attempt of the other commands when the DSN sets no
// connect_timeout. pgx has none by default: a server that accepts the connection and never
// answers (a stuck PostgreSQL, a pooler waiting for its backend) or a firewall that drops
// the packets kept `migrate up`, a deploy's one-shot Job, waiting forever, past
// `recsys migrate`'s 30 s wait for the database.
var ConnectTimeout = 5 * time.Second

// boundConnect gives cfg ConnectTimeout unless its DSN set one.
func boundConnect(cfg *pgx.ConnConfig) {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = ConnectTimeout
	}
}

// connect opens a plain connection with a bounded connect.
func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	pc, err := postgres.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	boundConnect(pc.ConnConfig)
	return pgx.ConnectConfig(ctx, pc.ConnConfig)
}
