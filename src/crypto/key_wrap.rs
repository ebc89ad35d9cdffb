//! Content keys wrapped to one node: HPKE (RFC 9180) base mode with HKDF-SHA256 and
//! AES-256-GCM, over DHKEM(X25519, HKDF-SHA256) for nodes whose unwrap key is a file, or
//! DHKEM(P-256, HKDF-SHA256) for nodes whose unwrap key lives in a TPM (which does
//! P-256, not X25519).
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
/// The suite of nodes whose unwrap key is a P-256 key (TPM-held).
pub const P256_SUITE: &str = super::hpke_p256::SUITE;

/// A node's public unwrap key, in one of the two suites: what licenses wrap keys to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UnwrapPublicKey {
    /// An X25519 public key ([`SUITE`]).
    X25519([u8; 32]),
    /// An uncompressed SEC1 P-256 point ([`P256_SUITE`]).
    P256([u8; super::hpke_p256::POINT_LEN]),
}

impl std::fmt::Debug for UnwrapPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.suite(), hex::encode(self.as_bytes()))
    }
}

impl UnwrapPublicKey {
    /// The suite's name, as licenses write it in `content_key.suite`.
    pub fn suite(&self) -> &'static str {
        match self {
            UnwrapPublicKey::X25519(_) => SUITE,
            UnwrapPublicKey::P256(_) => P256_SUITE,
        }
    }

    /// The `unwrap_suite` field of enrollments and licenses: omitted for X25519, the
    /// suite every document before TPM nodes used.
    pub fn suite_field(&self) -> Option<String> {
        match self {
            UnwrapPublicKey::X25519(_) => None,
            UnwrapPublicKey::P256(_) => Some(P256_SUITE.to_string()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            UnwrapPublicKey::X25519(key) => key,
            UnwrapPublicKey::P256(point) => point,
        }
    }

    /// Read a key from a document's `unwrap_suite` (None: X25519) and `unwrap_key` bytes.
    /// A P-256 key must be an uncompressed point on the curve.
    pub fn from_parts(suite: Option<&str>, bytes: &[u8]) -> Result<Self, String> {
        match suite {
            None => <[u8; 32]>::try_from(bytes)
                .map(UnwrapPublicKey::X25519)
                .map_err(|_| {
                    format!(
                        "unwrap_key is {} bytes; an X25519 key is 32",
                        bytes.len()
                    )
                }),
            Some(P256_SUITE) => {
                let point = <[u8; super::hpke_p256::POINT_LEN]>::try_from(bytes)
                    .ok()
                    .filter(|p| p[0] == 0x04 && p256::PublicKey::from_sec1_bytes(p).is_ok())
                    .ok_or("unwrap_key is not an uncompressed P-256 point on the curve")?;
                Ok(UnwrapPublicKey::P256(point))
            }
            Some(other) => Err(format!(
                "unknown unwrap_suite {other:?} (known: {P256_SUITE:?}, or the field omitted for {SUITE:?})"
            )),
        }
    }
}

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
    fn public_key(&self) -> UnwrapPublicKey;
    /// Open a 32-byte secret wrapped to this key under `info`.
    fn unwrap(&self, info: &[u8], wrapped: &WrappedKey)
        -> Result<Zeroizing<[u8; 32]>, UnwrapError>;
}

impl KeyUnwrapper for UnwrapSecret {
    fn public_key(&self) -> UnwrapPublicKey {
        UnwrapPublicKey::X25519(UnwrapSecret::public_key(self))
    }

    fn unwrap(
        &self,
        info: &[u8],
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
        open_with_secret(self, info, wrapped)
    }
}

/// A P-256 unwrap key in memory: the TPM nodes' suite computed in software. The same
/// key imported into a TPM unwraps the same licenses (tests/tpm.rs checks it); for that
/// cross-check, tests, and tooling, not for nodes (whose P-256 key never leaves the TPM).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct P256UnwrapSecret([u8; 32]);

