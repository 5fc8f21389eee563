#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 (first free port from 54329) and print its
# URL on stdout. Installs the Debian package when the server binaries are missing. Its files
# go to $CARTFLOW_PG_DATA (default: a new temporary folder); `postgres.sh stop FOLDER` stops
# the server kept there and removes the folder.
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ "${1:-}" = stop ]; then
  if [ -d "$2/db" ]; then
    [ "$(id -u)" = 0 ] && stop_as=(runuser -u postgres --) || stop_as=()
    "${stop_as[@]}" "$bindir/pg_ctl" -D "$2/db" -m fast stop >&2 || true
  fi
  rm -rf "$2"
  exit 0
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
as_pg=()
[ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
data=${CARTFLOW_PG_DATA:-$(mktemp -d /tmp/cartflow-pg.XXXXXX)}
[ "$(id -u)" = 0 ] && chown postgres "$data"
"${as_pg[@]}" "$bindir/initdb" -D "$data/db" -U postgres -A trust >&2
for port in $(seq "${CARTFLOW_PG_PORT:-54329}" $(( ${CARTFLOW_PG_PORT:-54329} + 20 ))); do
  if "${as_pg[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off" start >&2; then
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    exit 0
  fi
done
echo "no free port for PostgreSQL" >&2
exit 1
