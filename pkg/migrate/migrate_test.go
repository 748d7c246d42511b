package migrate_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/migrations"
	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

func TestEmbeddedMigrationsAreWellFormed(t *testing.T) {
	files, issues, err := migrate.Local()
	if err != nil {
		t.Fatal(err)
	}
	if len(issues) > 0 {
		t.Fatalf("issues: %v", issues)
	}
	if len(files) == 0 || migrate.Latest() != files[len(files)-1].Version {
		t.Fatalf("files=%v latest=%d", files, migrate.Latest())
	}
}

func TestLocalRules(t *testing.T) {
	tests := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"bad name", fstest.MapFS{"0001_a.up.sql": {}, "0001_a.down.sql": {}, "2_B.up.sql": {}}, "invalid migration filename 2_B.up.sql"},
		{"duplicate sequence", fstest.MapFS{"0001_a.up.sql": {}, "0001_a.down.sql": {}, "0001_b.up.sql": {}}, "duplicate sequence number 0001"},
		{"gap", fstest.MapFS{"0001_a.up.sql": {}, "0001_a.down.sql": {}, "0003_c.up.sql": {}, "0003_c.down.sql": {}}, "not strictly increasing"},
		{"missing down", fstest.MapFS{"0001_a.up.sql": {}}, "has no down file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, issues, err := migrate.LocalFS(tc.fs)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(issues, "\n"), tc.want) {
				t.Fatalf("issues %v, want %q", issues, tc.want)
			}
		})
	}
}

