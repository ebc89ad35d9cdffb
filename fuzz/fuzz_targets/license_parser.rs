//! Fuzz the license parser and the whole verification path: any input must give a
//! verdict, never a panic, in bounded memory.
#![no_main]

use leasehold::fuzzing::license_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| license_input(data));
