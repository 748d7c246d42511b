#!/usr/bin/env bash
# scripts/services.sh — run real PostgreSQL, Redis and Apache Kafka on loopback
# for tests, CI, benchmarks and operators.
#
# Usage:
#   scripts/services.sh up                  install if needed (PgBouncer too, not run), start all, print env
#   scripts/services.sh down [--purge]      stop all (data kept; --purge deletes data)
#   scripts/services.sh status              print up/down per service; non-zero if any down
#   scripts/services.sh env                 print `export` lines (eval "$(scripts/services.sh env)")
#   scripts/services.sh start|stop|restart pg|redis|kafka
#   scripts/services.sh sweep               stop the private servers of tests whose process is gone
#
# Progress goes to stderr, env lines to stdout, so `eval "$(scripts/services.sh up)"` works.
#
# Environment (all optional):
#   RECSYS_SERVICES_DIR   data, logs, pidfiles     (default $HOME/.cache/recsys/services)
#   RECSYS_CACHE_DIR      Kafka jars, Maven repo   (default $HOME/.cache/recsys)
#   RECSYS_PG_PORT (55432) RECSYS_REDIS_PORT (56379)
#   RECSYS_KAFKA_PORT (59092) RECSYS_KAFKA_CONTROLLER_PORT (59093)
#   RECSYS_KAFKA_SASL_SSL_PORT  unset: PLAINTEXT only. Set: Kafka also listens there with
#                         SASL_SSL (PLAIN and SCRAM-SHA-512, user recsys, password
#                         recsys-test-secret; CA in $RECSYS_SERVICES_DIR/kafka/tls/ca.pem).
#                         SCRAM's user is added when the storage is formatted, so set it
#                         before the first start of a services dir.
#   RECSYS_KAFKA_ACLS     1 (with RECSYS_KAFKA_SASL_SSL_PORT): the broker authorizes requests
#                         (StandardAuthorizer); PLAINTEXT clients are super users, the
#                         SASL_SSL user may do only what ACLs granted over PLAINTEXT allow.
#   RECSYS_KAFKA_VERSION  Apache Kafka version from Maven Central (default below)
#   RECSYS_KAFKA_HEAP     JVM heap flags (default "-Xms256m -Xmx1g")
#   RECSYS_KAFKA_JIT      quick: the broker's JIT stops at C1, for a broker that lives a
#                         test long (pkg/testutil's private ones): it starts on half the
#                         CPU (2.5 against 5 s here), which a loaded test host feels
#   RECSYS_{PG,REDIS,KAFKA}_START_TIMEOUT  seconds to wait for each to answer (60, 20, 90;
#                         not RECSYS_REDIS_TIMEOUT, which is recsys' --redis.timeout)
#   RECSYS_PG_BIN         PostgreSQL bin dir (default: newest /usr/lib/postgresql/*/bin)
#   RECSYS_PG_DURABLE     1: PostgreSQL flushes every commit (fsync, synchronous_commit and
#                         full_page_writes on), as a production server does; default 0 trades
#                         crash safety of the test server for speed
set -euo pipefail

# Kafka 4.4.0 is verified against segmentio/kafka-go v0.4.51 (create topic, produce
# acks=all, consumer group fetch + commit, list offsets, delete topics).
KAFKA_VERSION="${RECSYS_KAFKA_VERSION:-4.4.0}"
SCALA_VERSION="2.13"
SLF4J_SIMPLE_VERSION="1.7.36" # must match the slf4j-api 1.7.x that Kafka pulls in

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
SERVICES_DIR="${RECSYS_SERVICES_DIR:-$HOME/.cache/recsys/services}"
CACHE_DIR="${RECSYS_CACHE_DIR:-$HOME/.cache/recsys}"
HOST=127.0.0.1
PG_PORT="${RECSYS_PG_PORT:-55432}"
REDIS_PORT="${RECSYS_REDIS_PORT:-56379}"
KAFKA_PORT="${RECSYS_KAFKA_PORT:-59092}"
KAFKA_CONTROLLER_PORT="${RECSYS_KAFKA_CONTROLLER_PORT:-59093}"
KAFKA_SASL_SSL_PORT="${RECSYS_KAFKA_SASL_SSL_PORT:-}"
KAFKA_ACLS="${RECSYS_KAFKA_ACLS:-}"
KAFKA_HEAP="${RECSYS_KAFKA_HEAP:--Xms256m -Xmx1g}"
KAFKA_JIT=-XX:CompileThresholdScaling=0.05
[[ ${RECSYS_KAFKA_JIT:-} != quick ]] || KAFKA_JIT=-XX:TieredStopAtLevel=1
PG_DB=recsys