// open opens a migrator on dsn, closed when the test ends.
func open(t *testing.T, dsn string) *migrate.Migrator {
	t.Helper()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestUpDownUpAgainstPostgres(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	ctx := context.Background()
	m := open(t, dsn)
	latest := migrate.Latest()
	steps := []struct {
		name string
		do   func() error
		want uint
	}{
		{"up", func() error { return m.Up(ctx) }, latest},
		{"down all", func() error { return m.Down(ctx, int(latest)) }, 0},
		{"up again", func() error { return m.Up(ctx) }, latest},
		{"up is a no-op", func() error { return m.Up(ctx) }, latest},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		v, dirty, err := m.Version()
		if err != nil || dirty || v != s.want {
			t.Fatalf("%s: version %d dirty %t err %v, want %d clean", s.name, v, dirty, err, s.want)
		}
	}
	r, err := migrate.Check(ctx, migrations.FS, "embedded", dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Summary.Status != "ok" || len(r.DB.Applied) != int(latest) {
		t.Fatalf("check after up: %+v", r)
	}
}

// `down N` with N above the applied migrations is a mistake (a version taken for a count):
// golang-migrate reverted every migration, dropping every table, and only then failed with
// "limit 6 short". It is refused before anything is reverted.
func TestDownMoreThanAppliedRevertsNothing(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	ctx := context.Background()
	m := open(t, dsn)
	latest := migrate.Latest()
	if err := m.Down(ctx, int(latest)+6); err == nil || !strings.Contains(err.Error(), "nothing reverted") {
		t.Fatalf("down %d at version %d: %v, want a refusal", latest+6, latest, err)
	}
	if v, dirty, err := m.Version(); err != nil || dirty || v != latest {
		t.Fatalf("after the refused down: version %d dirty %t err %v, want %d clean", v, dirty, err, latest)
	}
}

func TestCheckDetectsDrift(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	ctx := context.Background()
	local := fstest.MapFS{}
	files, _, _ := migrate.Local()
	for _, f := range files {
		b, _ := migrations.FS.ReadFile(f.Name)
		local[f.Name] = &fstest.MapFile{Data: b}
		down := strings.TrimSuffix(f.Name, ".up.sql") + ".down.sql"
		d, _ := migrations.FS.ReadFile(down)
		local[down] = &fstest.MapFile{Data: d}
	}
	first := files[0].Name
	firstDown := strings.TrimSuffix(first, ".up.sql") + ".down.sql"
	clone := func(edit func(fstest.MapFS)) fstest.MapFS {
		c := fstest.MapFS{}
		for k, v := range local {
			c[k] = v
		}
		edit(c)
		return c
	}
	tests := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"changed checksum", clone(func(c fstest.MapFS) {
			c[first] = &fstest.MapFile{Data: append([]byte("-- edited\n"), local[first].Data...)}
		}), "checksum drift for " + first},
		{"renamed file", clone(func(c fstest.MapFS) {
			c["0001_renamed.up.sql"], c["0001_renamed.down.sql"] = c[first], c[firstDown]
			delete(c, first)
			delete(c, firstDown)
		}), "renamed"},
		{"missing applied migration", clone(func(c fstest.MapFS) {
			last := files[len(files)-1].Name
			delete(c, last)
			delete(c, strings.TrimSuffix(last, ".up.sql")+".down.sql")
		}), "newer than the newest local migration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := migrate.Check(ctx, tc.fs, "test", dsn, "")
			if err != nil {
				t.Fatal(err)
			}
			if r.Summary.Status != "failed" || !strings.Contains(strings.Join(r.Comparison.Issues, "\n"), tc.want) {
				t.Fatalf("report %+v, want an issue containing %q", r.Comparison, tc.want)
			}
		})
	}
	t.Run("pending is not an issue", func(t *testing.T) {
		if len(files) < 2 {
			t.Skip("needs two migrations")
		}
		fresh := testutil.NewDatabase(t)
		m, err := migrate.Open(fresh)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Up(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Down(ctx, len(files)-1); err != nil {
			t.Fatal(err)
		}
		r, err := migrate.Check(ctx, migrations.FS, "embedded", fresh, "")
		if err != nil || r.Summary.Status != "ok" || r.Summary.PendingCount != len(files)-1 {
			t.Fatalf("check %+v %v, want ok with %d pending", r.Summary, err, len(files)-1)
		}
		if err := migrate.CheckSchema(ctx, testutil.Pool(t, fresh)); err == nil || !strings.Contains(err.Error(), "behind") {
			t.Fatalf("CheckSchema = %v, want behind", err)
		}
	})
	t.Run("dirty", func(t *testing.T) {
		pool := testutil.Pool(t, dsn)
		if _, err := pool.Exec(ctx, "UPDATE schema_migrations SET dirty = true"); err != nil {
			t.Fatal(err)
		}
		defer pool.Exec(ctx, "UPDATE schema_migrations SET dirty = false") //nolint:errcheck
		r, _ := migrate.Check(ctx, migrations.FS, "embedded", dsn, "")
		if r.Summary.Status != "failed" || !strings.Contains(strings.Join(r.DB.Issues, "\n"), "dirty") {
			t.Fatalf("dirty not reported: %+v", r.DB)
		}
		if err := migrate.CheckSchema(ctx, pool); err == nil || !strings.Contains(err.Error(), "dirty") {
			t.Fatalf("CheckSchema = %v, want dirty", err)
		}
	})
}

func TestCheckSkipsDatabaseWithReason(t *testing.T) {
	r, err := migrate.Check(context.Background(), migrations.FS, "embedded", "", "flag --skip-db-check is set")
	if err != nil {
		t.Fatal(err)
	}
	if r.DB.Status != "skipped" || r.DB.Reason != "flag --skip-db-check is set" || r.Summary.Status != "ok" {
		t.Fatalf("%+v", r)
	}
}

// The report, printed and archived by CI, carried pgx's parse error, whose redaction leaves
// parts of a password with an '@' or a space in it (the dsn does not parse either way).
func TestCheckReportHidesAMalformedDSNsPassword(t *testing.T) {
	for _, dsn := range []string{
		"postgres://recsys:p@ss:w%rd-tail@db.internal:5432/recsys",
		"host=db.internal user=recsys password=pa ss-tail dbname=recsys",
	} {
		r, err := migrate.Check(context.Background(), migrations.FS, "embedded", dsn, "")
		if err != nil {
			t.Fatal(err)
		}
		b := fmt.Sprint(r.DB)
		if r.DB.Status != "failed" || len(r.DB.Issues) == 0 {
			t.Fatalf("Check(%q).DB = %s, want failed", dsn, b)
		}
		if strings.Contains(b, "rd-tail") || strings.Contains(b, "ss-tail") {
			t.Errorf("Check(%q).DB names part of the password: %s", dsn, b)
		}
	}
}

