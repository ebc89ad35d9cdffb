//! Fuzz what a node reads from its license server: renewal responses and checkpoint receipts.
#![no_main]

use leasehold::fuzzing::renewal_response_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| renewal_response_input(data));
