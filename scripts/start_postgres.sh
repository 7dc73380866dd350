#!/usr/bin/env bash
# Start a throwaway local PostgreSQL for the store's tests and print its URL (the only line on stdout):
#   export TAPPER_TEST_PG_URL=$(scripts/start_postgres.sh)
# Installs the server with apt-get when missing (needs root), keeps its own cluster in $TAPPER_PG_DIR
# (default /tmp/tapper-pg), listens on 127.0.0.1 only, trusts local connections, and is idempotent:
# a second call finds the running server and prints the same URL.
set -euo pipefail
port=${TAPPER_PG_PORT:-54329}
dir=${TAPPER_PG_DIR:-/tmp/tapper-pg}
db=${TAPPER_PG_DB:-tapper_test}
log() { echo "start_postgres: $*" >&2; }

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" != 0 ]; then log "PostgreSQL is not installed and installing it needs root"; exit 1; fi
  log "installing PostgreSQL with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  bindir=$(find_bindir)
fi

# The server refuses to run as root: run it as the `postgres` account when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
fi

if [ ! -f "$dir/PG_VERSION" ]; then
  log "creating a cluster in $dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bindir/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --no-sync >/dev/null
fi

if ! as_pg "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  log "starting the server on 127.0.0.1:$port"
  as_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on" start >/dev/null
fi

if ! as_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
    | grep -q 1; then
  as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
fi
echo "postgresql://postgres@127.0.0.1:$port/$db"
