//! The sealed container: round trips, and every kind of damage named.

mod common;

use common::*;
use leasehold::crypto::ContentKey;
use leasehold::seal::header::{FIXED_LEN, VERSION};
use leasehold::seal::stream::TAG_LEN;
use leasehold::seal::{self, HeaderError, SealError, SealedModel};

fn reopen(fx: &Fixture, bytes: &[u8]) -> Result<Vec<u8>, SealError> {
    let path = fx.dir.path().join("edited.sealed");
    std::fs::write(&path, bytes).unwrap();
    let sealed = SealedModel::open(&path)?;
    Ok(sealed
        .decrypt_to_memory(&fx.key, &seal::no_progress)?
        .to_vec())
}

#[test]
fn round_trip_for_many_sizes() {
    for (len, segment) in [
        (8, 4096),
        (4096, 4096),
        (4097, 4096),
        (3 * 4096, 4096),
        (1 << 20, 1 << 16),
        (123_457, 8192),
    ] {
        let fx = Fixture::with_model(len, segment);
        let sealed = fx.sealed();
        assert_eq!(sealed.header().plaintext_len, len as u64);
        let out = sealed
            .decrypt_to_memory(&fx.key, &seal::no_progress)
            .unwrap();
        assert_eq!(&out[..], &fx.plaintext[..], "len {len} segment {segment}");
    }
}

#[test]
fn sealed_file_holds_no_plaintext_block() {
    let fx = Fixture::new();
    let sealed = std::fs::read(&fx.sealed_path).unwrap();
    for block in fx.plaintext.chunks(64).skip(1).step_by(7) {
        if block.len() == 64 {
            assert!(!sealed.windows(64).any(|w| w == block));
        }
    }
}

#[test]
fn truncated_file_is_named_truncated() {
    let fx = Fixture::new();
    let bytes = std::fs::read(&fx.sealed_path).unwrap();
    for cut in [1, TAG_LEN, 4096 + TAG_LEN, bytes.len() - FIXED_LEN] {
        let err = reopen(&fx, &bytes[..bytes.len() - cut]).unwrap_err();
        assert!(
            matches!(err, SealError::Truncated { .. } | SealError::Header { .. }),
            "cut {cut}: {err:?}"
        );
    }
}

#[test]
fn extended_file_is_named_extended() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    bytes.extend_from_slice(&[0u8; 4112]);
    assert!(matches!(
        reopen(&fx, &bytes).unwrap_err(),
        SealError::Extended { extra: 4112, .. }
    ));
}

#[test]
fn swapped_segments_fail_authentication_at_the_first_moved_segment() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    let start = fx.header.encoded_len();
    let seg = 4096 + TAG_LEN;
    let (a, b) = (start + seg, start + 2 * seg);
    let first: Vec<u8> = bytes[a..a + seg].to_vec();
    bytes.copy_within(b..b + seg, a);
    bytes[b..b + seg].copy_from_slice(&first);
    let err = reopen(&fx, &bytes).unwrap_err();
    assert!(
        matches!(err, SealError::SegmentTampered { index: 1 | 2, .. }),
        "{err:?}"
    );
}

#[test]
fn flipped_body_byte_names_its_segment() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    let start = fx.header.encoded_len();
    bytes[start + 5 * (4096 + TAG_LEN) + 100] ^= 0x80;
    assert!(matches!(
        reopen(&fx, &bytes).unwrap_err(),
        SealError::SegmentTampered { index: 5, .. }
    ));
}

#[test]
fn edited_header_fails_authentication() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    // Rename the model: still a well-formed header, but the digest every segment binds changed.
    bytes[FIXED_LEN] = b'b';
    assert!(matches!(
        reopen(&fx, &bytes).unwrap_err(),
        SealError::SegmentTampered { index: 0, .. }
    ));
    // Claim another plaintext digest.
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    bytes[30] ^= 1;
    assert!(matches!(
        reopen(&fx, &bytes).unwrap_err(),
        SealError::SegmentTampered { .. }
    ));
}

#[test]
fn wrong_content_key_is_named_wrong_key() {
    let fx = Fixture::new();
    let sealed = fx.sealed();
    let err = sealed
        .decrypt_to_memory(&ContentKey::generate(), &seal::no_progress)
        .unwrap_err();
    assert!(matches!(err, SealError::WrongKey { .. }), "{err:?}");
}

#[test]
fn header_key_id_forged_for_another_key_still_fails() {
    let fx = Fixture::new();
    let other = ContentKey::generate();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    bytes[58..74].copy_from_slice(&other.key_id());
    let path = fx.dir.path().join("forged.sealed");
    std::fs::write(&path, &bytes).unwrap();
    let err = SealedModel::open(&path)
        .unwrap()
        .decrypt_to_memory(&other, &seal::no_progress)
        .unwrap_err();
    assert!(
        matches!(err, SealError::SegmentTampered { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_version_garbage_and_plain_gguf_are_refused() {
    let fx = Fixture::new();
    let mut bytes = std::fs::read(&fx.sealed_path).unwrap();
    bytes[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert!(matches!(
        reopen(&fx, &bytes).unwrap_err(),
        SealError::Header {
            source: HeaderError::UnsupportedVersion(2),
            ..
        }
    ));
    for garbage in [
        vec![],
        b"LHSEALED".to_vec(),
        vec![0u8; 10_000],
        fx.plaintext.clone(),
    ] {
        let err = reopen(&fx, &garbage).unwrap_err();
        assert!(matches!(err, SealError::Header { .. }), "{err:?}");
    }
}

#[test]
fn sealing_a_file_that_is_not_gguf_is_refused_and_writes_nothing() {
    let fx = Fixture::new();
    let input = fx.dir.path().join("notes.txt");
    std::fs::write(&input, b"these are not model weights").unwrap();
    let out = fx.dir.path().join("notes.sealed");
    let err = seal::seal_file(
        &input,
        "x",
        &out,
        &ContentKey::generate(),
        4096,
        &seal::no_progress,
        || Ok(()),
    )
    .unwrap_err();
    assert!(matches!(err, SealError::NotGguf { .. }));
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_failed_commit_hook_leaves_no_sealed_file() {
    let fx = Fixture::new();
    let input = fx.dir.path().join("model.gguf");
    let out = fx.dir.path().join("again.sealed");
    let err = seal::seal_file(
        &input,
        "x",
        &out,
        &ContentKey::generate(),
        4096,
        &seal::no_progress,
        || Err(leasehold::fsutil::FsError::AlreadyExists { path: "k".into() }),
    )
    .unwrap_err();
    assert!(matches!(err, SealError::Fs(_)));
    assert!(!out.exists());
}
