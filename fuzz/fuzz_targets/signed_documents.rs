//! Fuzz the other signed documents: enrollments, node state, ledger heads, issuer certificates.
#![no_main]

use leasehold::fuzzing::signed_document_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signed_document_input(data));