func TestConcurrentUpDoesNotClash(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := migrate.Open(dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer m.Close()
			errs[i] = m.Up(context.Background())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrator %d: %v", i, err)
		}
	}
	pool := testutil.Pool(t, dsn)
	if err := migrate.CheckSchema(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaBehindBinaryIsReported(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	pool := testutil.Pool(t, dsn)
	if err := migrate.CheckSchema(context.Background(), pool); err == nil {
		t.Fatal("empty database passed the schema check")
	}
}

// docs/rollback.md: the previous image's `migrate up` finds the schema ahead of it and exits
// 0, since every compose service waits for the migration to succeed. Its `down` cannot revert
// versions it has no files for and says which image can.
func TestPreviousBinaryOnNewerSchema(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	ahead := migrate.Latest() + 1
	if _, err := pool.Exec(ctx, "UPDATE schema_migrations SET version = $1", int64(ahead)); err != nil {
		t.Fatal(err)
	}
	if err := migrate.CheckSchema(ctx, pool); err != nil {
		t.Fatalf("readiness refuses a newer schema: %v", err)
	}
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(ctx); err != nil {
		t.Fatalf("up: %v", err)
	}
	if v, dirty, err := m.Version(); err != nil || dirty || v != ahead {
		t.Fatalf("after up: version %d dirty %t err %v, want %d untouched", v, dirty, err, ahead)
	}
	err = m.Down(ctx, 1)
	if err == nil || !strings.Contains(err.Error(), "newer than this binary") || !strings.Contains(err.Error(), "newer image") {
		t.Fatalf("down = %v, want a pointer to the newer image", err)
	}
}

// A dirty version is this binary's problem only when it is one of its own: the next
// release's failed migration (version above Latest, dirty) leaves this release's schema
// intact, and the fleet still serving must stay ready.
func TestDirtyVersionReadiness(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	tests := []struct {
		name    string
		version uint
		ready   bool
	}{
		{"next release's failed migration", migrate.Latest() + 1, true},
		{"own latest migration failed", migrate.Latest(), false},
		{"older migration dirty", migrate.Latest() - 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pool.Exec(ctx, "UPDATE schema_migrations SET version = $1, dirty = true", int64(tc.version)); err != nil {
				t.Fatal(err)
			}
			err := migrate.CheckSchema(ctx, pool)
			if (err == nil) != tc.ready {
				t.Fatalf("CheckSchema = %v, want ready=%t", err, tc.ready)
			}
		})
	}
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := pool.Exec(ctx, "UPDATE schema_migrations SET version = $1, dirty = true", int64(migrate.Latest()+1)); err != nil {
		t.Fatal(err)
	}
	if err := m.Up(ctx); err == nil {
		t.Fatal("up on a dirty schema ahead of the binary succeeded; it must stop for `migrate force`")
	}
}

// `recsys migrate` prints its error on stderr: it must not carry the password of a malformed
// connection string.
func TestOpenErrorHidesPassword(t *testing.T) {
	for _, dsn := range []string{
		"postgres://recsys:S3cretPW@localhost:54x2/recsys",
		"postgres://recsys:S3cret%zzPW@localhost/recsys",
		"host=localhost user=recsys password='S3cretPW dbname=recsys",
	} {
		_, err := migrate.Open(dsn)
		if err == nil {
			t.Errorf("Open accepted a malformed string")
			continue
		}
		if strings.Contains(err.Error(), "S3cret") {
			t.Errorf("migrate.Open error leaks the password: %v", err)
		}
	}
}

// Key=value connection strings work as URLs do (pgx takes both).
func TestOpenTakesKeyValueDSN(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	kv := fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database)
	m, err := migrate.Open(kv)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, _, err := m.Version(); err != nil || v != migrate.Latest() {
		t.Fatalf("version %d err %v", v, err)
	}
}

