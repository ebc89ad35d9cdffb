//! Cryptographic primitives, each behind a small seam.
//!
//! - [`signing`]: the one place that makes and checks Ed25519 signatures.
//! - [`key_wrap`]: HPKE (RFC 9180) wrapping of content keys to a node's X25519 key.
//! - [`hpke_p256`]: the P-256 HPKE suite split at the DH step, for keys held in a TPM.
//! - [`keyfile`]: the text format of key files.
//! - [`random`]: the one source of randomness (the operating system).
//!
//! Secret key types zeroize their bytes on drop.

pub mod at_rest;
pub mod hpke_p256;
pub mod key_wrap;
pub mod keyfile;
pub mod random;
pub mod signing;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256 of `parts` concatenated.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A model's 256-bit content key (AES-256-GCM). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        random::fill(&mut key);
        ContentKey(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ContentKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A public identifier of the key: lets a sealed file say which key opens it without
    /// revealing anything about the key.
    pub fn key_id(&self) -> [u8; 16] {
        let digest = sha256(&[b"leasehold content key id v1\0", &self.0]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentKey(id {})", hex::encode(self.key_id()))
    }
}
