//! Fuzz what a license server reads from nodes: renewal requests and checkpoint reports.
#![no_main]

use leasehold::fuzzing::renewal_request_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| renewal_request_input(data));
