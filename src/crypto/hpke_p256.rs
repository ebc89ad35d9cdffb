//! HPKE (RFC 9180) base mode with DHKEM(P-256, HKDF-SHA256), HKDF-SHA256 and an AES-GCM
//! AEAD, split at the Diffie-Hellman step: the recipient's DH may be computed where its
//! key lives (a TPM's `TPM2_ECDH_ZGen` for a key that never leaves it), and everything
//! after it, the KEM's ExtractAndExpand, the key schedule and the AEAD, is done here in
//! software. [`open`] takes the DH output, never the private key.
//!
//! The sender side (the vendor or license server wrapping a key to a P-256 node) is
//! [`seal`], on the `hpke` crate; the tests check that both halves agree with the
//! `hpke` crate's own receiver and with RFC 9180's published test vectors.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The suite name for P-256 nodes (the X25519 one is [`super::key_wrap::SUITE`]).
pub const SUITE: &str = "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";

const KEM_ID: u16 = 0x0010;
const KDF_ID: u16 = 0x0001;
/// An uncompressed SEC1 P-256 point: 0x04 ‖ x ‖ y.
pub const POINT_LEN: usize = 65;

/// The AEADs this module opens: AES-256-GCM is the suite's; AES-128-GCM only so that
/// RFC 9180's P-256 vectors (which use it) can check the rest of the schedule too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    Aes128Gcm,
    Aes256Gcm,
}

