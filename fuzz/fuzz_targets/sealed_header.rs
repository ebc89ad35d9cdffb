//! Fuzz the sealed-model header parser and the container's structural checks.
#![no_main]

use leasehold::fuzzing::sealed_header_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealed_header_input(data));
