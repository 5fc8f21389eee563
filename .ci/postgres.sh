#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 (first free port from 54329) and print its
# URL on stdout. Installs the Debian package when the server binaries are missing.
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
data=$(mktemp -d /tmp/cartflow-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$data"
  as_pg=(runuser -u postgres --)
fi
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
