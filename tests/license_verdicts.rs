//! Every verdict a license can get, each asserted exactly.

mod common;

use chrono::Duration;
use common::*;
use leasehold::crypto::key_wrap::{self, UnwrapError};
use leasehold::crypto::signing::SecretKey;
use leasehold::format::{Body, DocumentKind, Envelope};
use leasehold::license::issue::certify;
use leasehold::license::{assess, Authority, IssuerCertBody, LicenseBody, Verdict};
use leasehold::node::hardware::ComponentKind;
use leasehold::node::trusted_time::TimeContext;
use leasehold::node::NodeIdentity;

fn verdict_at(fx: &Fixture, license: &[u8], now: chrono::DateTime<chrono::Utc>) -> Verdict {
    let node = fx.public();
    assess(license, &fx.roots, &checks(&node, &fx.profile, now)).verdict
}

#[test]
fn license_for_this_node_is_valid_and_names_its_demo_root() {
    let fx = Fixture::new();
    let node = fx.public();
    let assessment = assess(&fx.license(), &fx.roots, &checks(&node, &fx.profile, now()));
    assert_eq!(
        assessment.verdict,
        Verdict::Valid {
            expires_at: now() + Duration::days(1)
        }
    );
    let license = assessment.license.unwrap();
    assert!(matches!(
        license.authority,
        Authority::Root { demo: true, .. }
    ));
    assert_eq!(license.body.model.model_id, "test-model");
    assert_eq!(license.body.licensee, "Example Org");
}

#[test]
fn flipped_byte_anywhere_is_tampered_or_names_another_signer() {
    let fx = Fixture::new();
    let license = fx.license();
    let text = String::from_utf8(license.clone()).unwrap();
    let signer_start = text.find("\"signer\": \"").unwrap() + "\"signer\": \"".len();
    let signer_end = signer_start + text[signer_start..].find('"').unwrap();
    for i in 0..license.len() {
        let mut copy = license.clone();
        copy[i] ^= 0x01;
        let verdict = verdict_at(&fx, &copy, now());
        let in_signer = (signer_start..signer_end).contains(&i);
        match verdict {
            Verdict::Tampered { .. } => {}
            // Editing the signer field names a key that is not a trusted root.
            Verdict::UnknownIssuer { .. } if in_signer => {}
            other => panic!("flipping byte {i} gave {other:?}"),
        }
    }
}

#[test]
fn license_signed_by_an_unknown_key_is_unknown_issuer() {
    let fx = Fixture::new();
    let stranger = SecretKey::generate();
    let license = fx.issue_with(&stranger, None, &fx.terms());
    assert_eq!(
        verdict_at(&fx, &license, now()),
        Verdict::UnknownIssuer {
            key_id: stranger.public_key().key_id()
        }
    );
}

fn certificate(
    issuer: &SecretKey,
    orgs: &[&str],
    models: &[&str],
    days: i64,
    max_lease_days: i64,
) -> IssuerCertBody {
    IssuerCertBody {
        version: IssuerCertBody::VERSION,
        issuer_key: issuer.public_key().to_bytes(),
        orgs: orgs.iter().map(|s| s.to_string()).collect(),
        models: models.iter().map(|s| s.to_string()).collect(),
        not_before: now() - Duration::days(10),
        not_after: now() + Duration::days(days),
        max_lease_seconds: (max_lease_days * 86_400) as u64,
    }
}

#[test]
fn license_from_a_certified_issuer_is_valid() {
    let fx = Fixture::new();
    let issuer = SecretKey::generate();
    let cert = certify(
        &fx.root,
        &certificate(&issuer, &["Example Org"], &["test-model"], 30, 7),
    )
    .unwrap();
    let license = fx.issue_with(&issuer, Some(cert), &fx.terms());
    let node = fx.public();
    let assessment = assess(&license, &fx.roots, &checks(&node, &fx.profile, now()));
    assert!(
        matches!(assessment.verdict, Verdict::Valid { .. }),
        "{:?}",
        assessment.verdict
    );
    assert!(matches!(
        assessment.license.unwrap().authority,
        Authority::Issuer { .. }
    ));
}

#[test]
fn issuer_out_of_scope_or_expired_is_not_authorized() {
    let fx = Fixture::new();
    let issuer = SecretKey::generate();
    let cases = [
        (
            "other org",
            certificate(&issuer, &["Other Org"], &["*"], 30, 7),
        ),
        (
            "other model",
            certificate(&issuer, &["*"], &["other-model"], 30, 7),
        ),
        (
            "lease too long",
            certificate(&issuer, &["*"], &["*"], 30, 0),
        ),
        ("certificate expired", {
            let mut c = certificate(&issuer, &["*"], &["*"], 30, 7);
            c.not_after = now() - Duration::days(2);
            c.not_before = now() - Duration::days(20);
            c
        }),
    ];
    for (name, cert_body) in cases {
        let cert = certify(&fx.root, &cert_body).unwrap();
        let license = fx.issue_with(&issuer, Some(cert), &fx.terms());
        let verdict = verdict_at(&fx, &license, now());
        assert!(
            matches!(verdict, Verdict::IssuerNotAuthorized { .. }),
            "{name}: {verdict:?}"
        );
    }
}

