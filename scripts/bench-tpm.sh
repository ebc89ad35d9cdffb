#!/usr/bin/env bash
# What a TPM costs a node's start: `leasehold check` (load the node keys, verify the
# license, unwrap the content key, decrypt and check the sealed demo model) on a node
# enrolled with file keys and on one enrolled with --tpm against a software TPM
# (swtpm), alternating, ROUNDS rounds each; medians and the difference. On swtpm, the
# TPM's own work is a loopback socket away; a hardware TPM is slower per command.
#
#   scripts/bench-tpm.sh [ROUNDS]        # default 11
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-11}"
scripts/setup.sh --test
model="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
cargo build --quiet --bin leasehold
lh="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/leasehold"
repo="$PWD"
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
mkdir -p "$work/tpm-state"
swtpm socket --tpm2 --server "type=tcp,bindaddr=127.0.0.1,port=$port" \
  --ctrl "type=tcp,bindaddr=127.0.0.1,port=$((port + 1))" \
  --tpmstate "dir=$work/tpm-state" --flags not-need-init,startup-clear &
tpm_pid=$!
trap 'kill $tpm_pid 2>/dev/null || true; rm -rf "$work"' EXIT
export TCTI="swtpm:host=127.0.0.1,port=$port"
sleep 0.5
cd "$work"
"$lh" seal "$model" --model-id smollm2 --out m.sealed --key-out m.key >/dev/null
for kind in file tpm; do
  flags=()
  [ "$kind" = tpm ] && flags=(--tpm)
  "$lh" enroll --node-dir "$kind" --out "$kind.enroll" "${flags[@]}" >/dev/null
  "$lh" issue --key "$repo/keys/demo/root.key" --enrollment "$kind.enroll" --sealed m.sealed \
    --content-key m.key --licensee Bench --expires +1h --out "$kind.license" >/dev/null
done
for ((i = 0; i < rounds; i++)); do
  for kind in file tpm; do
    start=$(date +%s%N)
    "$lh" check --license "$kind.license" --sealed m.sealed --node-dir "$kind" >/dev/null
    echo "$kind $(( ($(date +%s%N) - start) / 1000 ))" >>times
  done
done
python3 - "$rounds" <<'PY'
import statistics, sys
t = {"file": [], "tpm": []}
for line in open("times"):
    kind, us = line.split()
    t[kind].append(int(us) / 1000)
f, p = statistics.median(t["file"]), statistics.median(t["tpm"])
print(f"leasehold check, SmolLM2 sealed, {sys.argv[1]} rounds alternating (ms): "
      f"file keys median {f:.1f} (min {min(t['file']):.1f}), "
      f"TPM keys (swtpm) median {p:.1f} (min {min(t['tpm']):.1f}); TPM adds {p - f:.1f} ms")
PY
