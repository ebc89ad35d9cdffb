//! The sealed container header: fixed binary layout, little-endian, parsed strictly.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "LHSEALED"
//!      8     2  format version (1)
//!     10     4  header length in bytes (this whole header)
//!     14     4  segment size (power of two, 4 KiB ..= 16 MiB)
//!     18     8  plaintext length
//!     26    32  plaintext SHA-256
//!     58    16  content key id
//!     74     7  nonce prefix (random per sealing)
//!     81     2  model id length n (1 ..= 128)
//!     83     n  model id (ASCII letters, digits, '.', '_', '-', ':')
//! ```
//!
//! Its SHA-256 (the header digest) is bound into every segment's associated data, so
//! any edit of the header makes every segment fail authentication.

use crate::crypto::sha256;

pub const MAGIC: &[u8; 8] = b"LHSEALED";
pub const VERSION: u16 = 1;
pub const FIXED_LEN: usize = 83;
pub const MAX_MODEL_ID: usize = 128;
pub const MIN_SEGMENT: u32 = 4096;
pub const MAX_SEGMENT: u32 = 16 << 20;
/// Default segment size: large enough that per-segment overhead is negligible, small
/// enough for fine-grained parallel decryption.
pub const DEFAULT_SEGMENT: u32 = 1 << 20;

/// A sealed model's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub segment_size: u32,
    pub plaintext_len: u64,
    pub plaintext_sha256: [u8; 32],
    pub key_id: [u8; 16],
    pub nonce_prefix: [u8; 7],
    pub model_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a leasehold sealed model (the file does not start with the sealed-model magic)")]
    NotSealed,
    #[error("sealed model format version {0} is not supported by this build (it reads version {VERSION}); upgrade leasehold")]
    UnsupportedVersion(u16),
    #[error("the sealed model header is damaged: {0}")]
    Malformed(String),
}

/// Check a model id: 1..=128 characters from a safe set, so it can appear in file
/// names, logs and HPKE info strings without escaping.
pub fn validate_model_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MODEL_ID {
        return Err(format!("a model id is 1 to {MAX_MODEL_ID} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
    {
        return Err(format!(
            "model id '{id}' may contain only letters, digits, '.', '_', '-' and ':'"
        ));
    }
    Ok(())
}

impl Header {
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.model_id.len()
    }

    /// Number of segments: at least one (an empty plaintext is one empty final segment).
    pub fn segment_count(&self) -> u64 {
        self.plaintext_len
            .div_ceil(u64::from(self.segment_size))
            .max(1)
    }

    /// The exact length of the sealed file this header describes.
    pub fn sealed_len(&self) -> u64 {
        self.encoded_len() as u64
            + self.plaintext_len
            + self.segment_count() * super::stream::TAG_LEN as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        out.extend_from_slice(&self.segment_size.to_le_bytes());
        out.extend_from_slice(&self.plaintext_len.to_le_bytes());
        out.extend_from_slice(&self.plaintext_sha256);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.nonce_prefix);
        out.extend_from_slice(&(self.model_id.len() as u16).to_le_bytes());
        out.extend_from_slice(self.model_id.as_bytes());
        out
    }

    /// SHA-256 of the encoded header: what licenses bind and segments authenticate.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&[&self.encode()])
    }

    /// Parse the header at the start of `bytes` (the rest of the file may follow).
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(HeaderError::NotSealed);
        }
        if bytes.len() < FIXED_LEN {
            return Err(HeaderError::Malformed(format!(
                "it is {} bytes, shorter than the {FIXED_LEN}-byte fixed header",
                bytes.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let version = u16_at(8);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let header_len = u32_at(10) as usize;
        let segment_size = u32_at(14);
        let plaintext_len = u64::from_le_bytes(bytes[18..26].try_into().unwrap());
        let model_id_len = u16_at(81) as usize;
        if !(1..=MAX_MODEL_ID).contains(&model_id_len) {
            return Err(HeaderError::Malformed(format!(
                "model id length {model_id_len} is outside 1..={MAX_MODEL_ID}"
            )));
        }
        if header_len != FIXED_LEN + model_id_len {
            return Err(HeaderError::Malformed(format!(
                "header length {header_len} does not match its fields ({})",
                FIXED_LEN + model_id_len
            )));
        }
        if bytes.len() < header_len {
            return Err(HeaderError::Malformed(
                "the file ends inside the header".into(),
            ));
        }
        if !segment_size.is_power_of_two() || !(MIN_SEGMENT..=MAX_SEGMENT).contains(&segment_size) {
            return Err(HeaderError::Malformed(format!(
                "segment size {segment_size} is not a power of two between {MIN_SEGMENT} and {MAX_SEGMENT}"
            )));
        }
        let model_id = std::str::from_utf8(&bytes[FIXED_LEN..header_len])
            .map_err(|_| HeaderError::Malformed("model id is not UTF-8".into()))?
            .to_string();
        validate_model_id(&model_id).map_err(HeaderError::Malformed)?;
        let header = Header {
            segment_size,
            plaintext_len,
            plaintext_sha256: bytes[26..58].try_into().unwrap(),
            key_id: bytes[58..74].try_into().unwrap(),
            nonce_prefix: bytes[74..81].try_into().unwrap(),
            model_id,
        };
        // Segment counters are 32 bits (the nonce layout); refuse what cannot be sealed.
        if header.segment_count() > u64::from(u32::MAX) {
            return Err(HeaderError::Malformed(
                "more segments than the nonce counter allows".into(),
            ));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            segment_size: DEFAULT_SEGMENT,
            plaintext_len: 3 << 20,
            plaintext_sha256: [1; 32],
            key_id: [2; 16],
            nonce_prefix: [3; 7],
            model_id: "smollm2-135m".into(),
        }
    }

    #[test]
    fn encode_parse_round_trip() {
        let header = sample();
        let bytes = header.encode();
        assert_eq!(bytes.len(), header.encoded_len());
        assert_eq!(Header::parse(&bytes).unwrap(), header);
        assert_eq!(header.segment_count(), 3);
    }

    #[test]
    fn strict_parsing() {
        let bytes = sample().encode();
        assert_eq!(
            Header::parse(b"GGUF\x03\0\0\0").unwrap_err(),
            HeaderError::NotSealed
        );
        let mut v = bytes.clone();
        v[8] = 9;
        assert_eq!(
            Header::parse(&v).unwrap_err(),
            HeaderError::UnsupportedVersion(9)
        );
        let mut v = bytes.clone();
        v[14] = 0x11; // segment size no longer a power of two
        assert!(matches!(Header::parse(&v), Err(HeaderError::Malformed(_))));
        assert!(matches!(
            Header::parse(&bytes[..40]),
            Err(HeaderError::Malformed(_))
        ));
        let mut v = bytes.clone();
        v[FIXED_LEN] = b'/';
        assert!(matches!(Header::parse(&v), Err(HeaderError::Malformed(_))));
    }
}
