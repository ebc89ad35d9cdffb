#!/usr/bin/env bash
# The binary a vendor ships: built without the demo root, with the vendor's roots.
#
#   scripts/release-binary.sh               # cargo build --release --no-default-features;
#                                           # prints the binary's path on the last line
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

case "${1:-}" in
  --check) check "${2:?--check PATH}"; exit 0 ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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
# shellcheck disable=SC2086
cargo build --release --locked --bin leasehold --no-default-features ${LEASEHOLD_BUILD_FLAGS:-}
binary="${CARGO_TARGET_DIR:-target}/release/leasehold"
check "$binary"
echo "$binary"
