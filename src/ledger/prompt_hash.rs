//! Opt-in salted prompt hashes (`serve --ledger-prompt-hash`).
//!
//! The ledger never holds prompt text. With the opt-in, each request record carries
//! `prompt_sha256 = SHA-256("leasehold prompt\0" ‖ salt ‖ encoded prompt)`, where the
//! 32-byte salt is a secret kept in `NODE_DIR/ledger.salt` (0600). Whoever holds the
//! salt can show that a given prompt was (or was not) served (`leasehold audit
//! prompt-hash`); an auditor without it learns nothing about prompts, not even which
//! requests repeated a short, guessable one.
//!
//! Encoding: `chat\0` or `text\0`, then each part as its byte length (u64
//! little-endian) and bytes: for chat, role and content of each message in order; for
//! text, the prompt.

use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::{random, sha256};
use crate::format::encoding::Digest;
use crate::fsutil::{self, FsError, Replace};

/// The salt's file name in the node directory.
pub const SALT_FILE: &str = "ledger.salt";

const TAG: &[u8] = b"leasehold prompt\0";

/// A prompt as the hash sees it.
pub enum PromptParts<'a> {
    Chat(Vec<(&'a str, &'a str)>),
    Text(&'a str),
}

/// The node's secret prompt salt.
pub struct PromptSalt(Zeroizing<[u8; 32]>);

impl PromptSalt {
    /// Read `NODE_DIR/ledger.salt`, creating it (random, 0600) on first use.
    pub fn load_or_create(node_dir: &Path) -> Result<PromptSalt, FsError> {
        let path = node_dir.join(SALT_FILE);
        if !path.exists() {
            let fresh = Zeroizing::new(random::bytes::<32>());
            match fsutil::write_atomic(&path, &fresh[..], fsutil::SECRET_MODE, Replace::Never) {
                Ok(()) => return Ok(PromptSalt(fresh)),
                // Another process created it first: read theirs.
                Err(_) if path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        Self::read(&path)
    }

    /// Read a salt file (the operator's copy, for `audit prompt-hash`).
    pub fn read(path: &Path) -> Result<PromptSalt, FsError> {
        let bytes = Zeroizing::new(fsutil::read_limited(path, 64, "prompt salt")?);
        let salt = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            let why = format!("a prompt salt is 32 bytes, this file has {}", bytes.len());
            FsError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, why),
            )
        })?;
        Ok(PromptSalt(Zeroizing::new(salt)))
    }

    pub fn hash(&self, prompt: &PromptParts) -> Digest {
        let mut encoded = Vec::new();
        let mut part = |p: &str| {
            encoded.extend_from_slice(&(p.len() as u64).to_le_bytes());
            encoded.extend_from_slice(p.as_bytes());
        };
        let kind: &[u8] = match prompt {
            PromptParts::Chat(messages) => {
                for (role, content) in messages {
                    part(role);
                    part(content);
                }
                b"chat\0"
            }
            PromptParts::Text(text) => {
                part(text);
                b"text\0"
            }
        };
        let encoded = Zeroizing::new(encoded);
        Digest(sha256(&[TAG, &self.0[..], kind, &encoded]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_and_unambiguous() {
        let a = PromptSalt(Zeroizing::new([1; 32]));
        let b = PromptSalt(Zeroizing::new([2; 32]));
        let text = PromptParts::Text("hello");
        assert_eq!(a.hash(&text), a.hash(&PromptParts::Text("hello")));
        assert_ne!(a.hash(&text), b.hash(&text));
        // Message boundaries and kinds are part of the hash.
        let ab = a.hash(&PromptParts::Chat(vec![("user", "ab")]));
        let a_b = a.hash(&PromptParts::Chat(vec![("user", "a"), ("user", "b")]));
        assert_ne!(ab, a_b);
        assert_ne!(
            a.hash(&PromptParts::Chat(vec![("user", "hello")])),
            a.hash(&PromptParts::Text("hello"))
        );
    }

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = PromptSalt::load_or_create(dir.path()).unwrap();
        let again = PromptSalt::load_or_create(dir.path()).unwrap();
        assert_eq!(first.0, again.0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SALT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(SALT_FILE), b"short").unwrap();
        assert!(PromptSalt::load_or_create(dir.path()).is_err());
    }
}
