//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (tests/fuzz_corpus.rs), so both exercise exactly the same code.
//!
//! One entry point per parser of untrusted bytes: licenses, sealed headers, ledgers
//! (`audit verify`, `audit report`), audit answers (what a license server reads from a
//! node's upload or an import), renewal requests and checkpoint reports (what a
//! license server reads), renewal responses and checkpoint receipts (what a node
//! reads), attestations, output-filter rules files, config files, and the other signed
//! documents (enrollments, node state, ledger heads, issuer certificates).
//!
//! Documents that must be signed by a known key are checked against the vector node's
//! key (docs/vectors/node/node.pub) and the compiled-in roots, so corpus seeds written
//! with the vector node key or the demo root get past the signature; every entry point
//! also decodes the body without trusting it, so mutated documents still reach the body
//! parsers.

use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};

use crate::crypto::signing::PublicKey;
use crate::format::{Body, DocumentKind, Envelope};
use crate::ledger::attestation::{self, AttestationBody};
use crate::ledger::head::LedgerHeadBody;
use crate::ledger::record;
use crate::license::{assess, Checks, FilterRules, IssuerCertBody, TrustRoots};
use crate::node::enrollment;
use crate::node::hardware::HardwareProfile;
use crate::node::trusted_time::{NodeStateBody, TimeContext};
use crate::protocol::checkpoint::{self, CheckpointReceiptBody};
use crate::protocol::{self, Decision, Expected, RenewalResponseBody};
use crate::runtime::output_filter::{Filtered, OutputFilter};
use crate::seal::Header;

/// The vector node's public signing key (docs/vectors/node/node.pub, kept stable by
/// examples/make_test_vectors.rs): ledgers, attestations and requests in the corpora
/// are signed with its secret half.
pub const VECTOR_NODE_KEY: [u8; 32] = [
    96, 1, 151, 191, 197, 37, 46, 107, 235, 138, 209, 99, 249, 59, 71, 134, 177, 185, 35, 250, 221,
    0, 3, 13, 84, 103, 218, 87, 170, 178, 185, 185,
];

/// The request nonce the renewal-response and checkpoint-receipt entry points expect,
/// so corpus seeds made for it get past the nonce check.
pub const RESPONSE_NONCE: [u8; 16] = [0x42; 16];

fn vector_node_key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::from_bytes(&VECTOR_NODE_KEY).expect("a valid Ed25519 key"))
}

fn roots() -> &'static TrustRoots {
    static ROOTS: OnceLock<TrustRoots> = OnceLock::new();
    ROOTS.get_or_init(TrustRoots::compiled_in)
}

fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
}

/// Parse `data` as a document of `B`'s kind and decode its body without checking the
/// signature (a mutated document never verifies; its body parser must still hold up).
/// A body that decodes re-renders to the same bytes.
fn decode_unverified<B: Body + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<B> {
    let envelope = Envelope::parse(data, B::KIND).ok()?;
    assert_eq!(
        envelope.render().as_bytes(),
        data,
        "parsed documents are canonical"
    );
    let _ = envelope.verify_signature();
    let body: B = envelope.decode_body().ok()?;
    assert_eq!(
        serde_json::to_string(&body).ok().as_deref(),
        Some(envelope.body.get()),
        "a decoded body re-encodes to its bytes"
    );
    Some(body)
}

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

/// Feed bytes to `audit verify` (the chain, hashes, checkpoint signatures, against the
/// vector node's key) and to `audit report`'s tally of the same file, line by line.
pub fn ledger_input(data: &[u8]) {
    let key = vector_node_key();
    let node_id = key.key_id();
    let (summary, problem) = crate::ledger::verify::verify(data, key, &node_id);
    // What `audit verify` prints, and the invariants it relies on.
    let _ = problem.as_ref().map(|p| (p.kind(), p.explain()));
    assert!(summary.valid_len <= data.len() as u64);
    if problem.is_none() {
        assert_eq!(
            summary.valid_len,
            data.len() as u64,
            "an intact ledger is read whole"
        );
    }
    if let Some((seq, _)) = summary.last_checkpoint {
        assert!(
            seq <= summary.head_seq,
            "the last checkpoint is at or before the head"
        );
    }
    assert_eq!(summary.checkpoints, summary.checkpoint_hashes.len() as u64);
    for parsed in record::each(data).flatten() {
        let _ = parsed.signature_ok(key);
        // A record that parses re-encodes to the bytes it came from (one valid byte
        // string per record).
        let (line, hash) = record::encode(&parsed.body, None);
        assert_eq!(hash, parsed.actual_hash);
        if parsed.signature.is_none() {
            let back = record::parse(line.trim_end_matches('\n'));
            assert!(back.is_ok_and(|b| b.body == parsed.body));
        }
    }
    let day = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
    for (from, to, by) in [
        (None, None, crate::ledger::report::Period::Month),
        (
            Some(day),
            Some(day + chrono::Duration::days(1)),
            crate::ledger::report::Period::Day,
        ),
        (Some(day), None, crate::ledger::report::Period::Quarter),
    ] {
        let _ = crate::ledger::report::report_rows(data, from, to, by);
    }
}

