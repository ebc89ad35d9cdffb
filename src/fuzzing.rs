//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (tests/fuzz_corpus.rs), so both exercise exactly the same code.

use chrono::{TimeZone, Utc};

use crate::license::{assess, Checks, TrustRoots};
use crate::node::hardware::HardwareProfile;
use crate::node::trusted_time::TimeContext;
use crate::seal::Header;

/// Feed bytes to the license verification path as `inspect` would (no node keys).
pub fn license_input(data: &[u8]) {
    let profile = HardwareProfile::default();
    let checks = Checks {
        node: None,
        hardware: Some(&profile),
        time: TimeContext::new(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(), None),
        memory: None,
    };
    let assessment = assess(data, &TrustRoots::compiled_in(), &checks);
    let _ = assessment.verdict.explain(checks.time.now);
}

/// Feed bytes to the sealed-header parser and the length arithmetic built on it.
pub fn sealed_header_input(data: &[u8]) {
    if let Ok(header) = Header::parse(data) {
        let _ = header.sealed_len();
        assert_eq!(
            Header::parse(&header.encode()).as_ref(),
            Ok(&header),
            "re-encoding is stable"
        );
    }
}
