#!/usr/bin/env bash
# Start Debian's PostgreSQL on loopback (installing it when missing) and make sure a
# `leasehold` role that may create databases exists. Prints the connection URL the
# license server tests use (each test creates and drops its own database).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  scripts/setup.sh --test >&2
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
  $sudo pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -qx online; then
  echo "postgres: starting cluster $version/main" >&2
  $sudo pg_ctlcluster "$version" main start >&2
fi
port="$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')"
psql_admin() { $sudo -u postgres psql -p "$port" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ -z "$sudo" ]; then psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA $(printf '%q ' "$@")"; }; fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'leasehold'")" != "1" ]; then
  psql_admin -c "CREATE ROLE leasehold LOGIN CREATEDB PASSWORD 'leasehold'" >&2
fi
echo "postgres://leasehold:leasehold@127.0.0.1:$port/postgres"