// A migration that fails leaves its version dirty, which keeps every role unready: the error
// of `migrate up` and `migrate down` says so, with the versions to force, before
// golang-migrate's statement and file text.
func TestFailedMigrationSaysItLeftTheSchemaDirty(t *testing.T) {
	latest := migrate.Latest()
	tests := []struct {
		name      string
		at        uint // version before the failing run
		run       func(context.Context, *migrate.Migrator) error
		dirtyAt   uint
		forceHint []string
	}{
		{"up", latest - 1, func(ctx context.Context, m *migrate.Migrator) error { return m.Up(ctx) }, latest,
			[]string{fmt.Sprintf("recsys migrate force %d` once", latest), fmt.Sprintf("recsys migrate force %d` once it is as before", latest-1)}},
		{"down", latest, func(ctx context.Context, m *migrate.Migrator) error { return m.Down(ctx, 1) }, latest - 1,
			[]string{fmt.Sprintf("recsys migrate force %d` once", latest-1), fmt.Sprintf("recsys migrate force %d` once it is as before", latest)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := testutil.MigratedDatabase(t)
			m, err := migrate.Open(dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if tc.at < latest {
				if err := m.Down(ctx, int(latest-tc.at)); err != nil {
					t.Fatal(err)
				}
			}
			// Every migration runs DDL: refusing it fails the migration after golang-migrate
			// marked its version dirty, whatever the migration's content.
			pool := testutil.Pool(t, dsn)
			if _, err := pool.Exec(ctx, `CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION 'ddl refused by the test'; END $$;
				CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION refuse_ddl();`); err != nil {
				t.Fatal(err)
			}
			err = tc.run(ctx, m)
			if err == nil {
				t.Fatal("the migration succeeded despite the refused DDL")
			}
			if v, dirty, verr := m.Version(); verr != nil || !dirty || v != tc.dirtyAt {
				t.Fatalf("version %d dirty %t err %v, want %d dirty", v, dirty, verr, tc.dirtyAt)
			}
			if want := fmt.Sprintf("left the schema dirty at version %d", tc.dirtyAt); !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q:\n%v", want, err)
			}
			for _, h := range tc.forceHint {
				if !strings.Contains(err.Error(), h) {
					t.Errorf("error does not say %q:\n%v", h, err)
				}
			}
			if !strings.Contains(err.Error(), "ddl refused by the test") {
				t.Errorf("error lost the cause:\n%v", err)
			}
		})
	}
}

