//! The P-256 HPKE suite's software half (everything after the DH) against RFC 9180's
//! published vectors and against the `hpke` crate's own receiver.

use hpke::{aead::AesGcm256, kdf::HkdfSha256, kem::DhP256HkdfSha256, Deserializable, Kem, OpModeR};
use leasehold::crypto::hpke_p256::{self, Aead, OpenError, POINT_LEN};
use serde_json::Value;

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn array<const N: usize>(v: &Value) -> [u8; N] {
    hex_of(v).try_into().unwrap()
}

#[test]
fn rfc_9180_p256_vectors_pass_through_the_software_half() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc9180-p256.json");
    let data: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vectors = data["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let aead = match v["aead_id"].as_u64().unwrap() {
            1 => Aead::Aes128Gcm,
            2 => Aead::Aes256Gcm,
            other => panic!("aead {other}"),
        };
        let sk_r: [u8; 32] = array(&v["skRm"]);
        let pk_r: [u8; POINT_LEN] = array(&v["pkRm"]);
        let enc: [u8; POINT_LEN] = array(&v["enc"]);
        assert_eq!(hpke_p256::public_point(&sk_r).unwrap(), pk_r);
        // The recipient's DH (a TPM's ZGen for a TPM key), then the rest in software.
        let dh = hpke_p256::software_dh(&sk_r, &enc).unwrap();
        let shared = hpke_p256::kem_shared_secret(&dh, &enc, &pk_r);
        assert_eq!(hex::encode(*shared), v["shared_secret"].as_str().unwrap());
        let info = hex_of(&v["info"]);
        let (key, nonce) = hpke_p256::key_schedule(&shared, &info, aead);
        assert_eq!(hex::encode(&key[..]), v["key"].as_str().unwrap());
        assert_eq!(hex::encode(nonce), v["base_nonce"].as_str().unwrap());
        let first = &v["encryption_0"];
        assert_eq!(first["nonce"], v["base_nonce"]);
        let plaintext = hpke_p256::open(
            &dh,
            &enc,
            &pk_r,
            &info,
            &hex_of(&first["aad"]),
            &hex_of(&first["ct"]),
            aead,
        )
        .unwrap();
        assert_eq!(hex::encode(&plaintext[..]), first["pt"].as_str().unwrap());
    }
}

#[test]
fn a_wrapped_key_opens_the_same_in_the_split_half_and_in_the_hpke_crate() {
    let secret: [u8; 32] = rand::random();
    let sk_r = {
        // Any 32 bytes below the group order are a key; retry the rare ones that are not.
        let mut sk = rand::random::<[u8; 32]>();
        while hpke_p256::public_point(&sk).is_err() {
            sk = rand::random();
        }
        sk
    };
    let pk_r = hpke_p256::public_point(&sk_r).unwrap();
    let info = b"leasehold content key v1\x000123456789abcdef0123456789abcdef\x00vector-model";
    let (enc, ciphertext) = hpke_p256::seal(&pk_r, info, &secret).unwrap();
    assert_eq!(ciphertext.len(), 48);

    let dh = hpke_p256::software_dh(&sk_r, &enc).unwrap();
    let split = hpke_p256::open(&dh, &enc, &pk_r, info, b"", &ciphertext, Aead::Aes256Gcm).unwrap();
    assert_eq!(&split[..], &secret);

    let private = <DhP256HkdfSha256 as Kem>::PrivateKey::from_bytes(&sk_r).unwrap();
    let encapped = <DhP256HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc).unwrap();
    let whole = hpke::single_shot_open::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(
        &OpModeR::Base,
        &private,
        &encapped,
        info,
        &ciphertext,
        b"",
    )
    .unwrap();
    assert_eq!(whole, secret);

    // Another info (another license or model), or another key's DH: refused.
    let other_info =
        b"leasehold content key v1\x00ffffffffffffffffffffffffffffffff\x00vector-model";
    assert_eq!(
        hpke_p256::open(
            &dh,
            &enc,
            &pk_r,
            other_info,
            b"",
            &ciphertext,
            Aead::Aes256Gcm
        )
        .err(),
        Some(OpenError::NotForThisKey)
    );
    let mut wrong_dh = *dh;
    wrong_dh[0] ^= 1;
    assert_eq!(
        hpke_p256::open(
            &wrong_dh,
            &enc,
            &pk_r,
            info,
            b"",
            &ciphertext,
            Aead::Aes256Gcm
        )
        .err(),
        Some(OpenError::NotForThisKey)
    );
    // Not a point.
    assert!(hpke_p256::software_dh(&sk_r, &[0u8; POINT_LEN]).is_err());
}
