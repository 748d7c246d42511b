#!/usr/bin/env bash
# scripts/stack-check.sh ARTIFACTS_DIR — run the operator tools against a real stack, as a
# deploy pipeline would. Called by scripts/test.sh (make test, .ci/run) with the real services
# up and their environment exported (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS,
# ONLINE_CACHE_REDIS_URL).
#
# Steps: build bin/recsys; create a fresh database recsys_ci_<random>; recsys migrate up and
# migrate check; start `recsys all` on a free loopback port with its own Kafka topics,
# consumer group and Redis key prefix; wait for /readyz; recsys smoke; recsys load (mixed
# traffic, autolog on, open loop, ~20 s); recsys guardrails against config/guardrails.ci.json;
# recsys features verify (the Redis copy against PostgreSQL); stop recsys with SIGTERM. Every JSON report, the load HTML report and the recsys log are
# kept in ARTIFACTS_DIR. Prints one line per step and exits 1 if any step failed.
#
# Tunables (environment): STACK_LOAD_RATE (operations/s, default 100), STACK_LOAD_DURATION
# (default 20s), STACK_READY_TIMEOUT (seconds, default 90), STACK_KEEP_DB=1 keeps the database and
# the run's Kafka topics.
set -uo pipefail
cd "$(dirname "$0")/.."

ART="${1:?usage: scripts/stack-check.sh ARTIFACTS_DIR}"
mkdir -p "$ART"
ART="$(cd "$ART" && pwd)"
LOAD_RATE="${STACK_LOAD_RATE:-100}"
LOAD_DURATION="${STACK_LOAD_DURATION:-20s}"
READY_TIMEOUT="${STACK_READY_TIMEOUT:-90}"

# shellcheck source=scripts/private-stack.sh
source scripts/private-stack.sh
private_stack_init ci

declare -a STEPS=()
FAILED=0
start_all=$(date +%s)

# step NAME CMD...: runs CMD, records its status and duration, never exits.
step() {
	local name="$1"
	shift
	local t0 rc
	t0=$(date +%s.%N)
	"$@"
	rc=$?
	local dt
	dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	if [[ $rc -eq 0 ]]; then
		STEPS+=("$(printf '%-16s ok      %6ss' "$name" "$dt")")
	else
		STEPS+=("$(printf '%-16s FAILED  %6ss  (exit %d)' "$name" "$dt" "$rc")")
		FAILED=1
	fi
	echo "-- $name: exit $rc in ${dt}s" >&2
	return $rc
}

summary() {
	echo "== stack check summary (database $DB, artifacts $ART)" >&2
	for s in "${STEPS[@]}"; do echo "   $s" >&2; done
	echo "   total $(($(date +%s) - start_all))s: $([[ $FAILED -eq 0 ]] && echo PASS || echo FAIL)" >&2
}

cleanup() {
	if [[ -n "$PID" ]]; then kill -KILL "$PID" 2>/dev/null; fi
	drop_private_stack
}
trap cleanup EXIT

# Default build flags, so the build cache is shared with go vet, go test and test/e2e.
step build go build -o "$BIN" . || { summary; exit 1; }
step create-db "$PSQL" -X -q "$ADMIN_URL" -c "CREATE DATABASE $DB" || { summary; exit 1; }

private_stack_env

step migrate-up "$BIN" migrate up || { summary; exit 1; }
step migrate-check "$BIN" migrate check --output-json "$ART/migrate-check.json" >/dev/null

PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
"$BIN" all --http.addr "127.0.0.1:$PORT" >"$ART/recsys.log" 2>&1 &
PID=$!
if step readyz wait_ready; then
	step smoke "$BIN" smoke --base-url "$BASE" --ready-timeout-sec 30 --outbox-timeout-sec 60 --output-json "$ART/smoke.json" >/dev/null
	step load "$BIN" load --base-url "$BASE" --scenario mixed --autolog-impressions --rate "$LOAD_RATE" --duration "$LOAD_DURATION" \
		--requests 1000000 --concurrency 32 --warmup 100 --progress never \
		--output-json "$ART/load.json" --output-html "$ART/load.html" >/dev/null
	step guardrails "$BIN" guardrails --base-url "$BASE" --days 1 --targets config/guardrails.ci.json \
		--save-dir "$ART" --output-json "$ART/guardrails.json"
	# The serving copy the load's stream built, against PostgreSQL, while recsys still runs.
	step features-verify "$BIN" features verify --sample 5000 --grace 5s >"$ART/features-verify.json"
fi
step stop-recsys stop_recsys
summary
exit $FAILED
