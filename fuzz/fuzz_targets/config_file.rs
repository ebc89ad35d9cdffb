//! Fuzz the daemons' config-file reader (`config check`, `--config`).
#![no_main]

use leasehold::fuzzing::config_file_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| config_file_input(data));
