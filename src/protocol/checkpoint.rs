//! Checkpoint reports: between renewals, a node tells its license server where its
//! usage ledger stands, at least once per checkpoint interval while the server is
//! reachable. The server compares the position with the ones it holds (the same
//! findings as at renewal: replaced, went backwards, forked), so a node directory
//! restored from a backup loses at most one interval of history unseen.
//!
//! - `checkpoint-report` (node → server), signed by the node key: which node, model and
//!   license, a fresh nonce, the node's clock, and the ledger position
//!   ([`UsageCheckpoint`], as in a renewal request, with `ledger` required).
//! - `checkpoint-receipt` (server → node), signed by the issuer: the node, the report's
//!   nonce, the server's clock, and the checkpoint it now holds. The node checks it like
//!   a renewal response ([`super::open_answer`]) before it records the acknowledgement
//!   in its ledger or takes `server_time` as a floor for trusted time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Answer, LedgerAnchor, LicenseRef, ProtocolError, UsageCheckpoint};
use crate::crypto::random;
use crate::crypto::signing::SecretKey;
use crate::format::encoding::{base64_array, hex_array};
use crate::format::{Body, DocumentKind, Envelope};
use crate::node::NodeIdentity;

/// A checkpoint report, signed by the node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointReportBody {
    pub version: u32,
    pub node_id: String,
    #[serde(with = "base64_array")]
    pub node_key: [u8; 32],
    pub model_id: String,
    /// The license in force.
    pub license: LicenseRef,
    #[serde(with = "hex_array")]
    pub nonce: [u8; 16],
    /// The node's clock when it signed the report.
    pub sent_at: DateTime<Utc>,
    /// The ledger's totals at a signed checkpoint and where the ledger stands
    /// (`ledger` is required here).
    pub usage: UsageCheckpoint,
}

impl Body for CheckpointReportBody {
    const KIND: DocumentKind = DocumentKind::CheckpointReport;
    const VERSION: u32 = 1;
}

/// A checkpoint receipt, signed by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointReceiptBody {
    pub version: u32,
    pub node_id: String,
    /// The report's nonce, echoed: binds this receipt to one report.
    #[serde(with = "hex_array")]
    pub request_nonce: [u8; 16],
    /// The server's clock when it recorded the checkpoint.
    pub server_time: DateTime<Utc>,
    /// The checkpoint the server now holds for this node (the one reported).
    pub acknowledged: LedgerAnchor,
}

impl Body for CheckpointReceiptBody {
    const KIND: DocumentKind = DocumentKind::CheckpointReceipt;
    const VERSION: u32 = 1;
}

impl Answer for CheckpointReceiptBody {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn request_nonce(&self) -> [u8; 16] {
        self.request_nonce
    }
    fn server_time(&self) -> DateTime<Utc> {
        self.server_time
    }
}

/// Sign a checkpoint report with the node key. Returns the document and its nonce.
pub fn sign_report(
    identity: &NodeIdentity,
    model_id: &str,
    license: LicenseRef,
    usage: UsageCheckpoint,
    now: DateTime<Utc>,
) -> (Envelope, [u8; 16]) {
    let public = identity.public();
    let nonce = random::bytes::<16>();
    let body = CheckpointReportBody {
        version: CheckpointReportBody::VERSION,
        node_id: public.node_id(),
        node_key: public.signing_key.to_bytes(),
        model_id: model_id.to_string(),
        license,
        nonce,
        sent_at: crate::format::time::whole_seconds(now),
        usage: usage.with_rollbacks_of(identity),
    };
    (Envelope::sign(&body, identity.signer(), vec![]), nonce)
}

/// Parse a report without trusting it yet: the server looks up the node's enrolled
/// key by the body's node id, then calls [`verify_report`].
pub fn parse_report(bytes: &[u8]) -> Result<(Envelope, CheckpointReportBody), ProtocolError> {
    let what = DocumentKind::CheckpointReport.name();
    let (envelope, body) = super::parse_node_signed::<CheckpointReportBody>(bytes, what)?;
    if body.usage.ledger.is_none() {
        return Err(ProtocolError::Malformed {
            what,
            reason: "it names no ledger position (usage.ledger is required)".into(),
        });
    }
    Ok((envelope, body))
}

