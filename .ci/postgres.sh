#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the parallel-worker tests and print its URL.
# Installs Debian's postgresql if it is missing. Usage: URL=$(bash .ci/postgres.sh [PORT])
set -euo pipefail
PORT="${1:-5439}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        postgresql >&2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
DATA="$(mktemp -d /tmp/nas-asc-pg.XXXXXX)"
if [ "$(id -u)" -eq 0 ]; then
    # the server refuses to run as root: run it as the postgres user the package created
    chown postgres "$DATA"
    AS_PG=(runuser -u postgres --)
else
    AS_PG=()
fi
"${AS_PG[@]}" "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DATA \
        -c max_connections=200" >&2
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres nas_asc_test
echo "postgresql://postgres@127.0.0.1:$PORT/nas_asc_test"