// A migration whose table lock is held by a long transaction (a backup's pg_dump, a report)
// must not queue every writer of that table behind its own request for as long as that
// transaction lasts: it gives up its request after LockTimeout, leaves the schema clean and
// tries again, so writers wait at most LockTimeout. Migration 0022 locks event_dedup, which
// every ingest writes.
func TestMigrationWaitingForALockDoesNotStallWriters(t *testing.T) {
	latest := dedupLocker
	up := func(ctx context.Context, m *migrate.Migrator) error { return m.Up(ctx) }
	down := func(ctx context.Context, m *migrate.Migrator) error { return m.Down(ctx, 1) }
	tests := []struct {
		name     string
		from     uint // version before the run; 0022 and its down lock event_dedup first
		run      func(context.Context, *migrate.Migrator) error
		hold     time.Duration // how long the blocking transaction lasts
		retryFor time.Duration
		after    uint // version after the run, clean
	}{
		{"up, blocker ends within the retries", latest - 1, up, 2500 * time.Millisecond, time.Minute, migrate.Latest()},
		{"up, blocker outlasts the retries", latest - 1, up, 6 * time.Second, 1500 * time.Millisecond, latest - 1},
		{"down, blocker ends within the retries", latest, down, 2500 * time.Millisecond, time.Minute, latest - 1},
		{"down, blocker outlasts the retries", latest, down, 6 * time.Second, 1500 * time.Millisecond, latest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := testutil.MigratedDatabase(t)
			m, err := migrate.Open(dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.DownTo(ctx, tc.from); err != nil {
				t.Fatal(err)
			}
			m.LockTimeout, m.LockRetryFor = 200*time.Millisecond, tc.retryFor

			holdTable(t, dsn, "event_dedup", tc.hold)

			done := make(chan error, 1)
			go func() { done <- tc.run(ctx, m) }()

			// The writer arrives while the migration waits for its lock, with the API's
			// lock_timeout (--pg.lock-timeout, 1s).
			pool := testutil.Pool(t, dsn)
			awaitLockWait(t, pool, "event_dedup")
			writer, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer writer.Close(ctx)
			if _, err := writer.Exec(ctx, "SET lock_timeout = '1s'"); err != nil {
				t.Fatal(err)
			}
			insert := "INSERT INTO event_dedup (event_id, event_type) VALUES ('w1', 'watch')"
			if tc.from == latest {
				insert = "INSERT INTO event_dedup (event_id, event_type, user_id) VALUES ('w1', 'watch', 'u1')"
			}
			if _, err := writer.Exec(ctx, insert); err != nil {
				t.Errorf("a writer queued behind the waiting migration failed: %v", err)
			}

			var runErr error
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the migration did not return")
			}
			// Given up or not, nothing is left dirty: the next run (the Job's retry) starts
			// again without `migrate force`.
			v, dirty, err := m.Version()
			if err != nil || v != tc.after || dirty {
				t.Fatalf("after the run (%v): version %d dirty %t err %v, want %d clean", runErr, v, dirty, err, tc.after)
			}
			if gotThrough := tc.after != tc.from; gotThrough {
				if runErr != nil {
					t.Fatal(runErr)
				}
			} else if runErr == nil || !strings.Contains(runErr.Error(), "gave up waiting for a lock") || !strings.Contains(runErr.Error(), "lock timeout (SQLSTATE 55P03)") {
				t.Fatalf("run = %v, want the lock wait named", runErr)
			}
		})
	}
}