#[test]
fn certificate_from_an_unknown_root_or_for_another_key_is_unknown_issuer() {
    let fx = Fixture::new();
    let issuer = SecretKey::generate();
    let fake_root = SecretKey::generate();
    let cert = certify(&fake_root, &certificate(&issuer, &["*"], &["*"], 30, 7)).unwrap();
    let license = fx.issue_with(&issuer, Some(cert), &fx.terms());
    assert_eq!(
        verdict_at(&fx, &license, now()),
        Verdict::UnknownIssuer {
            key_id: fake_root.public_key().key_id()
        }
    );

    let other = SecretKey::generate();
    let cert = certify(&fx.root, &certificate(&issuer, &["*"], &["*"], 30, 7)).unwrap();
    let license = fx.issue_with(&other, Some(cert), &fx.terms());
    assert_eq!(
        verdict_at(&fx, &license, now()),
        Verdict::UnknownIssuer {
            key_id: other.public_key().key_id()
        }
    );
}

#[test]
fn license_for_another_node_is_wrong_machine_and_its_key_cannot_unwrap() {
    let fx = Fixture::new();
    let license_bytes = fx.license();
    let (other, _) = NodeIdentity::load_or_create(&fx.dir.path().join("other-node")).unwrap();
    let other_public = other.public();
    let verdict = assess(
        &license_bytes,
        &fx.roots,
        &checks(&other_public, &fx.profile, now()),
    )
    .verdict;
    assert!(
        matches!(verdict, Verdict::WrongMachine { .. }),
        "{verdict:?}"
    );

    let license: LicenseBody = Envelope::parse(&license_bytes, DocumentKind::License)
        .unwrap()
        .decode_body()
        .unwrap();
    let wrapped = license.content_key.to_wrapped();
    assert_eq!(
        key_wrap::unwrap(other.unwrapper(), &license.key_binding_info(), &wrapped).unwrap_err(),
        UnwrapError::NotForThisKey
    );
    let key = key_wrap::unwrap(
        fx.identity.unwrapper(),
        &license.key_binding_info(),
        &wrapped,
    )
    .unwrap();
    assert_eq!(key.as_bytes(), fx.key.as_bytes());
}

#[test]
fn hardware_beyond_policy_is_wrong_machine_but_a_new_nic_is_tolerated() {
    use ComponentKind::*;
    let fx = Fixture::new();
    let license = fx.license();
    let node = fx.public();

    let new_nic_and_name = profile(&[
        (MachineId, "0123456789abcdef0123456789abcdef"),
        (CpuModel, "Test CPU 9000"),
        (MemoryClass, "32GiB"),
        (MacAddress, "02:00:00:00:00:99"),
        (Hostname, "renamed"),
    ]);
    let v = assess(
        &license,
        &fx.roots,
        &checks(&node, &new_nic_and_name, now()),
    )
    .verdict;
    assert!(matches!(v, Verdict::Valid { .. }), "{v:?}");

    let cloned_disk_other_box = profile(&[
        (MachineId, "0123456789abcdef0123456789abcdef"),
        (CpuModel, "Other CPU"),
        (MemoryClass, "64GiB"),
        (MacAddress, "02:00:00:00:00:99"),
        (Hostname, "node-a"),
    ]);
    let v = assess(
        &license,
        &fx.roots,
        &checks(&node, &cloned_disk_other_box, now()),
    )
    .verdict;
    assert!(
        matches!(v, Verdict::WrongMachine { ref reason } if reason.contains("1 of the other components match, 2 needed")),
        "{v:?}"
    );

    let other_machine_id = profile(&[
        (MachineId, "ffffffffffffffffffffffffffffffff"),
        (CpuModel, "Test CPU 9000"),
        (MemoryClass, "32GiB"),
        (MacAddress, "02:00:00:00:00:01"),
        (Hostname, "node-a"),
    ]);
    let v = assess(
        &license,
        &fx.roots,
        &checks(&node, &other_machine_id, now()),
    )
    .verdict;
    assert!(
        matches!(v, Verdict::WrongMachine { ref reason } if reason.contains("machine-id")),
        "{v:?}"
    );
}

#[test]
fn validity_window_and_grace() {
    let fx = Fixture::new();
    // Valid from an hour after it was issued.
    let mut terms = fx.terms();
    terms.not_before = terms.issued_at + Duration::hours(1);
    let later = fx.issue_with(&fx.root, None, &terms);
    assert_eq!(
        verdict_at(&fx, &later, terms.not_before - Duration::seconds(1)),
        Verdict::NotYetValid {
            not_before: terms.not_before
        }
    );
    let license = fx.license();
    let terms = fx.terms();
    assert_eq!(
        verdict_at(&fx, &license, terms.expires_at + Duration::minutes(30)),
        Verdict::InGrace {
            expired_at: terms.expires_at,
            grace_ends: terms.expires_at + Duration::hours(1)
        }
    );
    assert_eq!(
        verdict_at(&fx, &license, terms.expires_at + Duration::hours(1)),
        Verdict::Expired {
            grace_ended: terms.expires_at + Duration::hours(1)
        }
    );
}

