#!/usr/bin/env bash
# The main job on the demo model, end to end, on this machine:
#   fetch SmolLM2-135M-Instruct, seal it, enroll this machine as a node, issue a
#   short license signed by the DEMO root, inspect and check it, start `serve`, send
#   one chat request, print the answer and /v1/license, then stop.
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

port="${LEASEHOLD_DEMO_PORT:-8181}"
log="$work/serve.log"
printf '\n$ leasehold serve --license demo.license --sealed smollm2.sealed --node-dir node --listen 127.0.0.1:%s\n' "$port"
"$lh" serve --license demo.license --sealed smollm2.sealed --node-dir node --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "serving model" "$log" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "demo: serve exited early" >&2; exit 1; }
  sleep 0.5
done
cat "$log"

python3 - "$port" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
body = {"model": "smollm2-135m-instruct", "max_tokens": 64, "temperature": 0,
        "messages": [{"role": "user", "content": "In one sentence, what is a software license?"}]}
req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    answer = json.load(r)
print("\n$ POST /v1/chat/completions")
print("answer:", answer["choices"][0]["message"]["content"].strip())
print("usage: ", answer["usage"])
with urllib.request.urlopen(base + "/v1/license", timeout=10) as r:
    print("\n$ GET /v1/license")
    print(json.dumps(json.load(r), indent=2))
PY
kill $pid
wait $pid 2>/dev/null || true
trap - EXIT
echo "demo: done (serve stopped)"
