//! Fuzz the usage-ledger reader: `audit verify`'s chain check and `audit report`'s tally.
#![no_main]

use leasehold::fuzzing::ledger_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ledger_input(data));
