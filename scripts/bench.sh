#!/usr/bin/env bash
# The runtime benchmarks (figures in the README): cold start and tokens/s, sealed vs
# plaintext, for SmolLM2 and Gemma 3 270M; the watermark's cost; then HTTP load with 1, 4 and 8 clients; the
# usage ledger's cost; then license server renewals/s on SQLite and PostgreSQL.
# Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
smollm2="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
gemma="$(scripts/fetch-model.sh gemma3 | tail -n 1)"
threads="${BENCH_THREADS:-2}"
cargo build --quiet --bins --examples
cargo run --quiet --example bench_runtime -- "$smollm2" "$threads" 7
cargo run --quiet --example bench_runtime -- "$gemma" "$threads" 7
# The license-mandated watermark: tokens/s with and without (same engine, alternating
# rounds) and the perplexity of a fixed text under its bias.
cargo run --quiet --example bench_watermark -- "$smollm2" "$threads" 6
cargo run --quiet --example bench_watermark -- "$gemma" "$threads" 6

work="$(mktemp -d)"
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
repo="$PWD"
lh="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/leasehold"
(cd "$work" && "$lh" enroll --node-dir node --out node.enroll >/dev/null &&
  "$lh" seal "$smollm2" --model-id smollm2 --out m.sealed --key-out m.key >/dev/null &&
  "$lh" issue --key "$repo/keys/demo/root.key" --enrollment node.enroll --sealed m.sealed \
    --content-key m.key --licensee Bench --expires +2h --out x.license 2>/dev/null)
"$lh" serve --license "$work/x.license" --sealed "$work/m.sealed" --node-dir "$work/node" \
  --listen 127.0.0.1:8399 --threads "$threads" --parallel 4 > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do grep -q "serving model" "$work/serve.log" && break; sleep 0.5; done
cargo run --quiet --example bench_http -- http://127.0.0.1:8399 smollm2 128 4

kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

# The usage ledger's cost: the same 8-client load with and without it, alternating.
cargo run --quiet --example bench_ledger_http -- "$lh" "$work" smollm2 32 4 20 "$threads"
cargo run --quiet --example bench_ledger_http -- "$lh" "$work" smollm2 1 16 6 "$threads"
cargo run --quiet --example bench_ledger -- 1 2000
cargo run --quiet --example bench_ledger -- 8 2000

# License server: renewals/s with 1,000 simulated nodes, SQLite then PostgreSQL.
cargo run --quiet --example bench_renewals -- sqlite 1000 16 10
cargo run --quiet --example bench_renewals -- sqlite 1000 64 10
pg="$(scripts/postgres.sh | tail -n 1)"
psql "$pg" -qc "DROP DATABASE IF EXISTS leasehold_bench" -c "CREATE DATABASE leasehold_bench"
cargo run --quiet --example bench_renewals -- "${pg%/*}/leasehold_bench" 1000 64 10
