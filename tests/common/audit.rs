//! A node's usage ledger written through the library (no inference needed), its
//! checkpoints reported in signed renewal requests, and audit answers: what the audit
//! tests (tests/audit.rs, tests/portal.rs) share.

use std::path::Path;
use std::process::Output;

use leasehold::ledger::audit::AuditAnswerBody;
use leasehold::ledger::record::{Entry, Outcome};
use leasehold::ledger::{CheckpointPolicy, Ledger, Position};
use leasehold::node::{clock, NodeIdentity};
use leasehold::protocol::{self, LedgerAnchor, LedgerPosition, LicenseRef, UsageCheckpoint};
use serde_json::Value;

/// Request record `i` (every third one filtered).
pub fn request(i: u64) -> Entry {
    Entry::Request {
        request_id: format!("req-{i}"),
        license_id: "lic".into(),
        model_id: "tiny".into(),
        prompt_tokens: 10 + i,
        completion_tokens: 20 + i,
        outcome: if i % 3 == 2 {
            Outcome::Filtered
        } else {
            Outcome::Ok
        },
        client_key: "team-a".into(),
        prompt_sha256: None,
        filter_rule: None,
    }
}

/// Append requests `range` to the node's ledger (after recording that the server
/// acknowledged `acknowledged`, as a node does) and sign a checkpoint: where it stands.
pub async fn write_requests(
    identity: &NodeIdentity,
    acknowledged: Option<&Position>,
    range: std::ops::Range<u64>,
) -> Position {
    let path = identity.dir().join(leasehold::ledger::LEDGER_FILE);
    let (ledger, _) = Ledger::open(&path, identity, CheckpointPolicy::default()).unwrap();
    if let Some(p) = acknowledged {
        let entry = Entry::Reported {
            seq: p.seq,
            hash: p.hash,
        };
        ledger.append(entry).await.unwrap();
    }
    for i in range {
        ledger.append(request(i)).await.unwrap();
    }
    let position = ledger.checkpoint().await.unwrap();
    ledger.close().await;
    position
}

/// A renewal request to the server at `base` reporting `position`; the response body.
pub async fn renew_reporting(base: &str, identity: &NodeIdentity, position: &Position) -> Value {
    let usage = UsageCheckpoint {
        since: Some(position.since),
        requests: position.totals.requests,
        prompt_tokens: position.totals.prompt_tokens,
        completion_tokens: position.totals.completion_tokens,
        ledger: Some(LedgerPosition {
            ledger_id: position.ledger_id,
            seq: position.seq,
            hash: position.hash,
            reported: position
                .reported
                .map(|(seq, hash)| LedgerAnchor { seq, hash }),
        }),
        tpm_rollbacks: None,
    };
    let (request, _) = protocol::sign_request(
        identity,
        "tiny",
        Some(LicenseRef {
            license_id: "0".repeat(32),
            serial: 0,
        }),
        usage,
        clock::system_now(),
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/renewals"))
        .body(request.render())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let envelope: Value = response.json().await.unwrap();
    envelope["body"].clone()
}

/// `leasehold audit report node/usage.ledger --from F --to T --by BY --format FORMAT`
/// in the node site `dir`.
pub fn report(dir: &Path, from: &str, to: &str, by: &str, format: &str) -> Output {
    super::node::leasehold(
        dir,
        &[
            "audit",
            "report",
            "node/usage.ledger",
            "--from",
            from,
            "--to",
            to,
            "--by",
            by,
            "--format",
            format,
        ],
    )
}

/// An answer whose header `body` the node key signs, followed by `records`.
pub fn signed_answer(identity: &NodeIdentity, body: &AuditAnswerBody, records: &[u8]) -> Vec<u8> {
    let mut out = leasehold::format::Envelope::sign(body, identity.signer(), vec![])
        .render()
        .into_bytes();
    out.extend_from_slice(records);
    out
}

/// `leasehold audit export --node-dir node --from F --to T --out OUT` in the node site
/// `dir`.
pub fn export(dir: &Path, from: &str, to: &str, out: &str) -> Output {
    super::node::leasehold(
        dir,
        &[
            "audit",
            "export",
            "--node-dir",
            "node",
            "--from",
            from,
            "--to",
            to,
            "--out",
            out,
        ],
    )
}
