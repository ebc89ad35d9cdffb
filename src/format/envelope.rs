//! The signed-document envelope: licenses, issuer certificates, enrollments and node
//! state are all JSON files of this shape:
//!
//! ```text
//! {
//!   "leasehold": "license",
//!   "body": {"version":1,...},
//!   "signer": "<Ed25519 public key, base64>",
//!   "signature": "<Ed25519 signature over the exact bytes of body, base64>",
//!   "chain": [ <issuer certificate envelope> ]      (licenses from a certified issuer only)
//! }
//! ```
//!
//! The signature covers a domain tag and the exact bytes of `body` as they stand in the
//! file, so no re-encoding is needed to verify. Parsing is strict: unknown or duplicate
//! fields, trailing bytes, and any form other than the canonical one (pretty-printed
//! envelope, compact body, one final newline) are errors. A document is therefore
//! byte-for-byte what its signer wrote, and an edit anywhere is detected.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::crypto::signing::{BadSignature, DocumentSigner, Domain, InvalidPublicKey, PublicKey};
use crate::format::encoding::base64_array;

/// Largest signed document accepted (a license with a certificate chain is ~3 KiB).
pub const MAX_DOCUMENT_BYTES: u64 = 256 * 1024;

/// What a signed document is; also selects the signature domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    License,
    IssuerCertificate,
    Enrollment,
    NodeState,
    RenewalRequest,
    RenewalResponse,
    LedgerHead,
    Attestation,
    CheckpointReport,
    CheckpointReceipt,
    AuditAnswer,
}

impl DocumentKind {
    pub fn domain(self) -> Domain {
        match self {
            DocumentKind::License => Domain::License,
            DocumentKind::IssuerCertificate => Domain::IssuerCertificate,
            DocumentKind::Enrollment => Domain::Enrollment,
            DocumentKind::NodeState => Domain::NodeState,
            DocumentKind::RenewalRequest => Domain::RenewalRequest,
            DocumentKind::RenewalResponse => Domain::RenewalResponse,
            DocumentKind::LedgerHead => Domain::LedgerHead,
            DocumentKind::Attestation => Domain::Attestation,
            DocumentKind::CheckpointReport => Domain::CheckpointReport,
            DocumentKind::CheckpointReceipt => Domain::CheckpointReceipt,
            DocumentKind::AuditAnswer => Domain::AuditAnswer,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DocumentKind::License => "license",
            DocumentKind::IssuerCertificate => "issuer certificate",
            DocumentKind::Enrollment => "enrollment",
            DocumentKind::NodeState => "node state",
            DocumentKind::RenewalRequest => "renewal request",
            DocumentKind::RenewalResponse => "renewal response",
            DocumentKind::LedgerHead => "ledger head",
            DocumentKind::Attestation => "attestation",
            DocumentKind::CheckpointReport => "checkpoint report",
            DocumentKind::CheckpointReceipt => "checkpoint receipt",
            DocumentKind::AuditAnswer => "audit answer",
        }
    }
}

/// A parsed, not yet verified, signed document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "leasehold")]
    pub kind: DocumentKind,
    pub body: Box<RawValue>,
    #[serde(with = "base64_array")]
    pub signer: [u8; 32],
    #[serde(with = "base64_array")]
    pub signature: [u8; 64],
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Envelope>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the input is {0} bytes, more than the {MAX_DOCUMENT_BYTES} a signed document may be")]
    TooLarge(usize),
    #[error("not a well-formed leasehold document: {0}")]
    Malformed(String),
    #[error("this is a leasehold {found}, not a {expected}")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
    #[error("the document is not in its canonical form: it was edited after signing")]
    NotCanonical,
    #[error("the signer field is not a valid Ed25519 public key")]
    InvalidSigner,
    #[error("the signature does not match the document: it was altered after signing")]
    BadSignature,
}

impl EnvelopeError {
    /// The failure's name in docs/FORMATS.md ("Envelope and body failures").
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge(_) => "too-large",
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::WrongKind { .. } => "wrong-kind",
            EnvelopeError::NotCanonical => "not-canonical",
            EnvelopeError::InvalidSigner => "invalid-signer",
            EnvelopeError::BadSignature => "bad-signature",
        }
    }
}

impl From<BadSignature> for EnvelopeError {
    fn from(_: BadSignature) -> Self {
        EnvelopeError::BadSignature
    }
}

impl From<InvalidPublicKey> for EnvelopeError {
    fn from(_: InvalidPublicKey) -> Self {
        EnvelopeError::InvalidSigner
    }
}

/// A document body: a versioned, strictly parsed JSON object.
pub trait Body: Serialize + DeserializeOwned {
    const KIND: DocumentKind;
    /// The body format version this build reads and writes.
    const VERSION: u32;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{kind} format version {found} is not supported by this build (it reads version {supported}); upgrade leasehold")]
    UnsupportedVersion {
        kind: &'static str,
        found: u64,
        supported: u32,
    },
    #[error("the {kind} body is malformed: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

impl BodyError {
    /// The failure's name in docs/FORMATS.md ("Envelope and body failures").
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::UnsupportedVersion { .. } => "unsupported-version",
            BodyError::Malformed { .. } => "malformed-body",
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

impl Envelope {
    /// Sign `body` with `key` into a new envelope.
    pub fn sign<B: Body>(body: &B, key: &dyn DocumentSigner, chain: Vec<Envelope>) -> Envelope {
        let json = serde_json::to_string(body).expect("document bodies always serialize");
        let signature = key.sign(B::KIND.domain(), json.as_bytes());
        Envelope {
            kind: B::KIND,
            body: RawValue::from_string(json).expect("serde_json output is valid JSON"),
            signer: key.public_key().to_bytes(),
            signature,
            chain,
        }
    }