impl Aead {
    fn id(self) -> u16 {
        match self {
            Aead::Aes128Gcm => 0x0001,
            Aead::Aes256Gcm => 0x0002,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm => 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the encapsulated key or the recipient key is not an uncompressed P-256 point")]
    Malformed,
    #[error("the ciphertext does not open with this key (wrapped to another key, or altered)")]
    NotForThisKey,
}

/// `LabeledExtract(salt, label, ikm)` (RFC 9180 §4): the PRK, and HKDF keyed with it.
fn labeled_extract(
    suite_id: &[u8],
    salt: &[u8],
    label: &[u8],
    ikm: &[u8],
) -> (Zeroizing<[u8; 32]>, Hkdf<Sha256>) {
    let labeled = Zeroizing::new([b"HPKE-v1".as_slice(), suite_id, label, ikm].concat());
    let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(salt), &labeled);
    (Zeroizing::new(prk.into()), hkdf)
}

/// `LabeledExpand(prk, label, info, L)` (RFC 9180 §4).
fn labeled_expand(prk: &Hkdf<Sha256>, suite_id: &[u8], label: &[u8], info: &[u8], out: &mut [u8]) {
    let length = u16::try_from(out.len()).expect("outputs here are at most 32 bytes");
    let labeled = [
        &length.to_be_bytes(),
        b"HPKE-v1".as_slice(),
        suite_id,
        label,
        info,
    ]
    .concat();
    prk.expand(&labeled, out)
        .expect("outputs here are far below 255 hash lengths");
}

/// The KEM's shared secret from the DH output (the x-coordinate of skR · pkE):
/// `ExtractAndExpand(dh, enc ‖ pkR)` (RFC 9180 §4.1).
pub fn kem_shared_secret(
    dh: &[u8; 32],
    enc: &[u8; POINT_LEN],
    recipient: &[u8; POINT_LEN],
) -> Zeroizing<[u8; 32]> {
    let suite_id = [b"KEM".as_slice(), &KEM_ID.to_be_bytes()].concat();
    let (_, prk) = labeled_extract(&suite_id, b"", b"eae_prk", dh);
    let kem_context = [enc.as_slice(), recipient.as_slice()].concat();
    let mut secret = Zeroizing::new([0u8; 32]);
    labeled_expand(
        &prk,
        &suite_id,
        b"shared_secret",
        &kem_context,
        &mut secret[..],
    );
    secret
}

/// The base-mode key schedule (RFC 9180 §5.1): the AEAD key and base nonce.
pub fn key_schedule(
    shared_secret: &[u8; 32],
    info: &[u8],
    aead: Aead,
) -> (Zeroizing<Vec<u8>>, [u8; 12]) {
    let suite_id = [
        b"HPKE".as_slice(),
        &KEM_ID.to_be_bytes(),
        &KDF_ID.to_be_bytes(),
        &aead.id().to_be_bytes(),
    ]
    .concat();
    // Base mode: no PSK (psk_id and psk empty), mode byte 0.
    let (psk_id_hash, _) = labeled_extract(&suite_id, b"", b"psk_id_hash", b"");
    let (info_hash, _) = labeled_extract(&suite_id, b"", b"info_hash", info);
    let context = [[0u8].as_slice(), &psk_id_hash[..], &info_hash[..]].concat();
    let (_, secret) = labeled_extract(&suite_id, shared_secret, b"secret", b"");
    let mut key = Zeroizing::new(vec![0u8; aead.key_len()]);
    labeled_expand(&secret, &suite_id, b"key", &context, &mut key);
    let mut nonce = [0u8; 12];
    labeled_expand(&secret, &suite_id, b"base_nonce", &context, &mut nonce);
    (key, nonce)
}

/// Open the first message (sequence number 0) of a base-mode context whose DH output the
/// recipient computed: `dh` = x-coordinate of skR · pkE.
pub fn open(
    dh: &[u8; 32],
    enc: &[u8; POINT_LEN],
    recipient: &[u8; POINT_LEN],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    aead: Aead,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if enc[0] != 0x04 || recipient[0] != 0x04 {
        return Err(OpenError::Malformed);
    }
    let shared = kem_shared_secret(dh, enc, recipient);
    let (key, nonce) = key_schedule(&shared, info, aead);
    let algorithm = match aead {
        Aead::Aes128Gcm => &AES_128_GCM,
        Aead::Aes256Gcm => &AES_256_GCM,
    };
    let cipher =
        LessSafeKey::new(UnboundKey::new(algorithm, &key).map_err(|_| OpenError::Malformed)?);
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plaintext_len = cipher
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buffer[..],
        )
        .map_err(|_| OpenError::NotForThisKey)?
        .len();
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

/// Wrap `secret` to the P-256 public key `recipient` (uncompressed SEC1) under `info`,
/// with an empty AAD: returns `enc` and the ciphertext (the secret and its 16-byte tag).
pub fn seal(
    recipient: &[u8; POINT_LEN],
    info: &[u8],
    secret: &[u8],
) -> Result<([u8; POINT_LEN], Vec<u8>), OpenError> {
    use hpke::{
        aead::AesGcm256, kdf::HkdfSha256, kem::DhP256HkdfSha256, Deserializable, Kem, OpModeS,
        Serializable,
    };
    let public = <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| OpenError::Malformed)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, DhP256HkdfSha256, _>(
        &OpModeS::Base,
        &public,
        info,
        secret,
        b"",
        &mut rand::rng(),
    )
    .map_err(|_| OpenError::Malformed)?;
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(&enc.to_bytes());
    Ok((out, ciphertext))
}

/// The recipient's DH in software: the x-coordinate of `secret` · `point` (what
/// `TPM2_ECDH_ZGen` returns for a TPM-resident key). For software P-256 keys and tests.
pub fn software_dh(
    secret: &[u8; 32],
    point: &[u8; POINT_LEN],
) -> Result<Zeroizing<[u8; 32]>, OpenError> {
    let secret = p256::SecretKey::from_slice(secret).map_err(|_| OpenError::Malformed)?;
    let point = p256::PublicKey::from_sec1_bytes(point).map_err(|_| OpenError::Malformed)?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), point.as_affine());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(shared.raw_secret_bytes());
    Ok(out)
}

/// The uncompressed public point of a P-256 secret scalar.
pub fn public_point(secret: &[u8; 32]) -> Result<[u8; POINT_LEN], OpenError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::SecretKey::from_slice(secret).map_err(|_| OpenError::Malformed)?;
    let point = secret.public_key().to_encoded_point(false);
    point
        .as_bytes()
        .try_into()
        .map_err(|_| OpenError::Malformed)
}
