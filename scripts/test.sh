#!/usr/bin/env bash
# `make test`: start the real services (installing them when missing), gofmt, vet, then every test
# with the race detector and integration tests enabled. The test runner's summary is the last
# thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
ARTIFACTS="${ARTIFACTS:-ci-artifacts}"
mkdir -p "$ARTIFACTS"
start=$(date +%s)

# Not eval "$(...)": eval of an empty string succeeds, which would hide a failed `up`.
env_lines=$(bash scripts/services.sh up)
eval "$env_lines"
export RECSYS_INTEGRATION=1

echo "== gofmt" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files (run gofmt -w):" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "== go vet" >&2
go vet ./...
echo "== staticcheck" >&2
go tool staticcheck ./...

if [ -x scripts/stack-check.sh ]; then
  echo "== stack check (recsys all + smoke + load + guardrails + features verify)" >&2
  bash scripts/stack-check.sh "$ARTIFACTS"
fi

echo "== go test -race (integration enabled; services up $(( $(date +%s) - start ))s)" >&2
# A test binary killed by -timeout runs no cleanup: stop the private servers of tests (their
# process gone) before and after the run, so none holds ports or memory into the next one.
# recsys children of tests die with their test process (testutil.Command). Quiet in the exit
# trap: the runner's summary stays the last thing printed.
bash scripts/services.sh sweep
# A run that executed no test, or skipped one, must not pass (scripts/test-verdict.sh).
trap 'bash scripts/services.sh sweep 2>/dev/null; bash scripts/test-verdict.sh "$ARTIFACTS/go-test.json" || exit 1' EXIT
go tool gotestsum --format pkgname-and-test-fails --jsonfile "$ARTIFACTS/go-test.json" -- \
  -race -count=1 -timeout 25m ./...
