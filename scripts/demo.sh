#!/usr/bin/env bash
# The main job on the demo model, end to end, on this machine:
#   fetch SmolLM2-135M-Instruct, seal it, enroll this machine as a node, issue a
#   license signed by the DEMO root, then inspect and check it.
# Work files go to ${LEASEHOLD_DEMO_DIR:-$HOME/.cache/leasehold/demo}, outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

scripts/setup.sh
model="$(scripts/fetch-model.sh smollm2 | tail -n 1)"
cargo build --quiet
lh="$repo/target/debug/leasehold"
[ -n "${CARGO_TARGET_DIR:-}" ] && lh="$CARGO_TARGET_DIR/debug/leasehold"

work="${LEASEHOLD_DEMO_DIR:-$HOME/.cache/leasehold/demo}"
mkdir -p "$work"
cd "$work"
step() { printf '\n$ leasehold %s\n' "$*"; "$lh" "$@"; }

echo "demo directory: $work"
step enroll --node-dir node --out node.enroll --use-case "leasehold demo" --data-handling "local only"
if [ ! -f smollm2.sealed ] || [ ! -f smollm2.key ]; then
  # A content key is never overwritten; start the pair afresh.
  rm -f smollm2.sealed smollm2.key
  step seal "$model" --model-id smollm2-135m-instruct --out smollm2.sealed --key-out smollm2.key
fi
step issue --key "$repo/keys/demo/root.key" --enrollment node.enroll --sealed smollm2.sealed \
  --content-key smollm2.key --licensee "Demo Org" --expires +1h --grace 5m --out demo.license
step inspect demo.license --node-dir node
step check --license demo.license --sealed smollm2.sealed --node-dir node
