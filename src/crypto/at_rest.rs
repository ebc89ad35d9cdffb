//! Content keys at rest in the license server's database: AES-256-GCM under a key
//! derived from the issuer's secret key, with the model id as associated data. A copy
//! of the database alone (a backup, a replica's disk) does not reveal content keys, and
//! a stored key cannot be moved to another model's row.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use super::signing::SecretKey;
use super::{random, sha256, ContentKey};

const CONTEXT: &[u8] = b"leasehold content key at rest v1\0";

/// The stored key could not be opened: another issuer key sealed it, or it was altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored content key for model '{model_id}' cannot be opened: it was stored under another issuer key or altered; add the model again with `leasehold admin model add`")]
pub struct AtRestError {
    pub model_id: String,
}

fn aead(issuer: &SecretKey) -> LessSafeKey {
    let secret = issuer.to_bytes();
    let key = Zeroizing::new(sha256(&[CONTEXT, secret.as_slice()]));
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key.as_slice())
            .expect("a 32-byte key is a valid AES-256 key"),
    )
}

/// Encrypt `key` for storage: nonce (12) ‖ ciphertext (32) ‖ tag (16).
pub fn seal(issuer: &SecretKey, model_id: &str, key: &ContentKey) -> Vec<u8> {
    let nonce = random::bytes::<12>();
    let mut data = key.as_bytes().to_vec();
    aead(issuer)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(model_id.as_bytes()),
            &mut data,
        )
        .expect("AES-GCM sealing 32 bytes cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    data.iter_mut().for_each(|b| *b = 0);
    out
}

/// Open a stored key.
pub fn open(issuer: &SecretKey, model_id: &str, stored: &[u8]) -> Result<ContentKey, AtRestError> {
    let fail = || AtRestError {
        model_id: model_id.to_string(),
    };
    if stored.len() != 12 + 32 + 16 {
        return Err(fail());
    }
    let nonce: [u8; 12] = stored[..12].try_into().expect("length checked");
    let mut data = Zeroizing::new(stored[12..].to_vec());
    let plain = aead(issuer)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(model_id.as_bytes()),
            &mut data,
        )
        .map_err(|_| fail())?;
    let bytes: [u8; 32] = plain[..32].try_into().map_err(|_| fail())?;
    Ok(ContentKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let issuer = SecretKey::generate();
        let key = ContentKey::generate();
        let stored = seal(&issuer, "m1", &key);
        assert_eq!(
            open(&issuer, "m1", &stored).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert!(
            open(&issuer, "m2", &stored).is_err(),
            "bound to the model id"
        );
        assert!(
            open(&SecretKey::generate(), "m1", &stored).is_err(),
            "bound to the issuer key"
        );
        let mut flipped = stored.clone();
        flipped[20] ^= 1;
        assert!(open(&issuer, "m1", &flipped).is_err());
    }
}
