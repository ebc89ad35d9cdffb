//! Sealed models: a GGUF file encrypted into a container that only the content key
//! opens, segment by segment and in parallel.
//!
//! This module owns the container (see [`header`] for the layout and [`stream`] for
//! the cryptographic construction). It never writes plaintext to storage: sealing
//! reads the plaintext and writes only ciphertext; opening decrypts into memory the
//! caller provides.

pub mod header;
pub mod stream;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{random, ContentKey};
use crate::fsutil::{FsError, PendingFile, Replace};
pub use header::{Header, HeaderError};
use stream::{SegmentCipher, TAG_LEN};

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Errors sealing or opening a sealed model, each naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path} is not a GGUF model (it does not start with the GGUF magic); seal takes the plain .gguf file")]
    NotGguf { path: PathBuf },
    #[error("{path}: {source}")]
    Header { path: PathBuf, source: HeaderError },
    #[error("{path} is truncated: it is {actual} bytes but its header describes {expected}; copy the sealed file again")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} has {extra} unexpected bytes after its last segment: it was extended or damaged; copy the sealed file again")]
    Extended { path: PathBuf, extra: u64 },
    #[error("this content key does not open {path}: the key has id {key_id}, the model was sealed with key id {sealed_id}")]
    WrongKey {
        path: PathBuf,
        key_id: String,
        sealed_id: String,
    },
    #[error("{path}: segment {index} failed authentication: the sealed file (or its header) was edited, its segments reordered, or it was damaged; copy it again from the vendor")]
    SegmentTampered { path: PathBuf, index: u64 },
    #[error("{path}: the decrypted model's SHA-256 does not match the header's; the sealed file is not what the vendor sealed")]
    PlaintextMismatch { path: PathBuf },
    #[error("{0}")]
    InvalidModelId(String),
}

/// A callback told how many bytes were just processed (drives progress bars).
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// No progress reporting.
pub fn no_progress(_: u64) {}

/// Does `bytes` start like a GGUF file?
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == GGUF_MAGIC
}

/// Encrypt `plaintext` as the body of a sealed model into `body`
/// (`body.len() == plaintext.len() + segments × 16`), in parallel on the current rayon pool.
pub fn encrypt_body(
    cipher: &SegmentCipher,
    header: &Header,
    plaintext: &[u8],
    body: &mut [u8],
    progress: Progress,
) {
    let seg = header.segment_size as usize;
    let last_index = header.segment_count() - 1;
    assert_eq!(
        plaintext.len() as u64,
        header.plaintext_len,
        "plaintext length is the header's"
    );
    assert_eq!(
        body.len() as u64,
        header.sealed_len() - header.encoded_len() as u64,
        "body sized by the header"
    );
    body.par_chunks_mut(seg + TAG_LEN)
        .enumerate()
        .for_each(|(i, chunk)| {
            let start = i * seg;
            let len = chunk.len() - TAG_LEN;
            let (data, tag) = chunk.split_at_mut(len);
            let index = i as u64;
            tag.copy_from_slice(&cipher.seal_segment(
                index,
                index == last_index,
                &plaintext[start..start + len],
                data,
            ));
            progress(len as u64);
        });
}

/// Decrypt a sealed body into `plaintext` (`plaintext.len() == header.plaintext_len`), in
/// parallel on the current rayon pool. Each thread writes only its own range.
pub fn decrypt_body(
    cipher: &SegmentCipher,
    header: &Header,
    body: &[u8],
    plaintext: &mut [u8],
    progress: Progress,
) -> Result<(), stream::SegmentAuthFailed> {
    let seg = header.segment_size as usize;
    let last_index = header.segment_count() - 1;
    assert_eq!(
        plaintext.len() as u64,
        header.plaintext_len,
        "output sized by the header"
    );
    assert_eq!(
        body.len() as u64,
        header.sealed_len() - header.encoded_len() as u64,
        "body sized by the header"
    );
    if plaintext.is_empty() {
        let tag: &[u8; TAG_LEN] = body.try_into().expect("empty body is one tag");
        return cipher.open_segment(0, true, &[], tag, &mut []);
    }
    plaintext
        .par_chunks_mut(seg)
        .enumerate()
        .try_for_each(|(i, out)| {
            let start = i * (seg + TAG_LEN);
            let len = out.len();
            let tag: &[u8; TAG_LEN] = body[start + len..start + len + TAG_LEN].try_into().unwrap();
            let index = i as u64;
            // Straight from the sealed bytes into `out`: no intermediate copy.
            let result = cipher.open_segment(
                index,
                index == last_index,
                &body[start..start + len],
                tag,
                out,
            );
            progress(len as u64);
            result
        })
}

/// Seal `plaintext` under `header` (which fixes the nonce prefix) into a complete sealed
/// file in memory. Deterministic: the test vectors in docs/vectors are checked with it.
pub fn seal_to_vec(header: &Header, key: &ContentKey, plaintext: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; header.sealed_len() as usize];
    let encoded = header.encode();
    out[..encoded.len()].copy_from_slice(&encoded);
    let cipher = SegmentCipher::new(key, header);
    encrypt_body(
        &cipher,
        header,
        plaintext,
        &mut out[encoded.len()..],
        &no_progress,
    );
    out
}

