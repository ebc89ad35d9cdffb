#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, fetches and
# checks the demo model (cached outside the repo), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
LEASEHOLD_DEMO_MODEL="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
export LEASEHOLD_DEMO_MODEL

cargo test "$@"
