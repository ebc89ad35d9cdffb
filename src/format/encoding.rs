//! serde helpers: fixed-size byte arrays as base64 (keys, signatures) or hex (digests).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

/// `[u8; N]` as standard base64 with padding.
pub mod base64_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = B64
            .decode(text.as_bytes())
            .map_err(|_| D::Error::custom("invalid base64"))?;
        bytes.try_into().map_err(|v: Vec<u8>| {
            D::Error::custom(format!("expected {N} bytes, found {}", v.len()))
        })
    }
}

/// `Vec<u8>` as standard base64 with padding.
pub mod base64_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(|_| D::Error::custom("invalid base64"))
    }
}

/// `[u8; N]` as lowercase hex (digests, ids).
pub mod hex_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(D::Error::custom(format!(
                "expected {} lowercase hex digits",
                2 * N
            )));
        }
        let mut out = [0u8; N];
        hex::decode_to_slice(&text, &mut out).map_err(|_| D::Error::custom("invalid hex"))?;
        Ok(out)
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Digest(#[serde(with = "hex_array")] pub [u8; 32]);
