#!/usr/bin/env bash
# The runtime benchmarks (figures in the README). First, side by side with llama.cpp's
# own llama-server (scripts/llama-server.sh builds it, native Release), alternating, same
# threads, slots and context: SmolLM2, Gemma 3 270M, and llama GGUFs of 1B and 7B shapes
# with random Q4_0 weights (scripts/make-shaped-gguf.py; no 7B model can be fetched
# here, and speed and memory depend on shapes, not values). Then: cold start and
# tokens/s, sealed vs plaintext, in process; the watermark's cost; HTTP load with 1, 4
# and 8 clients; the usage ledger's cost; license server renewals/s on SQLite and
# PostgreSQL. Run on an otherwise idle machine.
#
#   scripts/bench.sh              # everything (about an hour on 2 cores, once built)
#   scripts/bench.sh parity       # only the side-by-side comparison
#   scripts/bench-tpm.sh          # what TPM-held node keys add to a start (swtpm)
#   BENCH_PARITY_MODELS="smollm2 gemma3 1b 7b"  BENCH_THREADS=2  BENCH_ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
smollm2="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
gemma="$(scripts/fetch-model.sh gemma3 | tail -n 1)"
threads="${BENCH_THREADS:-2}"
cargo build --quiet --bins --examples
lh="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/leasehold"

cache="${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}"
shaped() { # 1b|7b -> path of the generated GGUF
  local out="$cache/bench/llama-$1-q4_0.gguf"
  if [ ! -f "$out" ]; then
    mkdir -p "$cache/bench"
    if ! "$cache/bench-venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
      python3 -m venv "$cache/bench-venv"
      "$cache/bench-venv/bin/pip" install -q 'gguf==0.17.1' numpy
    fi
    "$cache/bench-venv/bin/python" scripts/make-shaped-gguf.py "$1" "$out" >&2
  fi
  echo "$out"
}
peer="$(scripts/llama-server.sh | tail -n 1)"
echo "llama-server: $peer (llama-cpp-python ${LLAMA_CPP_PYTHON:-0.3.36}'s llama.cpp); leasehold: llama-cpp-sys-2 $(grep -A1 'name = "llama-cpp-sys-2"' Cargo.lock | sed -n 's/version = //p')"
for m in ${BENCH_PARITY_MODELS:-smollm2 gemma3 1b 7b}; do
  case "$m" in
    smollm2) file="$smollm2" ;;
    gemma3) file="$gemma" ;;
    *) file="$(shaped "$m")" ;;
  esac
  echo; echo "== $m"
  cargo run --quiet --example bench_parity -- "$lh" "$peer" "$file" "$threads" "${BENCH_ROUNDS:-2}"
done
[ "${1:-}" = "parity" ] && exit 0
cargo run --quiet --example bench_runtime -- "$smollm2" "$threads" 7
cargo run --quiet --example bench_runtime -- "$gemma" "$threads" 7
# The license-mandated watermark: tokens/s with and without (same engine, alternating
# rounds) and the perplexity of a fixed text under its bias.
cargo run --quiet --example bench_watermark -- "$smollm2" "$threads" 6
cargo run --quiet --example bench_watermark -- "$gemma" "$threads" 6

work="$(mktemp -d)"
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
repo="$PWD"
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