PG_TIMEOUT="${RECSYS_PG_START_TIMEOUT:-60}"
REDIS_TIMEOUT="${RECSYS_REDIS_START_TIMEOUT:-20}"
KAFKA_TIMEOUT="${RECSYS_KAFKA_START_TIMEOUT:-90}"

PG_DIR="$SERVICES_DIR/pg"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/server.log"
REDIS_DIR="$SERVICES_DIR/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"
KAFKA_DIR="$SERVICES_DIR/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"
KAFKA_TLS="$KAFKA_DIR/tls"
KAFKA_SASL_USER=recsys
KAFKA_SASL_PASSWORD=recsys-test-secret
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_MARKER="$KAFKA_HOME/.installed"

DATABASE_URL="postgres://postgres@$HOST:$PG_PORT/$PG_DB?sslmode=disable"
REDIS_URL="redis://$HOST:$REDIS_PORT/0"
KAFKA_BROKERS="$HOST:$KAFKA_PORT"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
# Installing packages (apt-get) and running PostgreSQL as the postgres user (runuser, chown)
# need root; say so up front rather than failing half-way with a half-started stack.
need_root() {
	[[ "$(id -u)" -eq 0 ]] ||
		die "'$1' must run as root: it installs packages with apt-get and runs PostgreSQL as the postgres user (try: sudo -E bash $SCRIPT_PATH $1)"
}

# trim_log FILE: a log past 64 MiB keeps its last 16 MiB as FILE.1 and starts over, so that
# servers restarted for years of test runs (and the statements errors log with their
# parameters) never fill the disk.
trim_log() {
	local f="$1" size
	[[ -f "$f" ]] || return 0
	size=$(stat -c %s "$f" 2>/dev/null || echo 0)
	if ((size > 64 * 1024 * 1024)); then
		log "$(basename "$f"): $((size / 1024 / 1024)) MiB, keeping the last 16 MiB in $f.1"
		tail -c $((16 * 1024 * 1024)) "$f" >"$f.1" && : >"$f"
	fi
}