/// Feed bytes to what a license server does with an audit answer: split and parse it,
/// verify it against the vector node's key (the header, the records' digest, the run),
/// check its coverage of a few periods, and tally its records as the report does.
pub fn audit_answer_input(data: &[u8]) {
    use crate::ledger::audit;
    use crate::ledger::report::{report_rows, Period};

    let Ok(parsed) = audit::parse(data) else {
        return;
    };
    let day = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let periods = [
        (day, day + chrono::Duration::days(1)),
        (parsed.body.from, parsed.body.to),
    ];
    match audit::verify(&parsed, vector_node_key()) {
        Ok(run) => {
            assert!(run.first_at <= run.last_at, "record times never decrease");
            assert_eq!(run.summary.head_seq, parsed.body.last_seq);
            for (from, to) in periods {
                let _ = run.covers(from, to);
            }
        }
        Err(e) => {
            let _ = (e.kind(), e.is_tampering(), e.to_string());
        }
    }
    for (from, to) in periods {
        let _ = report_rows(parsed.records, Some(from), Some(to), Period::Quarter);
    }
}

/// Feed bytes to what a license server reads from nodes: renewal requests and
/// checkpoint reports, parsed and checked against the key they name and the vector
/// node's key.
pub fn renewal_request_input(data: &[u8]) {
    if let Ok((envelope, body)) = protocol::parse_request(data) {
        assert_eq!(
            envelope.render().as_bytes(),
            data,
            "parsed requests are canonical"
        );
        let _ = protocol::verify_request(&envelope, &body, &body.node_key);
        let _ = protocol::verify_request(&envelope, &body, &VECTOR_NODE_KEY);
    }
    if let Ok((envelope, body)) = checkpoint::parse_report(data) {
        assert!(
            body.usage.ledger.is_some(),
            "a report names its ledger position"
        );
        let _ = checkpoint::verify_report(&envelope, &body, &body.node_key);
        let _ = checkpoint::verify_report(&envelope, &body, &VECTOR_NODE_KEY);
    }
}

/// Feed bytes to what a node reads from its license server: renewal responses and
/// checkpoint receipts, checked against the compiled-in roots for the vector node and
/// [`RESPONSE_NONCE`]; a renewed license goes on to the license path.
pub fn renewal_response_input(data: &[u8]) {
    let node_id = vector_node_key().key_id();
    for scope in [None, Some(("Example Org", "demo-model"))] {
        let expected = Expected {
            node_id: &node_id,
            nonce: RESPONSE_NONCE,
            scope,
        };
        if let Ok(opened) = protocol::open_response(data, roots(), &expected) {
            let _ = opened.clock_offset(fixed_now());
            if let Decision::Renewed { license } = &opened.body.decision {
                license_input(license.as_bytes());
            }
        }
        let _ = protocol::open_answer::<CheckpointReceiptBody>(data, roots(), &expected);
    }
    if let Some(body) = decode_unverified::<RenewalResponseBody>(data) {
        if let Decision::Renewed { license } = &body.decision {
            license_input(license.as_bytes());
        }
    }
    let _ = decode_unverified::<CheckpointReceiptBody>(data);
}

/// Feed bytes to `audit verify-attestation` with the vector node's key.
pub fn attestation_input(data: &[u8]) {
    if let Ok(body) = attestation::verify(data, vector_node_key()) {
        assert_eq!(body.node_id, vector_node_key().key_id());
    }
    let _ = decode_unverified::<AttestationBody>(data);
}

/// Feed bytes to the output-filter rules file reader (`admin entitle --filter-rules`),
/// compile the rules, and stream some text through them in small pieces.
pub fn filter_rules_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = FilterRules::parse_toml(text) else {
        return;
    };
    let Ok(filter) = OutputFilter::new(&rules) else {
        return;
    };
    let sample = [
        "The Project Al",
        "batross memo: ",
        "123-45-6789 ",
        "Ünïcødé ✓ ",
        "end.",
    ];
    for pieces in [
        &sample[..],
        &rules.terms.iter().map(String::as_str).collect::<Vec<_>>(),
    ] {
        let mut stream = filter.stream();
        let mut out = String::new();
        let mut blocked = false;
        for piece in pieces {
            match stream.push(piece) {
                Filtered::Pass(text) => out.push_str(&text),
                Filtered::Blocked { before, rule } => {
                    assert!(!rule.is_empty(), "a block names its rule");
                    out.push_str(&before);
                    blocked = true;
                }
            }
        }
        out.push_str(&stream.finish());
        if !blocked {
            assert_eq!(out, pieces.concat(), "unfiltered text passes whole");
        }
    }
}

/// Feed bytes to the daemons' config-file reader (`config check`, `--config`).
pub fn config_file_input(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::cli::config::parse(text);
    }
}

/// Feed bytes to the readers of the other signed documents: enrollments (the license
/// server's and `audit`'s), node state, ledger heads, issuer certificates.
pub fn signed_document_input(data: &[u8]) {
    let _ = enrollment::verify(data);
    let Ok(envelope) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    match envelope.kind {
        DocumentKind::Enrollment => {
            let _ = decode_unverified::<enrollment::EnrollmentBody>(data);
        }
        DocumentKind::NodeState => {
            if let Some(state) = decode_unverified::<NodeStateBody>(data) {
                let _ = state.refuses("l", 1);
            }
        }
        DocumentKind::LedgerHead => {
            let _ = decode_unverified::<LedgerHeadBody>(data);
        }
        DocumentKind::IssuerCertificate => {
            let _ = decode_unverified::<IssuerCertBody>(data);
        }
        kind => {
            if let Ok(envelope) = Envelope::parse(data, kind) {
                let _ = envelope.verify_signature();
            }
        }
    }
}
