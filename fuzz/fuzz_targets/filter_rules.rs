//! Fuzz the output-filter rules file reader, the rule compiler, and the streaming filter.
#![no_main]

use leasehold::fuzzing::filter_rules_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| filter_rules_input(data));