# fail_with_log MSG LOGFILE: error out, showing the tail of the service's log.
fail_with_log() {
	local msg="$1" file="$2"
	{
		printf '[services] ERROR: %s\n' "$msg"
		if [[ -f "$file" ]]; then
			printf '[services] --- last 30 lines of %s ---\n' "$file"
			tail -n 30 "$file" | sed 's/^/    /'
		else
			printf '[services] (no log file %s)\n' "$file"
		fi
	} >&2
	exit 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A zombie (exited, not yet reaped by pid 1) counts as dead.
pid_alive() {
	[[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[[ "${stat:0:1}" != "Z" ]]
}

# pid_matches PID PATTERN: the process exists and its command line contains PATTERN
# (guards against killing a recycled pid).
pid_matches() {
	local pid="$1" pat="$2"
	pid_alive "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pat"
}

read_pid() { [[ -f "$1" ]] && tr -dc '0-9' <"$1" || true; }

# wait_gone PID SECONDS: wait for a process to exit; SIGKILL it after the timeout.
wait_gone() {
	local pid="$1" secs="$2" i
	for ((i = 0; i < secs * 10; i++)); do
		pid_alive "$pid" || return 0
		sleep 0.1
	done
	log "pid $pid still alive after ${secs}s, sending SIGKILL"
	kill -9 "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		pid_alive "$pid" || return 0
		sleep 0.1
	done
	die "pid $pid did not exit"
}

APT_UPDATED=0
apt_install() {
	if [[ $APT_UPDATED == 0 ]]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
		APT_UPDATED=1
	fi
	log "apt-get install -y $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		die "apt-get install $* failed"
}

# Serialise concurrent callers (parallel test packages). Daemons are started with
# fd 9 closed so they do not inherit the lock.
lock() {
	mkdir -p "$SERVICES_DIR"
	exec 9>"$SERVICES_DIR/.lock"
	flock -w 600 9 || die "could not lock $SERVICES_DIR/.lock (another services.sh is running?)"
}

# ---------------------------------------------------------------- PostgreSQL

PGBIN=""
find_pgbin() {
	[[ -n "$PGBIN" ]] && return 0
	if [[ -n "${RECSYS_PG_BIN:-}" ]]; then
		PGBIN="$RECSYS_PG_BIN"
		return 0
	fi
	# Prefer the major version the data dir was created with.
	if [[ -f "$PG_DATA/PG_VERSION" ]]; then
		local v
		v="$(cat "$PG_DATA/PG_VERSION")"
		if [[ -x "/usr/lib/postgresql/$v/bin/initdb" ]]; then
			PGBIN="/usr/lib/postgresql/$v/bin"
			return 0
		fi
	fi
	local d
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
	if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
		PGBIN="$d"
		return 0
	fi
	return 1
}

pg_install() {
	if ! find_pgbin || ! id postgres >/dev/null 2>&1; then
		apt_install postgresql
		PGBIN=""
		find_pgbin || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found"
	fi
	[[ -x "$PGBIN/pg_ctl" ]] || die "no pg_ctl in $PGBIN"
}

as_postgres() { runuser -u postgres -- "$@"; }

# PostgreSQL runs as `postgres`, which must be able to traverse every parent of
# the data dir (e.g. /root is 0700). Grant search (x) only, never read.
pg_fix_traverse() {
	as_postgres test -x "$PG_DIR" && return 0
	local d="$PG_DIR" dirs=() i
	while d="$(dirname "$d")" && [[ "$d" != "/" ]]; do dirs=("$d" "${dirs[@]}"); done
	for i in "${dirs[@]}"; do # top-down, so only the blocking dirs change
		if ! as_postgres test -x "$i"; then
			log "chmod o+x $i (so the postgres user can reach $PG_DIR)"
			chmod o+x "$i"
		fi
	done
}

pg_sockdir() {
	# Unix socket paths are limited to ~107 bytes.
	if ((${#PG_DIR} + 20 < 100)); then
		echo "$PG_DIR/sock"
	else
		echo "/tmp/recsys-pg-$PG_PORT"
	fi
}

pg_running() {
	find_pgbin || return 1
	pg_clear_stale_lock
	[[ -f "$PG_DATA/postmaster.pid" ]] || return 1
	as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# proc_start_time PID: when the process started, in seconds since the epoch.
proc_start_time() {
	local stat fields btime
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	read -ra fields <<<"${stat##*) }" # fields[0] is field 3 (state); starttime is field 22
	btime="$(awk '$1 == "btime" { print $2 }' /proc/stat)"
	[[ -n $btime && ${fields[19]:-} =~ ^[0-9]+$ ]] || return 1
	echo $((btime + fields[19] / $(getconf CLK_TCK)))
}

# pg_clear_stale_lock removes a postmaster.pid that a killed server left behind once its pid
# belongs to another process or to the server's own zombie. pg_ctl and the server only ask
# whether that pid is alive, and with a pid_max of 32768 and every test's PostgreSQL running as
# postgres it soon is another postgres process: `pg_ctl status` then says running, the server
# refuses to start ("lock file already exists") and `pg_ctl stop` signals that other process
# (and a zombie answers as alive until reaped). This data dir's postmaster is
# recognised by its -D argument or by the start time the file records; the file stays while
# anything listens on the port it records (not $PG_PORT: `sweep` stops private instances
# without knowing theirs).
pg_clear_stale_lock() {
	local lock="$PG_DATA/postmaster.pid" pid recorded started port
	[[ -f $lock ]] || return 0
	pid="$(sed -n 1p "$lock" | tr -dc '0-9')"
	recorded="$(sed -n 3p "$lock" | tr -dc '0-9')"
	port="$(sed -n 4p "$lock" | tr -dc '0-9')"
	if ! pid_alive "$pid"; then
		# Gone: PostgreSQL takes the file over by itself. Not a zombie (the killed server, not
		# yet reaped by a pid 1 that reaps late or never): it still answers kill -0.
		kill -0 "$pid" 2>/dev/null || return 0
	else
		pid_matches "$pid" "-D $PG_DATA " && return 0
		if started="$(proc_start_time "$pid")" && [[ -n $recorded ]] &&
			((started - recorded <= 5 && recorded - started <= 5)); then
			return 0
		fi
	fi
	port_open "${port:-$PG_PORT}" && return 0
	log "pg: $lock names pid $pid, which is not this server's running postmaster (left by a killed server): removing it"
	rm -f "$lock"
}

pg_ready() {
	find_pgbin || return 1
	"$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

pg_psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres "$@"; }

pg_start() {
	pg_install
	mkdir -p "$PG_DIR"
	local sock
	sock="$(pg_sockdir)"
	mkdir -p "$sock"
	chown postgres:postgres "$PG_DIR" "$sock"
	pg_fix_traverse
	if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
		log "pg: initdb $PG_DATA"
		# Into a side dir, renamed when complete: initdb writes PG_VERSION before the catalogs,
		# so a run killed meanwhile (SIGKILL: no clean-up of its own) would leave a data dir
		# that every later run takes for a made one and fails to start.
		rm -rf "$PG_DATA" "$PG_DATA.initdb"
		as_postgres "$PGBIN/initdb" -D "$PG_DATA.initdb" -U postgres --auth=trust -E UTF8 --no-instructions \
			>"$PG_DIR/initdb.log" 2>&1 || fail_with_log "initdb failed" "$PG_DIR/initdb.log"
		mv "$PG_DATA.initdb" "$PG_DATA"
	fi
	chown -R postgres:postgres "$PG_DATA"
	if pg_running; then
		log "pg: already running"
	else
		if port_open "$PG_PORT"; then
			die "pg: port $PG_PORT is in use by another process (set RECSYS_PG_PORT)"
		fi
		log "pg: starting on $HOST:$PG_PORT"
		local opts="-c listen_addresses=$HOST -p $PG_PORT -k $sock -c max_connections=300 -c shared_buffers=256MB"
		if [[ "${RECSYS_PG_DURABLE:-0}" == 1 ]]; then
			opts+=" -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
		else
			opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
		fi
		trim_log "$PG_LOG"
		touch "$PG_LOG" && chown postgres:postgres "$PG_LOG"
		as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -o "$opts" -w -t "$PG_TIMEOUT" start >/dev/null 2>&1 9>&- ||
			fail_with_log "pg: pg_ctl start failed or timed out after ${PG_TIMEOUT}s" "$PG_LOG"
	fi
	local i
	for ((i = 0; i < PG_TIMEOUT * 5; i++)); do
		pg_ready && break
		sleep 0.2
	done
	pg_ready || fail_with_log "pg: not accepting connections on $HOST:$PG_PORT after ${PG_TIMEOUT}s" "$PG_LOG"
	if [[ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'")" != "1" ]]; then
		log "pg: create database $PG_DB"
		pg_psql -d postgres -c "CREATE DATABASE $PG_DB" >/dev/null
	fi
	pg_psql -d "$PG_DB" -tAc "SELECT 1" >/dev/null || fail_with_log "pg: SELECT 1 on $PG_DB failed" "$PG_LOG"
}

pg_stop() {
	if ! pg_running; then
		log "pg: not running"
		return 0
	fi
	log "pg: stopping"
	as_postgres "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
		fail_with_log "pg: pg_ctl stop failed" "$PG_LOG"
}

# ---------------------------------------------------------------- PgBouncer

# PgBouncer is installed, never run here: tests start a pooler of their own in front of the
# test server (pkg/testutil.StartPgBouncer). A failed install only warns, so that it cannot
# keep the other services down; those tests then fail, saying pgbouncer is missing.
pgbouncer_install() {
	command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] && return 0
	# In a subshell: apt_install exits on failure.
	if ! (apt_install pgbouncer); then
		log "WARNING: installing pgbouncer failed; the tests behind a pooler will fail"
		return 0
	fi
	# The package starts and enables its own service (127.0.0.1:6432) where it can.
	if [[ -d /run/systemd/system ]]; then
		systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
	elif [[ -x /etc/init.d/pgbouncer ]]; then
		/etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
		update-rc.d pgbouncer disable >/dev/null 2>&1 || true
	fi
}

# ---------------------------------------------------------------- Redis

redis_install() {
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
		apt_install redis-server
	fi
}

# The pid file outlives a killed server and its pid may then be another redis-server (every
# test's private Redis is one): ours runs in our --dir. Not the port: `sweep` stops private
# instances without knowing theirs. A user who may not see the server's directory (`status`
# without root) goes by the port in its title ("redis-server 127.0.0.1:56379").
redis_pid() {
	local pid cwd
	pid="$(read_pid "$REDIS_PID")"
	pid_matches "$pid" "redis-server" || return 0
	if cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" && [[ -n $cwd ]]; then
		[[ $cwd == "$(cd "$REDIS_DIR" 2>/dev/null && pwd -P)" ]] || return 0
	elif ! pid_matches "$pid" "$HOST:$REDIS_PORT "; then
		return 0
	fi
	echo "$pid"
}

redis_ping() { [[ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; }

redis_start() {
	redis_install
	mkdir -p "$REDIS_DIR"
	if [[ -n "$(redis_pid)" ]]; then
		log "redis: already running"
	else
		if port_open "$REDIS_PORT"; then
			die "redis: port $REDIS_PORT is in use by another process (set RECSYS_REDIS_PORT)"
		fi
		rm -f "$REDIS_PID"
		trim_log "$REDIS_LOG"
		log "redis: starting on $HOST:$REDIS_PORT"
		# Small sorted sets only as listpacks: the co-visitation lists are cheaper to update as
		# skip lists (featurestore.MaxZsetListpackEntries).
		redis-server --port "$REDIS_PORT" --bind "$HOST" --save "" --appendonly no \
			--zset-max-listpack-entries 16 \
			--daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
			</dev/null >/dev/null 2>>"$REDIS_LOG" 9>&- || fail_with_log "redis: redis-server failed to start" "$REDIS_LOG"
	fi
	local i
	for ((i = 0; i < REDIS_TIMEOUT * 10; i++)); do
		redis_ping && return 0
		sleep 0.1
	done
	fail_with_log "redis: no PONG on $HOST:$REDIS_PORT after ${REDIS_TIMEOUT}s" "$REDIS_LOG"
}

redis_stop() {
	local pid
	pid="$(redis_pid)"
	if [[ -z "$pid" ]]; then
		log "redis: not running"
		rm -f "$REDIS_PID"
		return 0
	fi
	log "redis: stopping (pid $pid)"
	kill "$pid" 2>/dev/null || true
	wait_gone "$pid" 10
	rm -f "$REDIS_PID"
}

# ---------------------------------------------------------------- Kafka

kafka_install() {
	if ! command -v java >/dev/null 2>&1; then
		apt_install openjdk-17-jre-headless
	fi
	if [[ -f "$KAFKA_MARKER" && "$(cat "$KAFKA_MARKER")" == "$KAFKA_VERSION" ]] &&
		compgen -G "$KAFKA_LIB/kafka_${SCALA_VERSION}-$KAFKA_VERSION.jar" >/dev/null; then
		return 0
	fi
	if ! command -v mvn >/dev/null 2>&1; then
		apt_install maven
	fi
	log "kafka: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB"
	mkdir -p "$KAFKA_HOME"
	cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>recsys.local</groupId>
  <artifactId>kafka-broker-bundle</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>$SLF4J_SIMPLE_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
	rm -rf "$KAFKA_HOME/lib.tmp"
	(cd "$KAFKA_HOME" && mvn -q -B -Dmaven.repo.local="$CACHE_DIR/m2" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib.tmp) >"$KAFKA_HOME/mvn.log" 2>&1 ||
		fail_with_log "kafka: mvn dependency:copy-dependencies failed" "$KAFKA_HOME/mvn.log"
	compgen -G "$KAFKA_HOME/lib.tmp/kafka_${SCALA_VERSION}-$KAFKA_VERSION.jar" >/dev/null ||
		fail_with_log "kafka: kafka_${SCALA_VERSION}-$KAFKA_VERSION.jar missing after mvn" "$KAFKA_HOME/mvn.log"
	rm -rf "$KAFKA_LIB"
	mv "$KAFKA_HOME/lib.tmp" "$KAFKA_LIB"
	echo "$KAFKA_VERSION" >"$KAFKA_MARKER"
}

kafka_java() { java -cp "$KAFKA_LIB/*" "$@"; }

kafka_write_props() {
	local listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
	local advertised="PLAINTEXT://$HOST:$KAFKA_PORT" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
	if [[ -n $KAFKA_SASL_SSL_PORT ]]; then
		listeners+=",SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT"
		advertised+=",SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT"
		protocols+=",SASL_SSL:SASL_SSL"
	fi
	cat >"$KAFKA_PROPS" <<EOF
# Generated by scripts/services.sh — single-node KRaft (broker+controller) on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=134217728
# The controller appends a no-op record to the metadata log every 500 ms by default, so that
# observers of a multi-node quorum see it advance; with one node it only cost the idle broker
# ~70 ms of CPU per second here (2 alternated restarts: 245 / 134 against 179 / 64 ms).
metadata.max.idle.interval.ms=5000
EOF
	[[ -n $KAFKA_SASL_SSL_PORT ]] || return 0
	# Everything is scoped to the SASL_SSL listener: the broker's own traffic (inter-broker,
	# controller) stays PLAINTEXT, so it needs no credentials of its own.
	cat >>"$KAFKA_PROPS" <<EOF
# SASL_SSL for testing clients' TLS and SASL (RECSYS_KAFKA_SASL_SSL_PORT).
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_TLS/server-keystore.pem
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
	[[ $KAFKA_ACLS == 1 ]] || return 0
	# The broker's own traffic and the PLAINTEXT test clients are ANONYMOUS: super users.
	cat >>"$KAFKA_PROPS" <<EOF
# ACLs for the SASL_SSL user only (RECSYS_KAFKA_ACLS).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
}

# kafka_tls writes, once per services dir, a CA and a server certificate for 127.0.0.1 and
# localhost signed by it, for the SASL_SSL listener; clients trust $KAFKA_TLS/ca.pem.
# Kafka's PEM keystore takes the unencrypted PKCS#8 key and the chain in one file (an
# encrypted key would need ssl.key.password). Built in a temp dir and renamed, so an
# interrupted run leaves no half set behind.
kafka_tls() {
	[[ -f $KAFKA_TLS/server-keystore.pem ]] && return 0
	command -v openssl >/dev/null 2>&1 || apt_install openssl
	local tmp="$KAFKA_TLS.tmp"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	(
		cd "$tmp"
		openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=recsys-test-ca \
			-keyout ca.key -out ca.pem \
			-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
		openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
		printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
			'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' >server.ext
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
			-extfile server.ext -out server.pem
		openssl pkcs8 -topk8 -nocrypt -in server.key -out server-pkcs8.key
		cat server-pkcs8.key server.pem ca.pem >server-keystore.pem
		chmod 600 ca.key server.key server-pkcs8.key server-keystore.pem
	) >"$KAFKA_DIR/tls.log" 2>&1 || fail_with_log "kafka: generating TLS material failed" "$KAFKA_DIR/tls.log"
	rm -rf "$KAFKA_TLS"
	mv "$tmp" "$KAFKA_TLS"
}

kafka_pid() {
	local pid
	pid="$(read_pid "$KAFKA_PID")"
	pid_matches "$pid" "$KAFKA_PROPS" && echo "$pid"
	return 0
}

kafka_start() {
	kafka_install
	mkdir -p "$KAFKA_DIR"
	[[ -z $KAFKA_SASL_SSL_PORT ]] || kafka_tls
	kafka_write_props
	local pid
	pid="$(kafka_pid)"
	if [[ -n "$pid" ]]; then
		log "kafka: already running (pid $pid)"
	else
		if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
			die "kafka: port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT is in use by another process (set RECSYS_KAFKA_PORT)"
		fi
		if [[ -n $KAFKA_SASL_SSL_PORT ]] && port_open "$KAFKA_SASL_SSL_PORT"; then
			die "kafka: port $KAFKA_SASL_SSL_PORT is in use by another process (set RECSYS_KAFKA_SASL_SSL_PORT)"
		fi
		if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
			local uuid
			uuid="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
			[[ -n "$uuid" ]] || die "kafka: StorageTool random-uuid failed"
			log "kafka: formatting storage (cluster id $uuid)"
			rm -rf "$KAFKA_DATA"
			# KRaft keeps SCRAM credentials in the metadata log; adding them at format time
			# spares a second JVM (kafka-configs) on every start.
			local scram=()
			[[ -z $KAFKA_SASL_SSL_PORT ]] ||
				scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]")
			kafka_java kafka.tools.StorageTool format -t "$uuid" -c "$KAFKA_PROPS" --standalone "${scram[@]}" \
				>"$KAFKA_DIR/format.log" 2>&1 || fail_with_log "kafka: storage format failed" "$KAFKA_DIR/format.log"
		fi
		[[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
		log "kafka: starting $KAFKA_VERSION on $HOST:$KAFKA_PORT"
		# CompileThresholdScaling: a broker at the JIT's default thresholds takes ~20 minutes of
		# intermittent benchmark load to compile its hot paths, and until then costs 2-5x the
		# CPU per event (169 -> 35 us per auto-logged list here); at 0.05 it is warm after two
		# runs of a minute (docs/performance-log.md, session 26), with the same idle cost.
		# RECSYS_KAFKA_JIT=quick trades that for a cheap start.
		# shellcheck disable=SC2086 # KAFKA_HEAP is a list of flags
		setsid nohup java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 "$KAFKA_JIT" \
			-Djava.awt.headless=true \
			-Dorg.slf4j.simpleLogger.showDateTime=true \
			"-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss.SSS" \
			-Dorg.slf4j.simpleLogger.defaultLogLevel=info \
			-cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_PROPS" </dev/null >"$KAFKA_LOG" 2>&1 9>&- &
		pid=$!
		echo "$pid" >"$KAFKA_PID"
	fi
	local i
	for ((i = 0; i < KAFKA_TIMEOUT * 5; i++)); do
		pid_alive "$pid" || fail_with_log "kafka: broker process exited during startup" "$KAFKA_LOG"
		if grep -q "Kafka Server started" "$KAFKA_LOG" 2>/dev/null && port_open "$KAFKA_PORT" &&
			{ [[ -z $KAFKA_SASL_SSL_PORT ]] || port_open "$KAFKA_SASL_SSL_PORT"; }; then
			return 0
		fi
		sleep 0.2
	done
	fail_with_log "kafka: broker not ready on $HOST:$KAFKA_PORT after ${KAFKA_TIMEOUT}s" "$KAFKA_LOG"
}

kafka_stop() {
	local pid
	pid="$(kafka_pid)"
	if [[ -z "$pid" ]]; then
		log "kafka: not running"
		rm -f "$KAFKA_PID"
		return 0
	fi
	log "kafka: stopping (pid $pid)"
	kill "$pid" 2>/dev/null || true
	wait_gone "$pid" 30
	rm -f "$KAFKA_PID"
}

# ---------------------------------------------------------------- commands

print_env() {
	cat <<EOF
export DATABASE_URL='$DATABASE_URL'
export ONLINE_CACHE_REDIS_URL='$REDIS_URL'
export KAFKA_BOOTSTRAP_SERVERS='$KAFKA_BROKERS'
export RECSYS_TEST_PG_DSN='$DATABASE_URL'
export RECSYS_TEST_REDIS_URL='$REDIS_URL'
export RECSYS_TEST_KAFKA_BROKERS='$KAFKA_BROKERS'
export RECSYS_SERVICES_SCRIPT='$SCRIPT_PATH'
EOF
}

service_fn() {
	case "$1" in
	pg | postgres | postgresql) echo pg ;;
	redis) echo redis ;;
	kafka) echo kafka ;;
	*) die "unknown service '$1' (want pg, redis or kafka)" ;;
	esac
}

status_one() {
	local s="$1" up=0 detail=""
	case "$s" in
	pg)
		pg_ready && up=1
		detail="$HOST:$PG_PORT"
		;;
	redis)
		[[ -n "$(redis_pid)" ]] && redis_ping && up=1
		detail="$HOST:$REDIS_PORT"
		;;
	kafka)
		[[ -n "$(kafka_pid)" ]] && port_open "$KAFKA_PORT" && up=1
		detail="$HOST:$KAFKA_PORT (Kafka $KAFKA_VERSION)"
		;;
	esac
	if ((up)); then
		printf '%-6s up    %s\n' "$s" "$detail"
	else
		printf '%-6s down  %s\n' "$s" "$detail"
		return 1
	fi
}

cmd_up() {
	lock
	local t0=$SECONDS
	# Install everything first so that a slow download does not leave some services up.
	pg_install
	redis_install
	pgbouncer_install
	kafka_install
	pg_start
	redis_start
	kafka_start
	log "all services up ($((SECONDS - t0))s); data in $SERVICES_DIR"
	print_env
}

cmd_down() {
	local purge=0
	[[ "${1:-}" == "--purge" ]] && purge=1
	[[ -n "${1:-}" && $purge == 0 ]] && die "down: unknown option '$1'"
	lock
	kafka_stop
	redis_stop
	pg_stop
	if ((purge)); then
		log "purging data in $SERVICES_DIR (pg, redis, kafka)"
		rm -rf "$PG_DIR" "$REDIS_DIR" "$KAFKA_DIR"
		[[ "$(pg_sockdir)" == /tmp/* ]] && rm -rf "$(pg_sockdir)"
	fi
	log "all services down"
}

cmd_status() {
	local rc=0 s
	for s in pg redis kafka; do
		status_one "$s" || rc=1
	done
	return $rc
}

# cmd_sweep stops the servers of private instances (pkg/testutil.StartPrivate: a
# ${TMPDIR:-/tmp}/recsys-private-* dir naming its test process in owner.pid) whose test process
# is gone, and deletes their dirs. A test stops its own in its cleanup, which a test binary
# killed by `go test -timeout` never runs; a live owner's instance is left alone.
cmd_sweep() {
	local d owner
	for d in "${TMPDIR:-/tmp}"/recsys-private-*; do
		[[ -f $d/owner.pid ]] || continue
		owner=$(cat "$d/owner.pid" 2>/dev/null || true)
		[[ $owner =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null && continue
		log "sweep: stopping the servers a test left in $d"
		RECSYS_SERVICES_DIR=$d bash "$SCRIPT_PATH" down >/dev/null 2>&1 || true
		rm -rf "$d"
	done
	# pkg/testutil.StartPgBouncer's dirs: the pooler dies with its test process (it is its
	# child, with a parent-death signal); only its dir is left, and a pooler that outlived it.
	local pid
	for d in "${TMPDIR:-/tmp}"/recsys-pgbouncer-*; do
		[[ -f $d/owner.pid ]] || continue
		owner=$(cat "$d/owner.pid" 2>/dev/null || true)
		[[ $owner =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null && continue
		pid="$(read_pid "$d/pgbouncer.pid")"
		if pid_matches "$pid" "$d/pgbouncer.ini"; then
			log "sweep: stopping the pgbouncer a test left in $d"
			kill -9 "$pid" 2>/dev/null || true
		fi
		rm -rf "$d"
	done
}

usage() {
	sed -n '2,27p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "$cmd" in
	up | down | start | stop | restart | sweep) need_root "$cmd" ;;
	esac
	case "$cmd" in
	up) cmd_up ;;
	down) cmd_down "$@" ;;
	status) cmd_status ;;
	sweep) cmd_sweep ;;
	env) print_env ;;
	start | stop | restart)
		[[ $# -eq 1 ]] || usage
		local s
		s="$(service_fn "$1")"
		lock
		case "$cmd" in
		start) "${s}_start" ;;
		stop) "${s}_stop" ;;
		restart)
			"${s}_stop"
			"${s}_start"
			;;
		esac
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
