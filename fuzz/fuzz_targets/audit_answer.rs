//! Fuzz the license server's check of an audit answer (`POST /v1/audits/answer`,
//! `admin audit import`): header, records digest, the ledger run, the report's tally.
#![no_main]

use leasehold::fuzzing::audit_answer_input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| audit_answer_input(data));
