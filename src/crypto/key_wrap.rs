//! Content keys wrapped to one node: HPKE (RFC 9180) base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM.
//!
//! The HPKE `info` binds the license id and the model id, so a wrapped key lifted out
//! of one license cannot be unwrapped under another license or for another model.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{random, ContentKey};

/// The suite name written into licenses, so a future suite is a format change, not a guess.
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";

type KemPublic = <X25519HkdfSha256 as Kem>::PublicKey;
type KemPrivate = <X25519HkdfSha256 as Kem>::PrivateKey;
type KemEncapped = <X25519HkdfSha256 as Kem>::EncappedKey;

/// A node's X25519 secret key for unwrapping content keys. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct UnwrapSecret([u8; 32]);

impl UnwrapSecret {
    pub fn generate() -> Self {
        // Clamping happens inside X25519; any 32 random bytes are a valid secret.
        UnwrapSecret(random::bytes::<32>())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        UnwrapSecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public_key(&self) -> [u8; 32] {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        x25519_dalek::PublicKey::from(&secret).to_bytes()
    }
}

/// Whatever holds a node's unwrap key and opens what licenses wrap to it: the seam
/// between licenses and where the key lives (after age's `Identity::unwrap_stanza`).
/// A key in a file ([`UnwrapSecret`]) is one implementation; a TPM-resident key, whose
/// DH the TPM computes, is another.
pub trait KeyUnwrapper: Send + Sync {
    /// The public key licenses wrap to.
    fn public_key(&self) -> [u8; 32];
    /// Open a 32-byte secret wrapped to this key under `info`.
    fn unwrap(&self, info: &[u8], wrapped: &WrappedKey)
        -> Result<Zeroizing<[u8; 32]>, UnwrapError>;
}

impl KeyUnwrapper for UnwrapSecret {
    fn public_key(&self) -> [u8; 32] {
        UnwrapSecret::public_key(self)
    }

    fn unwrap(
        &self,
        info: &[u8],
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
        open_with_secret(self, info, wrapped)
    }
}

/// A content key sealed to one node: the HPKE encapsulated key and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub encapsulated: [u8; 32],
    /// 32-byte key + 16-byte AEAD tag.
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("the content key is wrapped to another node's key (or the license was altered)")]
    NotForThisKey,
    #[error("the wrapped content key is malformed")]
    Malformed,
}

/// The `info` string binding a wrapped content key to its license and model.
pub fn binding_info(license_id: &str, model_id: &str) -> Vec<u8> {
    info_for(b"leasehold content key v1\0", license_id, model_id)
}

/// The `info` string binding a wrapped watermark key to its license and model: another
/// purpose tag, so a content key can never be passed off as a watermark key or back.
pub fn watermark_binding_info(license_id: &str, model_id: &str) -> Vec<u8> {
    info_for(b"leasehold watermark key v1\0", license_id, model_id)
}

fn info_for(tag: &[u8], license_id: &str, model_id: &str) -> Vec<u8> {
    let mut info = tag.to_vec();
    info.extend_from_slice(license_id.as_bytes());
    info.push(0);
    info.extend_from_slice(model_id.as_bytes());
    info
}

/// Wrap `key` to the node whose X25519 public key is `recipient`.
pub fn wrap(
    recipient: &[u8; 32],
    info: &[u8],
    key: &ContentKey,
) -> Result<WrappedKey, UnwrapError> {
    wrap_secret(recipient, info, key.as_bytes())
}

/// Wrap any 32-byte secret (a content key, a watermark key) to a node.
pub fn wrap_secret(
    recipient: &[u8; 32],
    info: &[u8],
    secret: &[u8; 32],
) -> Result<WrappedKey, UnwrapError> {
    let public = KemPublic::from_bytes(recipient).map_err(|_| UnwrapError::Malformed)?;
    let (encapsulated, ciphertext) = hpke::single_shot_seal::<
        AesGcm256,
        HkdfSha256,
        X25519HkdfSha256,
        _,
    >(
        &OpModeS::Base, &public, info, secret, b"", &mut rand::rng()
    )
    .map_err(|_| UnwrapError::Malformed)?;
    let mut enc = [0u8; 32];
    enc.copy_from_slice(&encapsulated.to_bytes());
    Ok(WrappedKey {
        encapsulated: enc,
        ciphertext,
    })
}

/// Unwrap a content key with this node's unwrap key.
pub fn unwrap(
    unwrapper: &dyn KeyUnwrapper,
    info: &[u8],
    wrapped: &WrappedKey,
) -> Result<ContentKey, UnwrapError> {
    unwrapper
        .unwrap(info, wrapped)
        .map(|bytes| ContentKey::from_bytes(*bytes))
}

/// Unwrap any 32-byte secret wrapped with [`wrap_secret`].
pub fn unwrap_secret(
    unwrapper: &dyn KeyUnwrapper,
    info: &[u8],
    wrapped: &WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    unwrapper.unwrap(info, wrapped)
}

/// The software half of RFC 9180 with the secret in memory.
fn open_with_secret(
    secret: &UnwrapSecret,
    info: &[u8],
    wrapped: &WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    let private = KemPrivate::from_bytes(secret.as_bytes()).map_err(|_| UnwrapError::Malformed)?;
    let encapsulated =
        KemEncapped::from_bytes(&wrapped.encapsulated).map_err(|_| UnwrapError::Malformed)?;
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &private,
            &encapsulated,
            info,
            &wrapped.ciphertext,
            b"",
        )
        .map_err(|_| UnwrapError::NotForThisKey)?,
    );
    if plaintext.len() != 32 {
        return Err(UnwrapError::Malformed);
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(&plaintext);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_opens_only_for_its_node_and_binding() {
        let node = UnwrapSecret::generate();
        let other = UnwrapSecret::generate();
        let key = ContentKey::generate();
        let info = binding_info("lic-1", "model-a");
        let wrapped = wrap(&node.public_key(), &info, &key).unwrap();
        assert_eq!(
            unwrap(&node, &info, &wrapped).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            unwrap(&other, &info, &wrapped).unwrap_err(),
            UnwrapError::NotForThisKey
        );
        let moved = binding_info("lic-2", "model-a");
        assert_eq!(
            unwrap(&node, &moved, &wrapped).unwrap_err(),
            UnwrapError::NotForThisKey
        );
    }
}
