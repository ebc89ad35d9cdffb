#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, fetches and
# checks the demo model, prepares a Python virtualenv with the official `openai`
# client (both cached outside the repo), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
LEASEHOLD_DEMO_MODEL="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
export LEASEHOLD_DEMO_MODEL

venv="${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}/venv"
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  echo "test: creating $venv with the openai client" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'openai>=1.40,<3'
fi
export LEASEHOLD_PYTHON="$venv/bin/python"

cargo test "$@"