impl P256UnwrapSecret {
    /// A fresh random scalar (retried in the rare case it is zero or not below n).
    pub fn generate() -> Self {
        loop {
            let candidate = random::bytes::<32>();
            if super::hpke_p256::public_point(&candidate).is_ok() {
                return P256UnwrapSecret(candidate);
            }
        }
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, UnwrapError> {
        super::hpke_p256::public_point(&bytes).map_err(|_| UnwrapError::Malformed)?;
        Ok(P256UnwrapSecret(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl KeyUnwrapper for P256UnwrapSecret {
    fn public_key(&self) -> UnwrapPublicKey {
        // from_bytes and generate checked the scalar.
        UnwrapPublicKey::P256(super::hpke_p256::public_point(&self.0).unwrap_or([0; 65]))
    }

    fn unwrap(
        &self,
        info: &[u8],
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
        let UnwrapPublicKey::P256(point) = self.public_key() else {
            return Err(UnwrapError::Malformed);
        };
        let enc = p256_encapsulated(wrapped)?;
        let dh = super::hpke_p256::software_dh(&self.0, enc).map_err(|_| UnwrapError::Malformed)?;
        open_p256(&dh, enc, &point, info, wrapped)
    }
}

/// The encapsulated key of a P-256 wrapping: a 65-byte uncompressed point.
pub fn p256_encapsulated(
    wrapped: &WrappedKey,
) -> Result<&[u8; super::hpke_p256::POINT_LEN], UnwrapError> {
    wrapped
        .encapsulated
        .as_slice()
        .try_into()
        .map_err(|_| UnwrapError::Malformed)
}

/// The software half of a P-256 unwrap, after the DH (computed in software or by a
/// TPM): RFC 9180's key schedule and the AEAD, to a 32-byte secret.
pub fn open_p256(
    dh: &[u8; 32],
    enc: &[u8; super::hpke_p256::POINT_LEN],
    recipient: &[u8; super::hpke_p256::POINT_LEN],
    info: &[u8],
    wrapped: &WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    use super::hpke_p256::{open, Aead, OpenError};
    let plaintext = open(
        dh,
        enc,
        recipient,
        info,
        b"",
        &wrapped.ciphertext,
        Aead::Aes256Gcm,
    )
    .map_err(|e| match e {
        OpenError::Malformed => UnwrapError::Malformed,
        OpenError::NotForThisKey => UnwrapError::NotForThisKey,
    })?;
    let secret: [u8; 32] = plaintext[..]
        .try_into()
        .map_err(|_| UnwrapError::Malformed)?;
    Ok(Zeroizing::new(secret))
}

/// A content key sealed to one node: the HPKE encapsulated key and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The encapsulated key: 32 bytes (X25519) or a 65-byte uncompressed point (P-256).
    pub encapsulated: Vec<u8>,
    /// 32-byte key + 16-byte AEAD tag.
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("the content key is wrapped to another node's key (or the license was altered)")]
    NotForThisKey,
    #[error("the wrapped content key is malformed")]
    Malformed,
    /// The device that holds the key (a TPM) failed; the message says why and what to do.
    #[error("{0}")]
    Device(String),
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

/// Wrap `key` to the node whose unwrap key is `recipient`.
pub fn wrap(
    recipient: &UnwrapPublicKey,
    info: &[u8],
    key: &ContentKey,
) -> Result<WrappedKey, UnwrapError> {
    wrap_secret(recipient, info, key.as_bytes())
}

/// Wrap any 32-byte secret (a content key, a watermark key) to a node.
pub fn wrap_secret(
    recipient: &UnwrapPublicKey,
    info: &[u8],
    secret: &[u8; 32],
) -> Result<WrappedKey, UnwrapError> {
    let recipient = match recipient {
        UnwrapPublicKey::X25519(key) => key,
        UnwrapPublicKey::P256(point) => {
            let (encapsulated, ciphertext) =
                super::hpke_p256::seal(point, info, secret).map_err(|_| UnwrapError::Malformed)?;
            return Ok(WrappedKey {
                encapsulated: encapsulated.to_vec(),
                ciphertext,
            });
        }
    };
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
    Ok(WrappedKey {
        encapsulated: encapsulated.to_bytes().to_vec(),
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
    if wrapped.encapsulated.len() != 32 {
        return Err(UnwrapError::Malformed);
    }
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
        let wrapped = wrap(&KeyUnwrapper::public_key(&node), &info, &key).unwrap();
        assert_eq!(
            unwrap(&node, &info, &wrapped).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            unwrap(&other, &info, &wrapped).unwrap_err(),
            UnwrapError::NotForThisKey
        );
        let p256 = P256UnwrapSecret::generate();
        let wrapped_p256 = wrap(&p256.public_key(), &info, &key).unwrap();
        assert_eq!(wrapped_p256.encapsulated.len(), 65);
        assert_eq!(
            unwrap(&p256, &info, &wrapped_p256).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            unwrap(&P256UnwrapSecret::generate(), &info, &wrapped_p256).unwrap_err(),
            UnwrapError::NotForThisKey
        );
        // A wrapping for one suite never opens as the other.
        assert_eq!(
            unwrap(&node, &info, &wrapped_p256).unwrap_err(),
            UnwrapError::Malformed
        );
        assert_eq!(
            unwrap(&p256, &info, &wrapped).unwrap_err(),
            UnwrapError::Malformed
        );
        let moved = binding_info("lic-2", "model-a");
        assert_eq!(
            unwrap(&node, &moved, &wrapped).unwrap_err(),
            UnwrapError::NotForThisKey
        );
    }
}
