//! The test vectors in docs/vectors (described in docs/FORMATS.md) are what this build
//! reads and writes. Regenerate with `cargo run --example make_test_vectors`.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{TimeZone, Utc};
use common::repo_path;
use common::vectors::vector_profile;
use leasehold::crypto::key_wrap;
use leasehold::crypto::ContentKey;
use leasehold::format::{DocumentKind, Envelope};
use leasehold::license::verify::{authenticate, evaluate};
use leasehold::license::{Authority, Checks, TrustRoots, Verdict};
use leasehold::node::trusted_time::{self, TimeContext};
use leasehold::node::{enrollment, NodeIdentity};
use leasehold::seal::{self, Header, SealedModel};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(repo_path("docs/vectors").join(name)).unwrap()
}

fn sealed_params() -> serde_json::Value {
    serde_json::from_slice(&vector("sealed-v1.json")).unwrap()
}

fn content_key() -> ContentKey {
    let bytes: [u8; 32] = B64
        .decode(sealed_params()["content_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    ContentKey::from_bytes(bytes)
}

#[test]
fn sealed_vector_reseals_byte_for_byte_and_opens() {
    let params = sealed_params();
    let plaintext = vector("sealed-v1.plain");
    let sealed = vector("sealed-v1.sealed");
    let header = Header::parse(&sealed).unwrap();
    assert_eq!(
        hex::encode(header.encode()),
        params["header_hex"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(header.digest()),
        params["header_sha256"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(header.nonce_prefix),
        params["nonce_prefix"].as_str().unwrap()
    );
    assert_eq!(header.model_id, params["model_id"].as_str().unwrap());
    assert_eq!(
        seal::seal_to_vec(&header, &content_key(), &plaintext),
        sealed
    );

    let opened = SealedModel::open(&repo_path("docs/vectors/sealed-v1.sealed")).unwrap();
    let out = opened
        .decrypt_to_memory(&content_key(), &seal::no_progress)
        .unwrap();
    assert_eq!(&out[..], &plaintext[..]);
}

#[test]
fn license_vectors_verify_and_unwrap_the_vector_key() {
    let node = NodeIdentity::load(&repo_path("docs/vectors/node")).unwrap();
    let public = node.public();
    let profile = vector_profile();
    let now = Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap();
    let roots = TrustRoots::compiled_in();
    for (file, serial, by_issuer) in [
        ("license-v1.license", 7, false),
        ("license-issuer-v1.license", 8, true),
    ] {
        let license = authenticate(&vector(file), &roots).unwrap();
        assert_eq!(license.body.serial, serial);
        assert_eq!(license.body.licensee, "Vector Org");
        assert_eq!(license.body.model.model_id, "vector-model");
        assert_eq!(license.body.caps.requests_per_day, Some(1000));
        assert_eq!(
            matches!(license.authority, Authority::Issuer { .. }),
            by_issuer
        );
        let checks = Checks {
            node: Some(&public),
            hardware: Some(&profile),
            time: TimeContext::new(now, None),
            memory: None,
        };
        assert!(matches!(
            evaluate(&license.body, &checks),
            Verdict::Valid { .. }
        ));
        let key = key_wrap::unwrap(
            node.unwrap_secret(),
            &license.body.key_binding_info(),
            &license.body.content_key.to_wrapped(),
        )
        .unwrap();
        assert_eq!(key.as_bytes(), content_key().as_bytes());
    }
}

#[test]
fn enrollment_certificate_and_state_vectors_parse() {
    let enrollment = enrollment::verify(&vector("enrollment-v1.enroll")).unwrap();
    let node = NodeIdentity::load(&repo_path("docs/vectors/node")).unwrap();
    assert_eq!(enrollment.node_id, node.public().node_id());
    assert_eq!(enrollment.declared_use.use_case, "test vectors");

    let cert = Envelope::parse(&vector("issuer-v1.cert"), DocumentKind::IssuerCertificate).unwrap();
    cert.verify_signature().unwrap();

    let state_dir = tempfile::TempDir::new().unwrap();
    std::fs::write(
        state_dir.path().join(trusted_time::STATE_FILE),
        vector("node-state-v1.json"),
    )
    .unwrap();
    let high_water = trusted_time::load_high_water(state_dir.path(), &node.public()).unwrap();
    assert_eq!(
        high_water,
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
    );

    // A state remembering licenses: spent, superseded and revoked as FORMATS.md says.
    std::fs::write(
        state_dir.path().join(trusted_time::STATE_FILE),
        vector("node-state-v1-licenses.json"),
    )
    .unwrap();
    let state = trusted_time::load(state_dir.path(), &node.public())
        .unwrap()
        .unwrap();
    let (first, second) = (format!("{:032x}", 1), format!("{:032x}", 2));
    use trusted_time::Remembered;
    assert_eq!(
        state.refuses(&first, 9),
        Some(Remembered::Spent { serial: 9 })
    );
    assert_eq!(
        state.refuses(&first, 8),
        Some(Remembered::Superseded { newest: 9 })
    );
    assert_eq!(state.refuses(&first, 10), None);
    assert_eq!(state.refuses(&second, 4), Some(Remembered::Revoked));
}
