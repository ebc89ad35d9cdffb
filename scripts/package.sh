#!/usr/bin/env bash
# Build the Debian package: target/debian/leasehold_<version>-1_<arch>.deb.
#
#   scripts/package.sh                    # release build with the roots in keys/roots/ and
#                                         # never the demo root (scripts/release-binary.sh)
#   scripts/package.sh --binary PATH      # package an already built binary (the tests)
#   scripts/package.sh --out DIR          # where the .deb goes
#
# Refuses a binary whose `--version` says DEMO (it trusts the demo root, whose secret key
# is public), and to build when keys/roots/ holds no root public key. Stages the binary
# (debug info stripped), shell completions and man pages generated from it in
# target/deb-stage/, then runs `cargo deb --no-build` (cargo install cargo-deb).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "package: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "package: cargo-deb is missing; run scripts/setup.sh --test (or: cargo install cargo-deb --locked)" >&2
  exit 1
fi
if [ -z "$binary" ]; then
  binary="$(scripts/release-binary.sh | tail -n 1)"
else
  scripts/release-binary.sh --check "$binary"
fi

# llama.cpp's libraries: beside a staged binary (../lib/leasehold, from
# release-binary.sh), else where the binary's loader finds them (a test build).
native="$(dirname "$binary")/../lib/leasehold"
if [ ! -d "$native" ]; then
  libllama="$(ldd "$binary" | awk '$1 ~ /^libllama\.so/ {print $3}')"
  [ -f "$libllama" ] || { echo "package: cannot find the libllama $binary links" >&2; exit 1; }
  native="$(dirname "$libllama")"
fi
backends="$native/backends"
[ -d "$backends" ] || backends="$native/../backends"

stage="target/deb-stage"
rm -rf "$stage"
mkdir -p "$stage/completions" "$stage/man" "$stage/lib/leasehold/backends"
strip --strip-debug -o "$stage/leasehold" "$binary"
# Copied unchanged (never stripped): the binary checks their SHA-256.
cp -L "$native"/lib*.so.[0-9] "$stage/lib/leasehold/"
cp "$backends"/libggml-cpu-*.so "$stage/lib/leasehold/backends/"
"$stage/leasehold" completions bash > "$stage/completions/leasehold.bash"
"$stage/leasehold" completions zsh > "$stage/completions/_leasehold"
"$stage/leasehold" completions fish > "$stage/completions/leasehold.fish"
"$stage/leasehold" man --out-dir "$stage/man" >/dev/null
gzip -9n "$stage"/man/*.1

mkdir -p "$out"
cargo deb --no-build --no-strip --locked --output "$out"
