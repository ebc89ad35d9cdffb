//! A node's signed snapshot of its license state and ledger head
//! (`GET /v1/license/attestation`), checked offline by `leasehold audit
//! verify-attestation` with the node's public key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Totals;
use crate::crypto::signing::PublicKey;
use crate::format::encoding::hex_array;
use crate::format::{Body, BodyError, DocumentKind, Envelope, EnvelopeError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationBody {
    pub version: u32,
    pub node_id: String,
    /// The node's clock when it signed.
    pub at: DateTime<Utc>,
    pub license_id: String,
    pub serial: u64,
    pub licensee: String,
    pub model_id: String,
    /// `serving`, `grace` or `lapsed`.
    pub phase: String,
    pub expires_at: DateTime<Utc>,
    pub grace_ends: DateTime<Utc>,
    /// The last durable ledger record and the totals up to it.
    pub ledger_seq: u64,
    #[serde(with = "hex_array")]
    pub ledger_head: [u8; 32],
    pub totals: Totals,
}

impl Body for AttestationBody {
    const KIND: DocumentKind = DocumentKind::Attestation;
    const VERSION: u32 = 1;
}

/// Why an attestation does not check out (docs/FORMATS.md, "Verifying an attestation").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("it is signed by key {signer}, not by node {node}")]
    WrongSigner { signer: String, node: String },
    #[error("its node id does not match the signing key")]
    WrongNodeId,
}

impl AttestationError {
    /// The failure's name in docs/FORMATS.md (and `audit verify-attestation --json`).
    pub fn kind(&self) -> &'static str {
        match self {
            AttestationError::Envelope(e) => e.kind(),
            AttestationError::Body(e) => e.kind(),
            AttestationError::WrongSigner { .. } => "wrong-signer",
            AttestationError::WrongNodeId => "wrong-node-id",
        }
    }
}

/// Verify an attestation against the node's key.
pub fn verify(bytes: &[u8], node_key: &PublicKey) -> Result<AttestationBody, AttestationError> {
    let envelope = Envelope::parse(bytes, DocumentKind::Attestation)?;
    if envelope.signer != node_key.to_bytes() {
        return Err(AttestationError::WrongSigner {
            signer: envelope
                .signer_key()
                .map(|k| k.key_id())
                .unwrap_or_else(|_| "?".into()),
            node: node_key.key_id(),
        });
    }
    envelope.verify_signature()?;
    let body: AttestationBody = envelope.decode_body()?;
    if body.node_id != node_key.key_id() {
        return Err(AttestationError::WrongNodeId);
    }
    Ok(body)
}
