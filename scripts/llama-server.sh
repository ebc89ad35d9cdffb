#!/usr/bin/env bash
# Build llama.cpp's own llama-server, as its users build it (CMake Release, GGML_NATIVE=ON:
# the kernels for this machine's CPU), for the side-by-side benchmark (scripts/bench.sh).
# Prints the binary's path on the last line; nothing is rebuilt when it is already there.
#
# The source: llama-cpp-sys-2 (the crate leasehold links) ships llama.cpp without
# tools/server, so the peer is built from the most recent complete llama.cpp source on
# a registry this machine reaches: the one vendored in llama-cpp-python's sdist
# (LLAMA_CPP_PYTHON, default 0.3.36: ggml 0.25.3, against ggml 0.26.0 in
# llama-cpp-sys-2 0.1.161). scripts/bench.sh prints both versions beside its figures.
#
# Cache: ${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}/llama-server-<version>/. The first
# build takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${LLAMA_CPP_PYTHON:-0.3.36}"
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  # of 0.3.36's sdist
cache="${LEASEHOLD_CACHE:-$HOME/.cache/leasehold}"
root="$cache/llama-server-$version"
bin="$root/build/bin/llama-server"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

scripts/setup.sh
mkdir -p "$root"
if [ ! -f "$root/src/CMakeLists.txt" ]; then
  tmp="$(mktemp -d "$cache/.llama-server.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "llama-server: downloading llama-cpp-python==$version's sdist (about 75 MB)" >&2
  # Only this package as source: its build tools (scikit-build-core) may come as wheels.
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$version" >&2
  if [ "$version" = 0.3.36 ] && [ "$(sha256sum "$tmp/llama_cpp_python-$version.tar.gz" | cut -d' ' -f1)" != "$sha256" ]; then
    echo "llama-server: sha256 mismatch for llama-cpp-python $version's sdist; refusing it" >&2
    exit 1
  fi
  tar xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$tmp"
  rm -rf "$root/src"
  mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$root/src"
fi

echo "llama-server: building (Release, GGML_NATIVE=ON) in $root/build" >&2
# AMX off: llama.cpp's AMX kernels crash on Q4_1 models (SIGSEGV in
# ggml_backend_amx_mul_mat at the first prompt, seen on a Sapphire Rapids VM with both
# this build and llama-cpp-sys-2's), and leasehold leaves its AMX module out by default.
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$root/src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx" \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$root/configure.log" 2>&1 ||
  { tail -n 30 "$root/configure.log" >&2; exit 1; }
cmake --build "$root/build" --target llama-server -j "$(nproc)" >"$root/build.log" 2>&1 ||
  { tail -n 30 "$root/build.log" >&2; exit 1; }
echo "$bin"
