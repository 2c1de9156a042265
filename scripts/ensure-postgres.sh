#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 and that user
# `postgres` can log in over TCP with password `postgres` (the tests' DSN:
# postgresql://postgres:postgres@127.0.0.1:5432/postgres).
#
# Idempotent and quick when the server is already up. On a fresh Debian 12
# install (cluster 15/main, scram auth on 127.0.0.1, not started because no
# systemd) it creates the cluster if needed, starts it and sets the password.
# A server that already trusts local TCP connections is left as it is.
set -euo pipefail

HOST=127.0.0.1
PORT="${ENSURE_POSTGRES_PORT:-5432}"  # override only to test this script
export PGCONNECT_TIMEOUT=5

log() { echo "ensure-postgres: $*" >&2; }

can_login() {
  PGPASSWORD=postgres psql -X -q -w -h "$HOST" -p "$PORT" -U postgres -d postgres \
    -tAc 'select 1' >/dev/null 2>&1
}

as_postgres() {
  if [ "$(id -un)" = "postgres" ]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

# Fast path: up and the password (or trust) works.
if pg_isready -q -h "$HOST" -p "$PORT" && can_login; then
  exit 0
fi

if ! pg_isready -q -h "$HOST" -p "$PORT"; then
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "no PostgreSQL server tools; run: scripts/ensure-system-packages.sh test"
    exit 1
  fi
  # The cluster configured for our port, else create <newest version>/main.
  cluster="$(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p { print $1 " " $2; exit }')"
  if [ -z "$cluster" ]; then
    version="$(ls /usr/lib/postgresql/ 2>/dev/null | sort -V | tail -1)"
    if [ -z "$version" ]; then
      log "no PostgreSQL server installed; run: scripts/ensure-system-packages.sh test"
      exit 1
    fi
    log "creating cluster $version/main on port $PORT"
    pg_createcluster --port "$PORT" "$version" main >/dev/null
    cluster="$version main"
  fi
  read -r version name <<<"$cluster"
  log "starting cluster $version/$name"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
  for _ in $(seq 1 60); do
    if pg_isready -q -h "$HOST" -p "$PORT"; then
      break
    fi
    sleep 0.5
  done
  if ! pg_isready -q -h "$HOST" -p "$PORT"; then
    log "PostgreSQL $version/$name did not come up on $HOST:$PORT"
    pg_lsclusters >&2 || true
    tail -n 20 "/var/log/postgresql/postgresql-$version-$name.log" >&2 2>/dev/null || true
    exit 1
  fi
fi

if can_login; then
  exit 0
fi

# Fresh Debian cluster: peer auth over the Unix socket as the postgres OS user.
log "setting password for database user postgres"
as_postgres psql -X -q -p "$PORT" -d postgres -c "ALTER USER postgres WITH PASSWORD 'postgres'" >/dev/null

if ! can_login; then
  log "cannot log in as postgres/postgres on $HOST:$PORT; check pg_hba.conf"
  exit 1
fi
