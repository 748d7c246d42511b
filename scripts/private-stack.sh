# scripts/private-stack.sh — sourced by scripts/stack-check.sh and scripts/api-fuzz.sh: a
# `recsys all` of their own on the running services (the environment of scripts/services.sh
# env), with its own database recsys_<id>, Kafka topics, consumer group and Redis key prefix.
#
#   private_stack_init PREFIX   checks the services' environment; sets ID, DB, BIN, PSQL, ADMIN_URL and STACK_DB_URL, and exports
#                               the run's topic names
#   private_stack_env           points the process' environment at the run's database, consumer
#                               group and key prefix (after the database exists)
#   free_port, wait_ready       a loopback port; /readyz of PID at BASE within READY_TIMEOUT
#   stop_recsys                 SIGTERM, up to 30 s, then SIGKILL (status 1)
#   drop_private_stack          drops the database and deletes the topics (not with
#                               STACK_KEEP_DB=1)

private_stack_init() {
	# In a script, a failed ${X:?} exits it.
	: "${DATABASE_URL:?DATABASE_URL is not set: eval \"\$(scripts/services.sh env)\" first}"
	: "${KAFKA_BOOTSTRAP_SERVERS:?KAFKA_BOOTSTRAP_SERVERS is not set}"
	: "${ONLINE_CACHE_REDIS_URL:?ONLINE_CACHE_REDIS_URL is not set}"
	ID="$1$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
	DB="recsys_${ID}"
	BIN=bin/recsys
	export KAFKA_TOPIC_IMPRESSIONS="recsys.${ID}.impressions.v1"
	export KAFKA_TOPIC_WATCHES="recsys.${ID}.watches.v1"
	ADMIN_URL="$DATABASE_URL"
	STACK_DB_URL="$(printf '%s' "$DATABASE_URL" | sed -E "s#^(postgres(ql)?://[^/]*)/[^?]*#\1/${DB}#")"
	PSQL="$(command -v psql || true)"
	if [[ -z "$PSQL" ]]; then
		PSQL="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/psql"
	fi
	PID=""
}

private_stack_env() {
	export DATABASE_URL="$STACK_DB_URL"
	export FEATURE_CONSUMER_GROUP_ID="recsys-${ID}"
	export RECSYS_REDIS_KEY_PREFIX="${ID}:"
	export LOG_FORMAT=json
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

wait_ready() {
	local deadline=$(($(date +%s) + READY_TIMEOUT))
	while [[ $(date +%s) -lt $deadline ]]; do
		if ! kill -0 "$PID" 2>/dev/null; then
			echo "recsys exited before it was ready; log tail:" >&2
			tail -n 30 "$ART/recsys.log" >&2
			return 1
		fi
		# The binary probes itself: no curl needed on the machine.
		if "$BIN" healthcheck --url "$BASE/readyz" >"$ART/readyz.txt" 2>&1; then
			return 0
		fi
		sleep 0.5
	done
	echo "/readyz not 200 within ${READY_TIMEOUT}s; last answer: $(cat "$ART/readyz.txt" 2>/dev/null)" >&2
	return 1
}

stop_recsys() {
	[[ -z "$PID" ]] && return 0
	kill -TERM "$PID" 2>/dev/null || return 0
	for _ in $(seq 1 300); do
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$PID" 2>/dev/null; then
		echo "recsys did not stop within 30s of SIGTERM; killing it" >&2
		kill -KILL "$PID" 2>/dev/null
		wait "$PID" 2>/dev/null
		PID=""
		return 1
	fi
	wait "$PID"
	local rc=$?
	PID=""
	return $rc
}

drop_private_stack() {
	[[ "${STACK_KEEP_DB:-0}" == 1 ]] && return 0
	"$PSQL" -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
	# The broker keeps its data between runs: without this every run left its topics behind.
	go run ./test/tools/deletetopics -brokers "$KAFKA_BOOTSTRAP_SERVERS" "$KAFKA_TOPIC_IMPRESSIONS" "$KAFKA_TOPIC_WATCHES" ||
		echo "could not delete this run's Kafka topics (see above)" >&2
}
