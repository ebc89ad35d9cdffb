//! Fuzz `audit verify-attestation`: the attestation envelope and body.
#![no_main]

use leasehold::fuzzing::attestation_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| attestation_input(data));
