//! The one place that makes and checks Ed25519 signatures.
//!
//! Every signature covers a domain tag followed by the signed bytes, so a signature
//! made for one kind of document (say an enrollment) can never be replayed as another
//! (say a license). Verification uses `verify_strict` (no malleable signatures, no
//! small-order keys).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::ZeroizeOnDrop;

use super::{random, sha256};

/// What a signature is for. The tag is part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    License,
    IssuerCertificate,
    Enrollment,
    NodeState,
    RenewalRequest,
    RenewalResponse,
    LedgerCheckpoint,
    LedgerHead,
    Attestation,
    CheckpointReport,
    CheckpointReceipt,
    AuditAnswer,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::License => b"leasehold license\0",
            Domain::IssuerCertificate => b"leasehold issuer certificate\0",
            Domain::Enrollment => b"leasehold enrollment\0",
            Domain::NodeState => b"leasehold node state\0",
            Domain::RenewalRequest => b"leasehold renewal request\0",
            Domain::RenewalResponse => b"leasehold renewal response\0",
            Domain::LedgerCheckpoint => b"leasehold ledger checkpoint\0",
            Domain::LedgerHead => b"leasehold ledger head\0",
            Domain::Attestation => b"leasehold attestation\0",
            Domain::CheckpointReport => b"leasehold checkpoint report\0",
            Domain::CheckpointReceipt => b"leasehold checkpoint receipt\0",
            Domain::AuditAnswer => b"leasehold audit answer\0",
        }
    }
}

/// Whatever holds a signing key and signs documents with it: the one seam between the
/// formats and where a key lives (after rustls's `SigningKey`/`Signer`). A key in a
/// file ([`SecretKey`]) is one implementation; a key sealed to a TPM, unsealed at start,
/// is another. [`Envelope::sign`](crate::format::Envelope::sign) and the usage ledger
/// take this, never the key bytes.
pub trait DocumentSigner: Send + Sync {
    /// The public key documents name as their signer.
    fn public_key(&self) -> PublicKey;
    /// Sign `message` for `domain` (the tag is prepended here, never by the caller).
    fn sign(&self, domain: Domain, message: &[u8]) -> [u8; 64];
}

impl DocumentSigner for SecretKey {
    fn public_key(&self) -> PublicKey {
        SecretKey::public_key(self)
    }

    fn sign(&self, domain: Domain, message: &[u8]) -> [u8; 64] {
        SecretKey::sign(self, domain, message)
    }
}

/// An Ed25519 secret key (root, issuer or node). Zeroized on drop.
#[derive(ZeroizeOnDrop)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn generate() -> Self {
        SecretKey(SigningKey::from_bytes(&random::bytes::<32>()))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign `message` for `domain`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> [u8; 64] {
        self.0.sign(&tagged(domain, message)).to_bytes()
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// The signature did not verify: the signed bytes or the signature were changed, or
/// another key signed them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Ed25519 signature does not match the signed bytes and key")]
pub struct BadSignature;

/// The bytes are not a valid Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Ed25519 public key")]
pub struct InvalidPublicKey;

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, InvalidPublicKey> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| InvalidPublicKey)?;
        if key.is_weak() {
            return Err(InvalidPublicKey);
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// A short, stable identifier for humans: 16 hex digits of SHA-256 of the key.
    pub fn key_id(&self) -> String {
        hex::encode(&sha256(&[&self.0.to_bytes()])[..8])
    }

    /// Check `signature` over `message` for `domain`.
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), BadSignature> {
        let signature = Signature::from_bytes(signature);
        self.0
            .verify_strict(&tagged(domain, message), &signature)
            .map_err(|_| BadSignature)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

fn tagged(domain: Domain, message: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut out = Vec::with_capacity(tag.len() + message.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_for_one_domain_does_not_verify_in_another() {
        let key = SecretKey::generate();
        let sig = key.sign(Domain::Enrollment, b"body");
        let public = key.public_key();
        assert!(public.verify(Domain::Enrollment, b"body", &sig).is_ok());
        assert_eq!(
            public.verify(Domain::License, b"body", &sig),
            Err(BadSignature)
        );
    }

    #[test]
    fn any_flipped_bit_in_message_or_signature_fails() {
        let key = SecretKey::generate();
        let sig = key.sign(Domain::License, b"hello");
        let public = key.public_key();
        let mut msg = b"hello".to_vec();
        msg[2] ^= 1;
        assert!(public.verify(Domain::License, &msg, &sig).is_err());
        for i in 0..64 {
            let mut s = sig;
            s[i] ^= 0x10;
            assert!(public.verify(Domain::License, b"hello", &s).is_err());
        }
    }
}
