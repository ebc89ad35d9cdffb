//! Regenerate the test vectors in docs/vectors (checked by tests/vectors.rs).
//!
//!     cargo run --example make_test_vectors
//!
//! The vector node's keys live in docs/vectors/node and are reused when present, so
//! regenerating changes only the randomized parts (license ids, salts, HPKE output).
//! Everything is signed by the demo root and dated in 2026-2036 so it stays valid.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{Duration, TimeZone, Utc};
use leasehold::crypto::keyfile;
use leasehold::crypto::signing::SecretKey;
use leasehold::crypto::ContentKey;
use leasehold::format::{Body, Envelope};
use leasehold::license::issue::{certify, issue, Terms};
use leasehold::license::{Caps, IssuerCertBody};
use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse};
use leasehold::node::trusted_time::NodeStateBody;
use leasehold::node::NodeIdentity;
use leasehold::seal::{self, Header};

// The vector node's hardware, shared with tests/vectors.rs.
#[path = "../tests/common/vectors.rs"]
mod vectors;

fn main() -> anyhow::Result<()> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/vectors");
    std::fs::create_dir_all(&out)?;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let root = keyfile::read_secret_key(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
    )?;

    // Sealed container: deterministic given key, nonce prefix and plaintext.
    let key = ContentKey::from_bytes([0x42; 32]);
    let mut plaintext = b"GGUF\x03\x00\x00\x00".to_vec();
    plaintext.extend((0..10_000u32).map(|i| (i * 31 % 251) as u8));
    let header = Header {
        segment_size: 4096,
        plaintext_len: plaintext.len() as u64,
        plaintext_sha256: leasehold::crypto::sha256(&[&plaintext]),
        key_id: key.key_id(),
        nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
        model_id: "vector-model".into(),
    };
    std::fs::write(out.join("sealed-v1.plain"), &plaintext)?;
    std::fs::write(
        out.join("sealed-v1.sealed"),
        seal::seal_to_vec(&header, &key, &plaintext),
    )?;
    std::fs::write(
        out.join("sealed-v1.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "content_key": B64.encode(key.as_bytes()),
            "key_id": hex::encode(header.key_id),
            "nonce_prefix": hex::encode(header.nonce_prefix),
            "segment_size": header.segment_size,
            "model_id": header.model_id,
            "plaintext_sha256": hex::encode(header.plaintext_sha256),
            "header_hex": hex::encode(header.encode()),
            "header_sha256": hex::encode(header.digest()),
        }))? + "\n",
    )?;

    // Node, enrollment, node state.
    let (identity, _) = NodeIdentity::load_or_create(&out.join("node"))?;
    let profile = vectors::vector_profile();
    let enrollment_envelope = enrollment::create(
        &identity,
        &profile,
        &BindingChoice::default(),
        DeclaredUse {
            use_case: "test vectors".into(),
            data_handling: "none".into(),
            ..Default::default()
        },
        None,
        t0,
    )?;
    std::fs::write(
        out.join("enrollment-v1.enroll"),
        enrollment_envelope.render(),
    )?;
    let enrollment = enrollment::verify(enrollment_envelope.render().as_bytes())?;
    let mut state = NodeStateBody::new(identity.public().node_id(), t0);
    std::fs::write(
        out.join("node-state-v1.json"),
        Envelope::sign(&state, identity.signing_key(), vec![]).render(),
    )?;
    let (first, second) = (format!("{:032x}", 1), format!("{:032x}", 2));
    state.note_spent(&first, 9);
    state.note_serial(&second, 3);
    state.note_revoked(&second);
    std::fs::write(
        out.join("node-state-v1-licenses.json"),
        Envelope::sign(&state, identity.signing_key(), vec![]).render(),
    )?;

    // Root-signed license, and an issuer-signed one with its certificate.
    let terms = Terms {
        licensee: "Vector Org".into(),
        not_before: t0,
        expires_at: t0 + Duration::days(3650),
        grace: Duration::hours(1),
        serial: 7,
        caps: Caps {
            requests_per_day: Some(1000),
            ..Caps::default()
        },
        features: vec![],
        renewal: vec!["https://licenses.example.com".into()],
        issued_at: t0,
        license_id: None,
        safeguards: Default::default(),
    };
    let license = issue(&root, None, &enrollment, &header, &key, &terms)?;
    std::fs::write(out.join("license-v1.license"), license.render())?;

    let issuer_secret_path = out.join("issuer.key");
    let issuer = if issuer_secret_path.exists() {
        keyfile::read_secret_key(&issuer_secret_path)?
    } else {
        let k = SecretKey::generate();
        keyfile::write(
            &issuer_secret_path,
            keyfile::KeyKind::Ed25519Secret,
            &k.to_bytes(),
            "test-vector issuer key (public test data)",
        )?;
        k
    };
    let cert = certify(
        &root,
        &IssuerCertBody {
            version: IssuerCertBody::VERSION,
            issuer_key: issuer.public_key().to_bytes(),
            orgs: vec!["Vector Org".into()],
            models: vec!["vector-model".into()],
            not_before: t0,
            not_after: t0 + Duration::days(3700),
            // Bounds lease + grace together: the licenses last 3650 days plus 1 hour.
            max_lease_seconds: 86_400 * 3651,
        },
    )?;
    std::fs::write(out.join("issuer-v1.cert"), cert.render())?;
    let issued = issue(
        &issuer,
        Some(cert),
        &enrollment,
        &header,
        &key,
        &Terms { serial: 8, ..terms },
    )?;
    std::fs::write(out.join("license-issuer-v1.license"), issued.render())?;
    println!("wrote test vectors to {}", out.display());
    Ok(())
}
