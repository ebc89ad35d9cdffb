#!/usr/bin/env bash
# The binary a vendor ships: built without the demo root, with the vendor's roots.
#
#   scripts/release-binary.sh               # the node's binary: cargo build --release
#                                           # --no-default-features --features tpm,inference;
#                                           # stages target/release/dist/{bin,lib/leasehold}
#                                           # and prints the binary's path on the last line
#   scripts/release-binary.sh --server      # the license server's and vendor's binary: no
#                                           # llama.cpp, no TPM (no cmake, clang or libtss2),
#                                           # staged as target/release/dist-server/bin/leasehold
#   scripts/release-binary.sh --check PATH  # refuse PATH if it trusts the demo root
#
# The build fails, before compiling anything, when keys/roots/ (or LEASEHOLD_ROOTS_DIR,
# which build.rs reads too) holds no root public key; the result is refused when its
# `--version` says DEMO. LEASEHOLD_BUILD_FLAGS adds cargo flags (e.g. --features ...).
# scripts/package.sh and packaging/Containerfile build through this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Refuse a binary that trusts the demo root: its secret key is in this repository.
check() {
  local binary="$1" version
  [ -x "$binary" ] || { echo "release: no executable at $binary" >&2; exit 1; }
  version="$("$binary" --version)" || { echo "release: $binary --version failed" >&2; exit 1; }
  if grep -q DEMO <<<"$version"; then
    {
      echo "release: $binary trusts the DEMO root, whose secret key is public (keys/demo/root.key):"
      echo "  anyone could sign licenses it accepts. Build it with your root in keys/roots/ and"
      echo "  without the demo root: scripts/release-binary.sh (cargo build --release --no-default-features)."
      echo "$version" | sed 's/^/  | /'
    } >&2
    exit 1
  fi
  echo "$version" | sed 's/^/release: /' >&2
}

server=false
case "${1:-}" in
  --check) check "${2:?--check PATH}"; exit 0 ;;
  --server) server=true ;;
  "") ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "release: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

roots="${LEASEHOLD_ROOTS_DIR:-keys/roots}"
if ! compgen -G "$roots/*.pub" >/dev/null; then
  {
    echo "release: $roots/ holds no root public key (NAME.pub), and a release never trusts the"
    echo "  demo root. Make your root on an offline machine and copy its public half here:"
    echo "    leasehold keygen --out vendor-root        # keep vendor-root.key offline"
    echo "    cp vendor-root.pub $roots/vendor.pub"
  } >&2
  exit 1
fi
target="${CARGO_TARGET_DIR:-target}/release"
if $server; then
  # shellcheck disable=SC2086
  cargo build --release --locked --bin leasehold --no-default-features ${LEASEHOLD_BUILD_FLAGS:-}
  dist="$target/dist-server"
  rm -rf "$dist"
  mkdir -p "$dist/bin"
  cp "$target/leasehold" "$dist/bin/leasehold"
  check "$dist/bin/leasehold"
  echo "$dist/bin/leasehold"
  exit 0
fi
scripts/setup.sh
# llama.cpp's libraries are where llama-cpp-sys-2's build script put them (its out_dir).
# shellcheck disable=SC2086
out_dir="$(cargo build --release --locked --bin leasehold --no-default-features --features tpm,inference ${LEASEHOLD_BUILD_FLAGS:-} \
  --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "llama-cpp-sys-2" in m["package_id"]:
        print(m["out_dir"])' | tail -n 1)"
[ -d "$out_dir/backends" ] || { echo "release: no llama.cpp build output found (out_dir '$out_dir')" >&2; exit 1; }
# The install layout: bin/leasehold finds ../lib/leasehold/ (its RUNPATH) and the CPU
# kernel modules in ../lib/leasehold/backends/. The libraries are copied unchanged:
# the binary checks their SHA-256 against the ones compiled in.
dist="$target/dist"
rm -rf "$dist"
mkdir -p "$dist/bin" "$dist/lib/leasehold/backends"
cp "$target/leasehold" "$dist/bin/leasehold"
cp -L "$out_dir"/lib/lib*.so.[0-9] "$dist/lib/leasehold/"
cp "$out_dir"/backends/libggml-cpu-*.so "$dist/lib/leasehold/backends/"
binary="$dist/bin/leasehold"
check "$binary"
echo "$binary"
