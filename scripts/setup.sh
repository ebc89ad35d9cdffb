#!/usr/bin/env bash
# Install what building leasehold needs, when it is missing:
#   cmake, clang and libclang-dev   (llama.cpp, built from source by llama-cpp-2)
#   python3 and pip                 (fetching the demo model from its PyPI wheel)
#   libtss2-dev, pkg-config         (the TPM 2.0 software stack the `tpm` feature links)
# With --test, also what the test suite and packaging need:
#   postgresql                      (the license server's replica tests; scripts/postgres.sh)
#   openssl                         (test certificates for the license server's TLS test)
#   cargo-deb                       (scripts/package.sh; the packaging test)
#   systemd                         (systemd-analyze verify on the units)
#   binutils                        (strip, for packaging)
#   faketime                        (tests that wind a real process's clock back, as an
#                                    operator would, against trusted time)
#   swtpm, swtpm-tools, tpm2-tools  (software TPMs the TPM tests start themselves; tpm2-tools
#                                    to look into one by hand)
#   chromium, chromium-driver       (the portal walked in a real headless browser, WebDriver)
# Rust itself (cargo, rustfmt, clippy) comes from rustup: https://rustup.rs
#
# It also removes the dangling lib*.so links llama-cpp-sys-2's build script leaves in
# the cargo target directory: that script fails ("File exists") when it runs again and
# finds them.
set -euo pipefail
cd "$(dirname "$0")/.."

testing=false
[ "${1:-}" = "--test" ] && testing=true

missing=()
command -v cmake   >/dev/null 2>&1 || missing+=(cmake)
command -v clang   >/dev/null 2>&1 || missing+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
dpkg -s libtss2-dev >/dev/null 2>&1 || missing+=(libtss2-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if $testing; then
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v strip >/dev/null 2>&1 || missing+=(binutils)
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
  command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
  command -v tpm2_getcap >/dev/null 2>&1 || missing+=(tpm2-tools)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi
if $testing && ! command -v cargo-deb >/dev/null 2>&1; then
  echo "setup: installing cargo-deb (builds the .deb; a few minutes, once)" >&2
  cargo install --quiet --locked cargo-deb --version 3.8.0
fi

target="${CARGO_TARGET_DIR:-target}"
for dir in "$target"/{debug,release} "$target"/{debug,release}/{deps,examples}; do
  [ -d "$dir" ] && find "$dir" -maxdepth 1 -name 'lib*.so' -xtype l -delete
done
exit 0