/// Check a parsed report against the node key the server enrolled.
pub fn verify_report(
    envelope: &Envelope,
    body: &CheckpointReportBody,
    enrolled_key: &[u8; 32],
) -> Result<(), ProtocolError> {
    super::verify_node_signed(envelope, &body.node_key, enrolled_key)
}

/// Sign a receipt with the issuer key (its certificate rides in the chain).
pub fn sign_receipt(
    issuer: &SecretKey,
    certificate: Option<&Envelope>,
    body: &CheckpointReceiptBody,
) -> Envelope {
    Envelope::sign(body, issuer, certificate.cloned().into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Envelope;
    use crate::protocol::{Expected, LedgerPosition};

    fn usage() -> UsageCheckpoint {
        UsageCheckpoint {
            since: None,
            requests: 3,
            prompt_tokens: 30,
            completion_tokens: 12,
            ledger: Some(LedgerPosition {
                ledger_id: [1; 32],
                seq: 9,
                hash: [9; 32],
                reported: Some(LedgerAnchor {
                    seq: 4,
                    hash: [4; 32],
                }),
            }),
            tpm_rollbacks: None,
        }
    }

    fn identity() -> (tempfile::TempDir, NodeIdentity) {
        let dir = tempfile::TempDir::new().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        (dir, identity)
    }

    #[test]
    fn a_report_verifies_with_the_enrolled_key_only() {
        let (_dir, node) = identity();
        let license = LicenseRef {
            license_id: "l1".into(),
            serial: 2,
        };
        let (report, _) = sign_report(&node, "m", license, usage(), chrono::Utc::now());
        let text = report.render();
        let (envelope, body) = parse_report(text.as_bytes()).unwrap();
        let key = node.public().signing_key.to_bytes();
        verify_report(&envelope, &body, &key).unwrap();
        assert!(matches!(
            verify_report(&envelope, &body, &[7; 32]),
            Err(ProtocolError::WrongSigner(_))
        ));
        // A report is not a renewal request, and the other way round.
        assert!(crate::protocol::parse_request(text.as_bytes()).is_err());
        // Without a ledger position there is nothing to report.
        let mut bare = usage();
        bare.ledger = None;
        let license = LicenseRef {
            license_id: "l1".into(),
            serial: 2,
        };
        let (report, _) = sign_report(&node, "m", license, bare, chrono::Utc::now());
        assert!(matches!(
            parse_report(report.render().as_bytes()),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn a_receipt_must_come_from_a_trusted_issuer_for_this_report() {
        let root = crate::crypto::keyfile::read_secret_key(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
        )
        .unwrap();
        let receipt = |key: &SecretKey, nonce: [u8; 16]| {
            sign_receipt(
                key,
                None,
                &CheckpointReceiptBody {
                    version: 1,
                    node_id: "n1".into(),
                    request_nonce: nonce,
                    server_time: crate::format::time::whole_seconds(chrono::Utc::now()),
                    acknowledged: LedgerAnchor {
                        seq: 9,
                        hash: [9; 32],
                    },
                },
            )
            .render()
        };
        let open = |text: &str, nonce: [u8; 16]| {
            crate::protocol::open_answer::<CheckpointReceiptBody>(
                text.as_bytes(),
                &crate::license::TrustRoots::compiled_in(),
                &Expected {
                    node_id: "n1",
                    nonce,
                    scope: None,
                },
            )
        };
        let good = receipt(&root, [1; 16]);
        assert_eq!(open(&good, [1; 16]).unwrap().0.acknowledged.seq, 9);
        assert_eq!(
            open(&good, [2; 16]).unwrap_err(),
            ProtocolError::Replayed,
            "a receipt for another report"
        );
        assert!(matches!(
            open(&receipt(&SecretKey::generate(), [1; 16]), [1; 16]),
            Err(ProtocolError::Untrusted(_))
        ));
        // A renewal response is not a receipt.
        let envelope = Envelope::parse(good.as_bytes(), DocumentKind::CheckpointReceipt).unwrap();
        assert_eq!(envelope.kind, DocumentKind::CheckpointReceipt);
        assert!(crate::protocol::open_response(
            good.as_bytes(),
            &crate::license::TrustRoots::compiled_in(),
            &Expected {
                node_id: "n1",
                nonce: [1; 16],
                scope: None,
            },
        )
        .is_err());
    }
}
