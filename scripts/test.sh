#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, fetches and
# checks the demo model, prepares a Python virtualenv with the official `openai`
# client (both cached outside the repo), starts PostgreSQL on loopback for the license
# server's replica tests, then runs every test (none may skip for a missing prerequisite).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
LEASEHOLD_DEMO_MODEL="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
export LEASEHOLD_DEMO_MODEL

venv="${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}/venv"
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  echo "test: creating $venv with the openai client" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'openai>=1.40,<3'
fi
export LEASEHOLD_PYTHON="$venv/bin/python"

LEASEHOLD_TEST_POSTGRES="$(scripts/postgres.sh | tail -n 1)"
export LEASEHOLD_TEST_POSTGRES
export LEASEHOLD_REQUIRE_ALL=1

cargo test "$@"