#[test]
fn expired_license_is_refused_even_after_clock_rollback() {
    let fx = Fixture::new();
    let license = fx.license();
    let node = fx.public();
    let expired_at = fx.terms().expires_at + Duration::hours(2);
    // The node saw a time past expiry; the clock is then wound back into the window.
    let checks = leasehold::license::Checks {
        node: Some(&node),
        hardware: Some(&fx.profile),
        time: TimeContext::new(now(), Some(expired_at)),
        memory: None,
    };
    assert_eq!(
        assess(&license, &fx.roots, &checks).verdict,
        Verdict::ClockRolledBack {
            now: now(),
            trusted: expired_at
        }
    );
}

#[test]
fn clock_behind_the_license_issue_time_is_rolled_back() {
    let fx = Fixture::new();
    let license = fx.license();
    let issued = fx.terms().issued_at;
    let v = verdict_at(&fx, &license, issued - Duration::hours(1));
    assert_eq!(
        v,
        Verdict::ClockRolledBack {
            now: issued - Duration::hours(1),
            trusted: issued
        }
    );
    // Small skew (NTP step, VM migration) is tolerated, and the license is judged at
    // its issue time, not at the clock behind it.
    assert!(matches!(
        verdict_at(&fx, &license, issued - Duration::minutes(2)),
        Verdict::Valid { .. }
    ));
}

/// A license body with arbitrary JSON, for formats this build does not write.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct RawLicense(serde_json::Value);

impl Body for RawLicense {
    const KIND: DocumentKind = DocumentKind::License;
    const VERSION: u32 = 2;
}

fn resign(fx: &Fixture, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let envelope = Envelope::parse(&fx.license(), DocumentKind::License).unwrap();
    let mut body: serde_json::Value = serde_json::from_str(envelope.body.get()).unwrap();
    edit(&mut body);
    Envelope::sign(&RawLicense(body), &fx.root, vec![])
        .render()
        .into_bytes()
}

#[test]
fn unknown_version_critical_extension_and_mandated_feature_are_unsupported() {
    let fx = Fixture::new();
    let v2 = resign(&fx, |b| b["version"] = 2.into());
    assert!(
        matches!(verdict_at(&fx, &v2, now()), Verdict::Unsupported { ref reason } if reason.contains("version 2"))
    );

    let critical =
        resign(
            &fx,
            |b| {
                b["extensions"] =
                    serde_json::json!([{"name": "quantum-lock", "critical": true, "value": 1}])
            },
        );
    assert!(
        matches!(verdict_at(&fx, &critical, now()), Verdict::Unsupported { ref reason } if reason.contains("quantum-lock"))
    );

    let optional =
        resign(
            &fx,
            |b| {
                b["extensions"] =
                    serde_json::json!([{"name": "note", "critical": false, "value": "hello"}])
            },
        );
    assert!(matches!(
        verdict_at(&fx, &optional, now()),
        Verdict::Valid { .. }
    ));

    let feature = resign(&fx, |b| b["features"] = serde_json::json!(["telepathy"]));
    assert!(
        matches!(verdict_at(&fx, &feature, now()), Verdict::Unsupported { ref reason } if reason.contains("telepathy"))
    );
}

#[test]
fn unknown_or_duplicate_body_fields_are_tampered_even_when_signed() {
    let fx = Fixture::new();
    let unknown = resign(&fx, |b| {
        b["version"] = 1.into();
        b["unlimited"] = true.into();
    });
    let v = verdict_at(&fx, &unknown, now());
    assert!(
        matches!(v, Verdict::Tampered { ref reason } if reason.contains("unknown field `unlimited`")),
        "{v:?}"
    );
    // Same fields, other order: signed, but not the canonical form.
    let reordered = resign(&fx, |b| {
        b["version"] = 1.into();
        let serial = b.as_object_mut().unwrap().shift_remove("serial").unwrap();
        b["serial"] = serial;
    });
    let v = verdict_at(&fx, &reordered, now());
    assert!(
        matches!(v, Verdict::Tampered { ref reason } if reason.contains("canonical")),
        "{v:?}"
    );
}

#[test]
fn garbage_empty_and_oversize_inputs_are_tampered() {
    let fx = Fixture::new();
    for input in [
        b"".to_vec(),
        b"hello".to_vec(),
        vec![0xff; 1000],
        b"{\"leasehold\": \"license\"}".to_vec(),
        vec![b'['; 100_000],
        vec![b' '; 300_000],
    ] {
        let v = verdict_at(&fx, &input, now());
        assert!(matches!(v, Verdict::Tampered { .. }), "{v:?}");
    }
    // An enrollment is not a license.
    let enrollment = std::fs::read(fx.dir.path().join("node/node.pub")).unwrap();
    assert!(matches!(
        verdict_at(&fx, &enrollment, now()),
        Verdict::Tampered { .. }
    ));
}