    /// Parse a document of kind `expected`, strictly.
    pub fn parse(bytes: &[u8], expected: DocumentKind) -> Result<Envelope, EnvelopeError> {
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if envelope.kind != expected {
            return Err(EnvelopeError::WrongKind {
                found: envelope.kind.name(),
                expected: expected.name(),
            });
        }
        if envelope.render().as_bytes() != bytes {
            return Err(EnvelopeError::NotCanonical);
        }
        Ok(envelope)
    }

    /// The canonical text of the document.
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("envelopes always serialize");
        text.push('\n');
        text
    }

    /// The signer's public key as written in the document (not yet trusted).
    pub fn signer_key(&self) -> Result<PublicKey, EnvelopeError> {
        Ok(PublicKey::from_bytes(&self.signer)?)
    }

    /// Check the signature over the body against the named signer key.
    pub fn verify_signature(&self) -> Result<PublicKey, EnvelopeError> {
        let signer = self.signer_key()?;
        signer.verify(
            self.kind.domain(),
            self.body.get().as_bytes(),
            &self.signature,
        )?;
        Ok(signer)
    }

    /// Decode the body. Call only after the signature has been checked.
    pub fn decode_body<B: Body>(&self) -> Result<B, BodyError> {
        let kind = B::KIND.name();
        let raw = self.body.get();
        let probe: VersionProbe = serde_json::from_str(raw).map_err(|e| BodyError::Malformed {
            kind,
            reason: format!("no readable version field ({e})"),
        })?;
        if probe.version != u64::from(B::VERSION) {
            return Err(BodyError::UnsupportedVersion {
                kind,
                found: probe.version,
                supported: B::VERSION,
            });
        }
        let body: B = serde_json::from_str(raw).map_err(|e| BodyError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
        let canonical = serde_json::to_string(&body).map_err(|e| BodyError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
        if canonical != raw {
            return Err(BodyError::Malformed {
                kind,
                reason: "the body is not in canonical form".into(),
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signing::SecretKey;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Note {
        version: u32,
        text: String,
    }

    impl Body for Note {
        const KIND: DocumentKind = DocumentKind::NodeState;
        const VERSION: u32 = 1;
    }

    fn signed_note() -> (String, SecretKey) {
        let key = SecretKey::generate();
        let envelope = Envelope::sign(
            &Note {
                version: 1,
                text: "hi".into(),
            },
            &key,
            vec![],
        );
        (envelope.render(), key)
    }

    #[test]
    fn round_trip_verifies_and_decodes() {
        let (text, key) = signed_note();
        let envelope = Envelope::parse(text.as_bytes(), DocumentKind::NodeState).unwrap();
        assert_eq!(envelope.verify_signature().unwrap(), key.public_key());
        let note: Note = envelope.decode_body().unwrap();
        assert_eq!(note.text, "hi");
    }

    #[test]
    fn duplicate_unknown_and_trailing_are_rejected() {
        let (text, _) = signed_note();
        let dup = text.replacen(
            "\"leasehold\": \"node-state\",",
            "\"leasehold\": \"node-state\",\n  \"leasehold\": \"node-state\",",
            1,
        );
        assert!(matches!(
            Envelope::parse(dup.as_bytes(), DocumentKind::NodeState),
            Err(EnvelopeError::Malformed(_))
        ));
        let unknown = text.replacen('{', "{\n  \"extra\": 1,", 1);
        assert!(matches!(
            Envelope::parse(unknown.as_bytes(), DocumentKind::NodeState),
            Err(EnvelopeError::Malformed(_))
        ));
        let trailing = format!("{text}x");
        assert!(Envelope::parse(trailing.as_bytes(), DocumentKind::NodeState).is_err());
        let spaced = format!("{text}\n");
        assert_eq!(
            Envelope::parse(spaced.as_bytes(), DocumentKind::NodeState).unwrap_err(),
            EnvelopeError::NotCanonical
        );
    }

    #[test]
    fn wrong_kind_is_named() {
        let (text, _) = signed_note();
        assert!(matches!(
            Envelope::parse(text.as_bytes(), DocumentKind::License),
            Err(EnvelopeError::WrongKind { .. })
        ));
    }

    #[test]
    fn future_version_is_unsupported_not_malformed() {
        let key = SecretKey::generate();
        let envelope = Envelope::sign(
            &Note {
                version: 2,
                text: "x".into(),
            },
            &key,
            vec![],
        );
        assert!(matches!(
            envelope.decode_body::<Note>(),
            Err(BodyError::UnsupportedVersion { found: 2, .. })
        ));
    }
}