// A `migrate up` told to stop (SIGTERM from the Job's deadline or an evicted pod) while a file
// runs cancels it: the file rolls back and the version is left clean at the one before, not
// dirty, and not applied behind the back of a process that is gone. LockTimeout 0 keeps the
// file waiting inside its transaction, as a long rewrite would be.
func TestStoppedMigrationLeavesTheSchemaClean(t *testing.T) {
	latest := dedupLocker
	ctx := context.Background()
	m, dsn := below(t, dedupLocker)
	m.LockTimeout = 0

	const hold = 8 * time.Second
	released := holdTable(t, dsn, "event_dedup", hold)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- m.Up(runCtx) }()
	pool := testutil.Pool(t, dsn)
	awaitLockWait(t, pool, "event_dedup")
	stopped := time.Now()
	stop()
	var upErr error
	select {
	case upErr = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("migrate up did not return")
	}
	if took := time.Since(stopped); took > 3*time.Second {
		t.Errorf("up returned %s after the stop, want it at once", took)
	}
	if upErr == nil || !strings.Contains(upErr.Error(), "cancelled and rolled back") {
		t.Errorf("up = %v, want it to say the migration was cancelled", upErr)
	}
	<-released
	// Whatever a session still running the file might do, it is over once the blocker ended.
	time.Sleep(200 * time.Millisecond)
	var v int64
	var dirty bool
	if err := pool.QueryRow(ctx, "SELECT version, dirty FROM schema_migrations").Scan(&v, &dirty); err != nil {
		t.Fatal(err)
	}
	if v != int64(latest-1) || dirty {
		t.Fatalf("after the stop: version %d dirty %t, want %d clean", v, dirty, latest-1)
	}
	var hasUser bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'event_dedup' AND column_name = 'user_id')`).Scan(&hasUser); err != nil || hasUser {
		t.Fatalf("migration %d applied after the stop (err %v)", latest, err)
	}
	m2, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.Up(ctx); err != nil {
		t.Fatalf("up after the stop: %v", err)
	}
}

// A statement_timeout set on the database or role (a common safety net for applications; the
// roles set their own per session) cancels a long migration: the file rolls back, so the
// version is left clean at the one before, with the way out, not dirty.
func TestMigrationCancelledByTheServerLeavesTheSchemaClean(t *testing.T) {
	latest := dedupLocker
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DownTo(ctx, latest-1); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := pool.Exec(ctx, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET statement_timeout = 300', current_database()); END $$"); err != nil {
		t.Fatal(err)
	}
	m, err = migrate.Open(dsn) // a new session, with the database's setting
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.LockTimeout = 0
	// A blocker makes 0022 outlast the timeout, as a rewrite of a large table would.
	blocker, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(ctx)
	if _, err := blocker.Exec(ctx, "SET statement_timeout = 0; BEGIN; SELECT count(*) FROM event_dedup"); err != nil {
		t.Fatal(err)
	}
	err = m.Up(ctx)
	if _, cerr := blocker.Exec(ctx, "COMMIT"); cerr != nil {
		t.Fatal(cerr)
	}
	if err == nil || !strings.Contains(err.Error(), "statement_timeout=0") || !strings.Contains(err.Error(), fmt.Sprintf("clean at version %d", latest-1)) {
		t.Fatalf("up = %v, want the cancellation explained", err)
	}
	if v, dirty, err := m.Version(); err != nil || v != latest-1 || dirty {
		t.Fatalf("after the cancellation: version %d dirty %t err %v, want %d clean", v, dirty, err, latest-1)
	}
}

// A version is dirty for as long as its migration runs, which is also what a failed one
// looks like. `migrate force` must not act on it then: the run's end would overwrite it, or,
// forced below the running file, the next up would apply that file a second time.
func TestForceRefusesWhileAMigrationRuns(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Another process's run: it holds the migration lock and marked its version dirty.
	other, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	latest := int64(migrate.Latest())
	if _, err := other.Exec(ctx, "SELECT pg_advisory_lock(7311500001)"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "UPDATE schema_migrations SET dirty = true"); err != nil {
		t.Fatal(err)
	}
	pool := testutil.Pool(t, dsn)
	if running, err := migrate.Running(ctx, pool); err != nil || !running {
		t.Fatalf("Running = %t, %v while another session holds the lock", running, err)
	}
	err = m.Force(ctx, int(latest)-1)
	if err == nil || !strings.Contains(err.Error(), "a migration is running") {
		t.Fatalf("force during a run = %v, want a refusal", err)
	}
	if v, dirty, err := m.Version(); err != nil || int64(v) != latest || !dirty {
		t.Fatalf("force changed the version: %d dirty %t err %v", v, dirty, err)
	}
	// The run ended (or its process died): force does its job.
	if _, err := other.Exec(ctx, "SELECT pg_advisory_unlock(7311500001)"); err != nil {
		t.Fatal(err)
	}
	if running, err := migrate.Running(ctx, pool); err != nil || running {
		t.Fatalf("Running = %t, %v after the lock was released", running, err)
	}
	if err := m.Force(ctx, int(latest)); err != nil {
		t.Fatal(err)
	}
	if v, dirty, err := m.Version(); err != nil || int64(v) != latest || dirty {
		t.Fatalf("after force: %d dirty %t err %v, want %d clean", v, dirty, err, latest)
	}
}

// Every pod's readiness reads schema_migrations (lock_timeout 1 s, CheckBudget 1 s), and
// golang-migrate rewrites it around each file (TRUNCATE: ACCESS EXCLUSIVE). Behind a long
// holder of schema_migrations (pg_dump holds every table for the whole backup), a pending
// TRUNCATE queued every readiness read: all pods, of every release, turned unready for as
// long as the holder lasted. The version writes must give up quickly and try again.
func TestVersionWritesDoNotStallReadiness(t *testing.T) {
	ctx := context.Background()
	latest := migrate.Latest()
	m, dsn := oneBelowLatest(t)
	holdTable(t, dsn, "schema_migrations", 3*time.Second)
	done := make(chan error, 1)
	go func() { done <- m.Up(ctx) }()

	pool := testutil.Pool(t, dsn)
	awaitLockWait(t, pool, "schema_migrations")
	// A readiness check as the roles run it: their session's lock_timeout, the check budget.
	probe, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close(ctx)
	if _, err := probe.Exec(ctx, "SET lock_timeout = '1s'"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := migrate.CheckSchema(cctx, probe); err != nil && !strings.Contains(err.Error(), "behind") && !strings.Contains(err.Error(), "dirty") {
		t.Errorf("readiness read behind the migration's version write failed: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("migrate up did not return")
	}
	if v, dirty, err := m.Version(); err != nil || v != latest || dirty {
		t.Fatalf("after up: version %d dirty %t err %v, want %d clean", v, dirty, err, latest)
	}
}

// The same holder arriving while a file runs: the file completes, and recording it clean
// gives up on the lock; the version, dirty although the file is applied, is recorded clean
// once the holder is gone, not left for `migrate force`.
func TestVersionWriteAfterACompletedFileIsRetried(t *testing.T) {
	ctx := context.Background()
	latest := migrate.Latest()
	m, dsn := below(t, dedupLocker)
	m.LockTimeout = 0
	pool := testutil.Pool(t, dsn)
	holdFile, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holdFile.Rollback(ctx) //nolint:errcheck
	if _, err := holdFile.Exec(ctx, "SELECT count(*) FROM event_dedup"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Up(ctx) }()
	for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
		var dirty bool
		if err := pool.QueryRow(ctx, "SELECT dirty FROM schema_migrations").Scan(&dirty); err != nil {
			t.Fatal(err)
		}
		if dirty {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the migration never started")
		}
	}
	holdVersion, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holdVersion.Rollback(ctx) //nolint:errcheck
	if _, err := holdVersion.Exec(ctx, "SELECT count(*) FROM schema_migrations"); err != nil {
		t.Fatal(err)
	}
	if err := holdFile.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the file completes; its version write gives up, maybe twice
	if err := holdVersion.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("migrate up did not return")
	}
	if v, dirty, err := m.Version(); err != nil || v != latest || dirty {
		t.Fatalf("after up: version %d dirty %t err %v, want %d clean", v, dirty, err, latest)
	}
}

// holdTable holds a lock on table (a transaction that read it, as a backup or a report does)
// for d, then commits; the returned channel closes then, and the test waits for it when it
// ends.
func holdTable(t *testing.T, dsn, table string, d time.Duration) <-chan struct{} {
	t.Helper()
	ctx := context.Background()
	blocker, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blocker.Exec(ctx, "BEGIN; SELECT count(*) FROM "+table); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(d)
		blocker.Exec(context.Background(), "COMMIT") //nolint:errcheck // the test fails on the schema if it did not end
	}()
	t.Cleanup(func() {
		<-released
		blocker.Close(context.Background()) //nolint:errcheck // a test connection
	})
	return released
}

// awaitLockWait waits until a session waits for an exclusive lock on table (the migration
// queued behind holdTable's transaction).
func awaitLockWait(t *testing.T, pool *pgxpool.Pool, table string) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
		var waiting bool
		if err := pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = $1::regclass
			AND mode = 'AccessExclusiveLock' AND NOT granted)`, table).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("the migration never waited for %s's lock", table)
		}
	}
}

// dedupLocker is the migration (0022) whose up and down lock event_dedup, the table every
// ingest writes, before anything else: the lock tests run it.
const dedupLocker uint = 22

// below migrates a new database to the latest version and back down to just below version v,
// closing the migrator when the test ends.
func below(t *testing.T, v uint) (*migrate.Migrator, string) {
	t.Helper()
	m, dsn := oneBelowLatest(t)
	if err := m.DownTo(context.Background(), v-1); err != nil {
		t.Fatal(err)
	}
	return m, dsn
}

// oneBelowLatest migrates a new database to the latest version and back down one, closing the
// migrator when the test ends.
func oneBelowLatest(t *testing.T) (*migrate.Migrator, string) {
	t.Helper()
	dsn := testutil.MigratedDatabase(t)
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Down(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	return m, dsn
}
