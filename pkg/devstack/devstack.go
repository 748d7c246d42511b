// Package devstack starts throwaway backing services for `recsys dev`: an in-process Kafka
// (kfake), an in-process Redis (miniredis) and a private PostgreSQL cluster initialised from
// the machine's PostgreSQL binaries in a temporary folder. Everything is removed on Close.
// It is for the one-command developer experience only; tests of Kafka and Redis paths run
// against the real servers started by scripts/services.sh.
package devstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
)

// ErrNoPostgres says how to get PostgreSQL when its binaries are missing.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install them with " +
	"`sudo apt-get update && sudo apt-get install -y postgresql` (Debian/Ubuntu), or `make run`, " +
	"or pass --pg.dsn / DATABASE_URL to use an existing server")

// Kafka is an in-process broker.
type Kafka struct{ c *kfake.Cluster }

// StartKafka starts a one-broker kfake cluster on a free loopback port.
func StartKafka() (*Kafka, error) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return nil, fmt.Errorf("start in-process kafka: %w", err)
	}
	return &Kafka{c: c}, nil
}

// Addrs returns the broker addresses.
func (k *Kafka) Addrs() []string { return k.c.ListenAddrs() }

// Close stops the broker.
func (k *Kafka) Close() { k.c.Close() }

// StartRedis starts miniredis on a free loopback port. miniredis has no CLIENT TRACKING, so
// clients must disable client-side caching.
func StartRedis() (*miniredis.Miniredis, error) {
	m, err := miniredis.Run()
	if err != nil {
		return nil, fmt.Errorf("start in-process redis: %w", err)
	}
	return m, nil
}

// Postgres is a private throwaway cluster.
type Postgres struct {
	dir, bin string
	port     int
	asUser   string
	password string // of the superuser postgres
}

// FindPGBin returns the folder holding initdb and pg_ctl: $PG_BIN, the newest
// /usr/lib/postgresql/*/bin, or PATH.
func FindPGBin() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// StartPostgres initialises and starts a cluster on a free port. PostgreSQL refuses to run as
// root, so as root it runs as the "postgres" system user.
func StartPostgres(ctx context.Context) (*Postgres, error) {
	bin, err := FindPGBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", strings.TrimSuffix(dirPattern, "*"))
	if err != nil {
		return nil, fmt.Errorf("create temp folder: %w", err)
	}
	// Named first, so that a process killed at any later point leaves a folder ReapStale
	// recognises.
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("write dev postgres owner: %w", err)
	}
	// 127.0.0.1 is open to every user of the machine, and the superuser runs programs as the
	// server's OS user (COPY ... TO PROGRAM): a password only this process knows, not trust.
	pw := make([]byte, 16)
	_, _ = rand.Read(pw)
	p := &Postgres{dir: dir, bin: bin, asUser: runAs(), password: hex.EncodeToString(pw)}
	pwFile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(p.password+"\n"), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("write dev postgres password file: %w", err)
	}
	if p.asUser != "" {
		u, err := user.Lookup(p.asUser)
		if err != nil {
			os.RemoveAll(dir)
			return nil, errors.New("running as root needs the \"postgres\" system user (it comes with the postgresql package)")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, f := range []string{dir, pwFile} {
			if err := os.Chown(f, uid, gid); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("chown %s: %w", f, err)
			}
		}
	}
	data := filepath.Join(dir, "data")
	out, err := p.run(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256", "--pwfile="+pwFile, "-E", "UTF8", "--no-sync")
	_ = os.Remove(pwFile)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	// The free port is released before PostgreSQL binds it, so another process can take it
	// meanwhile: start again on another port when that is why the start failed.
	logFile := filepath.Join(dir, "server.log")
	for attempt := 1; ; attempt++ {
		if p.port, err = pickPort(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200", p.port, dir)
		_ = os.Remove(logFile) // what it says is about this attempt only
		// pg_ctl forks the postmaster and then waits for it: killed half-way (Ctrl-C), it
		// would leave a server behind that nothing knows of. It is bounded by -t instead, and
		// a cancel is honoured once it has returned.
		out, err := p.run(context.WithoutCancel(ctx), "pg_ctl", "-D", data, "-l", logFile, "-o", opts, "-w", "-t", "60", "start")
		if err == nil {
			if ctx.Err() != nil {
				p.Close()
				return nil, fmt.Errorf("start dev postgres: %w", ctx.Err())
			}
			break
		}
		if log, _ := os.ReadFile(logFile); attempt < 3 && bytes.Contains(log, []byte("already in use")) {
			continue
		}
		// A start that timed out may still bring the server up: stop it before removing its folder.
		p.Close()
		return nil, fmt.Errorf("pg_ctl start: %w: %s", err, out)
	}
	conn, err := pgx.Connect(ctx, p.url("postgres"))
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("connect to dev postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE recsys"); err != nil {
		p.Close()
		return nil, fmt.Errorf("create dev database: %w", err)
	}
	return p, nil
}

// runAs is the user the cluster runs as: PostgreSQL refuses to run as root.
func runAs() string {
	if os.Geteuid() == 0 {
		return "postgres"
	}
	return ""
}

// ownerFile, in a cluster's temporary folder, holds the pid of the process that started it.
const ownerFile = "owner.pid"

// dirPattern names the temporary folders of the clusters, in os.TempDir().
const dirPattern = "recsys-dev-pg-*"

// ReapStale stops and removes the clusters of earlier processes that ended without their
// clean-up (a second Ctrl-C during the shutdown, kill -9, a crash): pg_ctl detaches the
// postmaster, so it outlived them and would run, holding its port, memory and folder, until
// the machine restarts. A folder is stale when the process its owner file names is gone;
// folders without one (a start in progress, an older release) are left alone, as are those
// of other live processes (another `recsys dev`). It returns the folders removed.
func ReapStale() ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPattern))
	if err != nil {
		return nil, fmt.Errorf("list dev postgres folders: %w", err)
	}
	var reaped []string
	var errs []error
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || alive(pid) {
			continue
		}
		bin, err := FindPGBin()
		if err != nil {
			return reaped, err
		}
		(&Postgres{dir: dir, bin: bin, asUser: runAs()}).Close()
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove leftover dev postgres folder %s: still there", dir))
			continue
		}
		reaped = append(reaped, dir)
	}
	return reaped, errors.Join(errs...)
}

func (p *Postgres) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	path := filepath.Join(p.bin, tool)
	var cmd *exec.Cmd
	if p.asUser != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", p.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = p.dir
	return cmd.CombinedOutput()
}

func (p *Postgres) url(db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", p.password, p.port, db)
}

// URL returns the connection URL of the dev database, with the superuser's password.
func (p *Postgres) URL() string { return p.url("recsys") }

// Close stops the cluster (if it runs) and removes its folder. It ignores any caller's
// context on purpose: it is also the clean-up after a cancelled start.
func (p *Postgres) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = p.run(ctx, "pg_ctl", "-D", filepath.Join(p.dir, "data"), "-m", "fast", "-w", "stop")
	os.RemoveAll(p.dir)
}

// pickPort is freePort; a test replaces it with one that hands out a taken port first.
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
