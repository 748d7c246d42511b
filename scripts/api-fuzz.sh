#!/usr/bin/env bash
# scripts/api-fuzz.sh [ARTIFACTS_DIR] — property-based fuzzing of a live `recsys all` against
# its own GET /openapi.json with schemathesis: any 5xx, a status code or body the document does
# not describe, a value the document calls valid that the server refuses (or the reverse).
# For operators and developers; NOT part of make test or .ci/run (it installs from PyPI).
#
# Needs the real services and their environment (eval "$(scripts/services.sh env)"): the run
# gets its own database recsys_fuzz_<random>, Kafka topics, consumer group and Redis key
# prefix, all removed at the end (STACK_KEEP_DB=1 keeps the database and topics).
#
# Tunables (environment): FUZZ_VENV (default $HOME/.cache/recsys/schemathesis-venv),
# FUZZ_EXAMPLES (test cases per operation and phase, default 200), FUZZ_SEED, FUZZ_PORT
# (default: a free one), FUZZ_ST_ARGS (more `st run` arguments), STACK_READY_TIMEOUT (90).
# Exit status: schemathesis' (0: no failure); reports in ARTIFACTS_DIR (default
# ci-artifacts/api-fuzz).
#
# Every check runs. scripts/api_fuzz_hooks.py keeps generated event times inside the server's
# window and impression items unique (rules the document states in words only), and drops the
# failures of pydantic-style lax coercion the contract requires (false or "1.5" taken for a
# number). The auth and resource checks find nothing to test: the API has no authentication and
# no resources to create or delete.
set -uo pipefail
cd "$(dirname "$0")/.."

ART="${1:-ci-artifacts/api-fuzz}"
mkdir -p "$ART"
ART="$(cd "$ART" && pwd)"
VENV="${FUZZ_VENV:-$HOME/.cache/recsys/schemathesis-venv}"
EXAMPLES="${FUZZ_EXAMPLES:-200}"
READY_TIMEOUT="${STACK_READY_TIMEOUT:-90}"

# shellcheck source=scripts/private-stack.sh
source scripts/private-stack.sh
private_stack_init fuzz

cleanup() {
	stop_recsys
	drop_private_stack
}
trap cleanup EXIT

if [[ ! -x "$VENV/bin/st" ]]; then
	echo "== installing schemathesis into $VENV" >&2
	python3 -m venv "$VENV" && "$VENV/bin/pip" install -q schemathesis || exit 1
fi

echo "== build, database $DB" >&2
go build -o "$BIN" . || exit 1
"$PSQL" -X -q "$ADMIN_URL" -c "CREATE DATABASE $DB" || exit 1
private_stack_env
"$BIN" migrate up >"$ART/migrate.log" 2>&1 || { cat "$ART/migrate.log" >&2; exit 1; }

PORT="${FUZZ_PORT:-$(free_port)}"
BASE="http://127.0.0.1:$PORT"
"$BIN" all --http.addr "127.0.0.1:$PORT" >"$ART/recsys.log" 2>&1 &
PID=$!
wait_ready || exit 1

echo "== schemathesis against $BASE/openapi.json ($EXAMPLES examples per operation)" >&2
# shellcheck disable=SC2086 # FUZZ_ST_ARGS is a list of arguments
SCHEMATHESIS_HOOKS="$PWD/scripts/api_fuzz_hooks.py" "$VENV/bin/st" run "$BASE/openapi.json" \
	--checks all --output-sanitize false \
	--phases examples,coverage,fuzzing \
	--max-examples "$EXAMPLES" --workers 2 --continue-on-failure \
	${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
	--report junit,ndjson --report-dir "$ART" \
	${FUZZ_ST_ARGS:-} | tee "$ART/schemathesis.txt"
rc=${PIPESTATUS[0]}
if grep -q '"level":"ERROR"' "$ART/recsys.log"; then
	echo "recsys logged errors during the run (see $ART/recsys.log)" >&2
fi
exit "$rc"
