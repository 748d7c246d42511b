package testutil

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PgBouncerPoolSize is the number of server connections StartPgBouncer's pooler keeps per
// database and user: fewer than a test's clients, so that they share server sessions, as
// they do behind a pooler in production.
const PgBouncerPoolSize = 2

// PgBouncerAppName is the application_name of StartPgBouncer's server sessions (while no
// client sets its own), by which a test finds them in pg_stat_activity.
const PgBouncerAppName = "recsys-test-pgbouncer"

// StartPgBouncer starts a PgBouncer of the test's own (scripts/services.sh installs it) in
// transaction pooling in front of the database at dsn (the shared test server's, from
// NewDatabase or MigratedDatabase), on a free loopback port, and returns dsn through it. It
// is stopped when the test ends, and dies with the test process (it is the test's child); a
// test binary killed by -timeout leaves only its dir, which scripts/services.sh sweep removes. PgBouncer keeps no prepared statements in transaction pooling
// before 1.21: add default_query_exec_mode=exec (or another mode that prepares none) to the
// returned DSN, as docs/scaling.md tells operators to.
func StartPgBouncer(t testing.TB, dsn string) string {
	t.Helper()
	bin := pgBouncerBinary()
	if bin == "" {
		Missing(t, "pgbouncer not found (in PATH or /usr/sbin): scripts/services.sh up installs it")
		return ""
	}
	target, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse dsn: %v", err)
	}
	db := strings.TrimPrefix(target.Path, "/")
	user := target.User.Username()
	if db == "" || user == "" || strings.ContainsAny(db+user, " '\"=\\") {
		t.Fatalf("StartPgBouncer: want a dsn with a plain database and user name, got %q", dsn)
	}
	dir, err := os.MkdirTemp("", "recsys-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// For scripts/services.sh sweep, which removes the dir of a test binary killed by -timeout
	// (no cleanup runs; the pooler itself dies with it).
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		port := pickPort(t)
		log, err := startPgBouncer(t, bin, dir, target, db, user, port)
		if err == nil {
			u := *target
			u.Host = "127.0.0.1:" + strconv.Itoa(port)
			return u.String()
		}
		if attempt < 3 && strings.Contains(strings.ToLower(log), "in use") {
			t.Logf("pgbouncer: port %d was taken meanwhile, trying another:\n%s", port, log)
			continue
		}
		t.Fatalf("start pgbouncer: %v\n--- %s ---\n%s", err, filepath.Join(dir, "pgbouncer.log"), log)
	}
}

// pgBouncerBinary is the path of pgbouncer, or "" when it is not installed (Debian puts it in
// /usr/sbin, which a non-root PATH may lack).
func pgBouncerBinary() string {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if fi, err := os.Stat("/usr/sbin/pgbouncer"); err == nil && !fi.IsDir() {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}

// startPgBouncer writes the config into dir and starts pgbouncer on port, returning once a
// query goes through it; on failure, it returns the pooler's log, the process stopped.
func startPgBouncer(t testing.TB, bin, dir string, target *url.URL, db, user string, port int) (string, error) {
	t.Helper()
	logFile := filepath.Join(dir, "pgbouncer.log")
	_ = os.Remove(logFile)
	host, pgPort := target.Hostname(), target.Port()
	if pgPort == "" {
		pgPort = "5432"
	}
	conf := fmt.Sprintf(`[databases]
%[1]s = host=%[2]s port=%[3]s dbname=%[1]s user=%[4]s application_name=%[10]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[5]d
unix_socket_dir =
auth_type = trust
auth_file = %[6]s
pool_mode = transaction
default_pool_size = %[7]d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
logfile = %[8]s
pidfile = %[9]s
; pgx sends none of these, other clients (psql, lib/pq) do
ignore_startup_parameters = extra_float_digits,options
`, db, host, pgPort, user, port, filepath.Join(dir, "userlist.txt"), PgBouncerPoolSize, logFile, filepath.Join(dir, "pgbouncer.pid"), PgBouncerAppName)
	files := map[string]string{
		"pgbouncer.ini": conf,
		"userlist.txt":  fmt.Sprintf("%q \"\"\n", user),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	// In the foreground, as the test's child (Command): killed when the test process dies.
	cmd := Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	if err := notAsRoot(cmd, dir); err != nil {
		return "", err
	}
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("%s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	readLog := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b) + out.String()
	}
	dsn := *target
	dsn.Host = "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			return readLog(), fmt.Errorf("pgbouncer exited during startup: %s", cmd.ProcessState)
		default:
		}
		err := pingThrough(dsn.String())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return readLog(), fmt.Errorf("no query went through pgbouncer on %s within 15s: %w", dsn.Host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// SIGKILL, not SIGINT: PgBouncer's safe shutdown waits for the clients a test may still
	// hold, and its server connections end with it.
	t.Cleanup(stop)
	return "", nil
}

// pingThrough runs a query through the pooler at dsn, in the mode its clients must use.
func pingThrough(dsn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return errors.New("SELECT 1 did not return 1")
	}
	return nil
}
