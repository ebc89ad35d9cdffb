#!/usr/bin/env bash
# Copy the format vectors (docs/vectors, positive and negative) into the fuzz corpora
# they seed, named by SHA-1 as libFuzzer names its own finds. Run it after
# examples/make_test_vectors.rs changes a vector; existing seeds are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
v=docs/vectors
seed() { # seed TARGET FILE...
  local target=$1; shift
  mkdir -p "fuzz/corpus/$target"
  for file in "$@"; do
    [ -f "$file" ] || continue
    cp "$file" "fuzz/corpus/$target/$(sha1sum "$file" | cut -c1-40)"
  done
}
seed license_parser "$v"/*.license "$v"/negative/license-*.license
seed sealed_header "$v"/*.sealed
seed ledger_verify "$v"/*.ledger "$v"/negative/ledger-*.ledger
seed renewal_request "$v"/renewal-request-*.json
seed renewal_response "$v"/renewal-response-*.json "$v"/negative/renewal-response-*.json
seed attestation "$v"/attestation-*.json "$v"/negative/attestation-*.json
seed audit_answer "$v"/*.audit
seed signed_documents "$v"/*.enroll "$v"/*.cert "$v"/*.head "$v"/node-state-*.json
for target in fuzz/corpus/*/; do
  echo "$(basename "$target"): $(find "$target" -type f | wc -l) inputs"
done
