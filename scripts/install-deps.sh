#!/usr/bin/env bash
# Installs what `make run` needs from Debian's packages when it is missing. Idempotent.
# Usage: scripts/install-deps.sh postgres
set -euo pipefail

have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "installing needs root: run this as root, or install sudo (missing: $*)" >&2
    exit 1
  fi
}

for dep in "$@"; do
  case "$dep" in
    postgres)
      if ! have_pg; then
        echo "installing PostgreSQL from Debian packages..." >&2
        as_root apt-get update -qq
        # Through env: sudo drops variables set in front of it.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      fi
      ;;
    *) echo "unknown dependency $dep" >&2; exit 2 ;;
  esac
done
if ! command -v go >/dev/null 2>&1; then
  echo "Go is not installed: install Go 1.26 or newer (https://go.dev/doc/install)" >&2
  exit 1
fi
