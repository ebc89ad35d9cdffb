//! Key files: short text files a human can read, diff and paste (after minisign).
//!
//! ```text
//! # leasehold Ed25519 public key 3f1c2a9d8e7b6a50
//! ed25519-public:q0Yk...=
//! ```
//!
//! Lines starting with `#` are comments and are not trusted. Exactly one line holds the
//! key as `KIND:BASE64`; the kind says what the key is, so a public key given where a
//! secret key is expected is a clear error rather than a confusing failure later.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::signing::{PublicKey, SecretKey};
use crate::fsutil::{self, FsError, Replace};

/// The kinds of key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519Secret,
    Ed25519Public,
    X25519Secret,
    X25519Public,
    ContentKey,
}

impl KeyKind {
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::Ed25519Secret => "ed25519-secret",
            KeyKind::Ed25519Public => "ed25519-public",
            KeyKind::X25519Secret => "x25519-secret",
            KeyKind::X25519Public => "x25519-public",
            KeyKind::ContentKey => "content-key",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::Ed25519Secret => "an Ed25519 secret (signing) key",
            KeyKind::Ed25519Public => "an Ed25519 public key",
            KeyKind::X25519Secret => "an X25519 secret (unwrap) key",
            KeyKind::X25519Public => "an X25519 public key",
            KeyKind::ContentKey => "a model content key",
        }
    }

    fn is_secret(self) -> bool {
        matches!(
            self,
            KeyKind::Ed25519Secret | KeyKind::X25519Secret | KeyKind::ContentKey
        )
    }

    fn from_label(label: &str) -> Option<Self> {
        [
            KeyKind::Ed25519Secret,
            KeyKind::Ed25519Public,
            KeyKind::X25519Secret,
            KeyKind::X25519Public,
            KeyKind::ContentKey,
        ]
        .into_iter()
        .find(|k| k.label() == label)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path} is not a leasehold key file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{path} holds {found}, but {expected} is needed here")]
    WrongKind {
        path: String,
        found: &'static str,
        expected: &'static str,
    },
}

/// Largest key file accepted; real ones are under 200 bytes.
const KEY_FILE_LIMIT: u64 = 4096;

/// Render a key file.
pub fn render(kind: KeyKind, key: &[u8; 32], comment: &str) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# {comment}\n{}:{}\n",
        kind.label(),
        B64.encode(key)
    ))
}

/// Write a key file atomically; keys are never overwritten.
pub fn write(path: &Path, kind: KeyKind, key: &[u8; 32], comment: &str) -> Result<(), FsError> {
    let mode = if kind.is_secret() {
        fsutil::SECRET_MODE
    } else {
        fsutil::PUBLIC_MODE
    };
    let text = render(kind, key, comment);
    fsutil::write_atomic(path, text.as_bytes(), mode, Replace::Never)
}

/// Read a key file of the expected kind.
pub fn read(path: &Path, expected: KeyKind) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let bytes = Zeroizing::new(fsutil::read_limited(path, KEY_FILE_LIMIT, "key file")?);
    parse(&bytes, expected).map_err(|e| match e {
        ParseError::Malformed(reason) => KeyFileError::Malformed {
            path: path.display().to_string(),
            reason,
        },
        ParseError::WrongKind(found) => KeyFileError::WrongKind {
            path: path.display().to_string(),
            found: found.describe(),
            expected: expected.describe(),
        },
    })
}

/// Read an Ed25519 secret (signing) key file.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyFileError> {
    Ok(SecretKey::from_bytes(&*read(path, KeyKind::Ed25519Secret)?))
}

/// Read an Ed25519 public key file.
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    PublicKey::from_bytes(&*read(path, KeyKind::Ed25519Public)?).map_err(|e| {
        KeyFileError::Malformed {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })
}

enum ParseError {
    Malformed(String),
    WrongKind(KeyKind),
}

fn parse(bytes: &[u8], expected: KeyKind) -> Result<Zeroizing<[u8; 32]>, ParseError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ParseError::Malformed("it is not UTF-8 text".into()))?;
    let mut key_lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = key_lines
        .next()
        .ok_or_else(|| ParseError::Malformed("it holds no key line".into()))?;
    if key_lines.next().is_some() {
        return Err(ParseError::Malformed(
            "it holds more than one key line".into(),
        ));
    }
    let (label, encoded) = line
        .split_once(':')
        .ok_or_else(|| ParseError::Malformed("the key line is not KIND:BASE64".into()))?;
    let kind = KeyKind::from_label(label)
        .ok_or_else(|| ParseError::Malformed(format!("unknown key kind '{label}'")))?;
    if kind != expected {
        return Err(ParseError::WrongKind(kind));
    }
    let decoded = Zeroizing::new(
        B64.decode(encoded)
            .map_err(|_| ParseError::Malformed("the key is not valid base64".into()))?,
    );
    let key: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
        ParseError::Malformed(format!("the key is {} bytes, not 32", decoded.len()))
    })?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_kind_is_named() {
        let key = [7u8; 32];
        let text = render(KeyKind::Ed25519Public, &key, "test key");
        assert_eq!(
            *parse(text.as_bytes(), KeyKind::Ed25519Public).ok().unwrap(),
            key
        );
        assert!(matches!(
            parse(text.as_bytes(), KeyKind::Ed25519Secret),
            Err(ParseError::WrongKind(KeyKind::Ed25519Public))
        ));
        assert!(matches!(
            parse(b"ed25519-public:AAAA\n", KeyKind::Ed25519Public),
            Err(ParseError::Malformed(_))
        ));
    }
}