/// Seal the GGUF at `input` into `output` under `key`. The key file is the caller's
/// business; `before_commit` runs after the sealed data is complete and fsynced but
/// before it takes its final name (the CLI writes the key file there, so a failure to
/// write the key leaves no sealed file whose key is lost).
pub fn seal_file(
    input: &Path,
    model_id: &str,
    output: &Path,
    key: &ContentKey,
    segment_size: u32,
    progress: Progress,
    before_commit: impl FnOnce() -> Result<(), FsError>,
) -> Result<Header, SealError> {
    header::validate_model_id(model_id).map_err(SealError::InvalidModelId)?;
    let file = File::open(input).map_err(|e| FsError::io(input, e))?;
    let plaintext = crate::sys::map_readonly(&file).map_err(|e| FsError::io(input, e))?;
    if !is_gguf(&plaintext) {
        return Err(SealError::NotGguf {
            path: input.to_path_buf(),
        });
    }
    let header = Header {
        segment_size,
        plaintext_len: plaintext.len() as u64,
        plaintext_sha256: Sha256::digest(&plaintext[..]).into(),
        key_id: key.key_id(),
        nonce_prefix: random::bytes::<7>(),
        model_id: model_id.to_string(),
    };
    let encoded = header.encode();
    // The reader's own checks (segment size, at most 2^32 - 1 segments): never write a
    // file that no reader opens.
    Header::parse(&encoded).map_err(|source| SealError::Header {
        path: input.to_path_buf(),
        source,
    })?;
    let pending = PendingFile::create(output, crate::fsutil::PUBLIC_MODE)?;
    pending
        .file()
        .set_len(header.sealed_len())
        .map_err(|e| FsError::io(output, e))?;
    let mut map = crate::sys::map_writable(pending.file()).map_err(|e| FsError::io(output, e))?;
    map[..encoded.len()].copy_from_slice(&encoded);
    let cipher = SegmentCipher::new(key, &header);
    encrypt_body(
        &cipher,
        &header,
        &plaintext,
        &mut map[encoded.len()..],
        progress,
    );
    map.flush().map_err(|e| FsError::io(output, e))?;
    drop(map);
    before_commit()?;
    pending.commit(Replace::Allowed)?;
    Ok(header)
}

/// A sealed model opened for reading: header parsed, length checked, body mapped.
pub struct SealedModel {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl SealedModel {
    /// Open and check the container's structure (not yet its authenticity: that needs the key).
    pub fn open(path: &Path) -> Result<SealedModel, SealError> {
        let file = File::open(path).map_err(|e| FsError::io(path, e))?;
        let map = crate::sys::map_readonly(&file).map_err(|e| FsError::io(path, e))?;
        let header = Header::parse(&map).map_err(|source| SealError::Header {
            path: path.to_path_buf(),
            source,
        })?;
        let expected = header.sealed_len();
        let actual = map.len() as u64;
        if actual < expected {
            return Err(SealError::Truncated {
                path: path.to_path_buf(),
                expected,
                actual,
            });
        }
        if actual > expected {
            return Err(SealError::Extended {
                path: path.to_path_buf(),
                extra: actual - expected,
            });
        }
        Ok(SealedModel {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header digest, which licenses bind (it authenticates every segment).
    pub fn digest(&self) -> [u8; 32] {
        self.header.digest()
    }

    /// Does `key` belong to this model?
    pub fn check_key(&self, key: &ContentKey) -> Result<(), SealError> {
        if key.key_id() != self.header.key_id {
            return Err(SealError::WrongKey {
                path: self.path.clone(),
                key_id: hex::encode(key.key_id()),
                sealed_id: hex::encode(self.header.key_id),
            });
        }
        Ok(())
    }

    /// Decrypt every segment into `out` (exactly `plaintext_len` bytes), in parallel.
    /// On failure `out` holds no unauthenticated plaintext from the failing segment.
    pub fn decrypt_into(
        &self,
        key: &ContentKey,
        out: &mut [u8],
        progress: Progress,
    ) -> Result<(), SealError> {
        self.check_key(key)?;
        let cipher = SegmentCipher::new(key, &self.header);
        let body = &self.map[self.header.encoded_len()..];
        decrypt_body(&cipher, &self.header, body, out, progress).map_err(|e| {
            SealError::SegmentTampered {
                path: self.path.clone(),
                index: e.index,
            }
        })
    }

    /// Check decrypted plaintext against the header's SHA-256.
    pub fn verify_plaintext(&self, plaintext: &[u8]) -> Result<(), SealError> {
        let digest: [u8; 32] = Sha256::digest(plaintext).into();
        if digest != self.header.plaintext_sha256 {
            return Err(SealError::PlaintextMismatch {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Decrypt the whole model into a heap buffer zeroized on drop, and check its digest.
    pub fn decrypt_to_memory(
        &self,
        key: &ContentKey,
        progress: Progress,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut out = Zeroizing::new(vec![0u8; self.header.plaintext_len as usize]);
        self.decrypt_into(key, &mut out, progress)?;
        self.verify_plaintext(&out)?;
        Ok(out)
    }
}
