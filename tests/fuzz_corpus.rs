//! Replay the committed fuzz corpora (fuzz/corpus) through the fuzz entry points: every
//! input that once found its way into a corpus must still parse without a panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        // Truncations and single-bit flips of every corpus entry, too.
        for cut in [0, 1, data.len() / 2, data.len().saturating_sub(1)] {
            run(&data[..cut.min(data.len())]);
        }
        for i in (0..data.len()).step_by(7) {
            let mut flipped = data.clone();
            flipped[i] ^= 0x20;
            run(&flipped);
        }
        count += 1;
    }
    count
}

#[test]
fn license_parser_corpus_replays_without_panic() {
    assert!(replay("license_parser", leasehold::fuzzing::license_input) >= 5);
}

#[test]
fn sealed_header_corpus_replays_without_panic() {
    assert!(replay("sealed_header", leasehold::fuzzing::sealed_header_input) >= 4);
}

#[test]
fn ledger_verify_corpus_replays_without_panic() {
    assert!(replay("ledger_verify", leasehold::fuzzing::ledger_input) >= 25);
}

#[test]
fn renewal_request_corpus_replays_without_panic() {
    assert!(replay("renewal_request", leasehold::fuzzing::renewal_request_input) >= 5);
}

#[test]
fn renewal_response_corpus_replays_without_panic() {
    assert!(
        replay(
            "renewal_response",
            leasehold::fuzzing::renewal_response_input
        ) >= 17
    );
}

#[test]
fn attestation_corpus_replays_without_panic() {
    assert!(replay("attestation", leasehold::fuzzing::attestation_input) >= 7);
}

#[test]
fn filter_rules_corpus_replays_without_panic() {
    assert!(replay("filter_rules", leasehold::fuzzing::filter_rules_input) >= 7);
}

#[test]
fn config_file_corpus_replays_without_panic() {
    assert!(replay("config_file", leasehold::fuzzing::config_file_input) >= 6);
}

#[test]
fn signed_documents_corpus_replays_without_panic() {
    assert!(
        replay(
            "signed_documents",
            leasehold::fuzzing::signed_document_input
        ) >= 5
    );
}

#[test]
fn audit_answer_corpus_replays_without_panic() {
    assert!(replay("audit_answer", leasehold::fuzzing::audit_answer_input) >= 1);
}
