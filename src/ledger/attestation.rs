//! A node's signed snapshot of its license state and ledger head
//! (`GET /v1/license/attestation`), checked offline by `leasehold audit
//! verify-attestation` with the node's public key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Totals;
use crate::crypto::signing::PublicKey;
use crate::format::encoding::hex_array;
use crate::format::{Body, DocumentKind, Envelope};

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

/// Verify an attestation against the node's key.
pub fn verify(bytes: &[u8], node_key: &PublicKey) -> Result<AttestationBody, String> {
    let envelope = Envelope::parse(bytes, DocumentKind::Attestation).map_err(|e| e.to_string())?;
    if envelope.signer != node_key.to_bytes() {
        return Err(format!(
            "it is signed by key {}, not by node {}",
            envelope
                .signer_key()
                .map(|k| k.key_id())
                .unwrap_or_else(|_| "?".into()),
            node_key.key_id()
        ));
    }
    envelope.verify_signature().map_err(|e| e.to_string())?;
    let body: AttestationBody = envelope.decode_body().map_err(|e| e.to_string())?;
    if body.node_id != node_key.key_id() {
        return Err("its node id does not match the signing key".into());
    }
    Ok(body)
}
