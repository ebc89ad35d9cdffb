//! The test vectors in docs/vectors (described in docs/FORMATS.md) are what this build
//! reads and writes. Regenerate with `cargo run --example make_test_vectors`.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{TimeZone, Utc};
use common::repo_path;
use common::vectors::vector_profile;
use leasehold::crypto::key_wrap;
use leasehold::crypto::signing::SecretKey;
use leasehold::crypto::ContentKey;
use leasehold::format::{DocumentKind, Envelope};
use leasehold::ledger;
use leasehold::ledger::prompt_hash::{PromptParts, PromptSalt};
use leasehold::license::assess;
use leasehold::license::verify::{authenticate, evaluate};
use leasehold::license::{Authority, Checks, TrustRoots, Verdict};
use leasehold::node::trusted_time::{self, TimeContext};
use leasehold::node::{enrollment, NodeIdentity};
use leasehold::protocol;
use leasehold::seal::{self, Header, SealedModel};
use leasehold::watermark::{self, WatermarkKey};

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
            node.unwrapper(),
            &license.body.key_binding_info(),
            &license.body.content_key.to_wrapped(),
        )
        .unwrap();
        assert_eq!(key.as_bytes(), content_key().as_bytes());
    }
}

#[test]
fn p256_license_vector_verifies_and_unwraps_with_its_scalar() {
    let params: serde_json::Value =
        serde_json::from_slice(&vector("license-p256-v1.json")).unwrap();
    let scalar: [u8; 32] = hex::decode(params["unwrap_secret_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let secret = key_wrap::P256UnwrapSecret::from_bytes(scalar).unwrap();
    let public = key_wrap::KeyUnwrapper::public_key(&secret);
    assert_eq!(
        hex::encode(public.as_bytes()),
        params["unwrap_point_hex"].as_str().unwrap()
    );
    assert_eq!(public.suite(), params["suite"].as_str().unwrap());

    let license = authenticate(
        &vector("license-p256-v1.license"),
        &TrustRoots::compiled_in(),
    )
    .unwrap();
    assert_eq!(license.body.serial, 11);
    assert_eq!(license.body.node.unwrap_public().unwrap(), public);
    assert_eq!(license.body.content_key.suite, key_wrap::P256_SUITE);
    assert_eq!(license.body.content_key.encapsulated.len(), 65);
    let key = license.body.unwrap_content_key(&secret).unwrap();
    assert_eq!(key.as_bytes(), content_key().as_bytes());

    // The X25519 vector node is another machine for it.
    let node = NodeIdentity::load(&repo_path("docs/vectors/node")).unwrap();
    let checks = Checks {
        node: Some(&node.public()),
        hardware: Some(&vector_profile()),
        time: TimeContext::new(Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap(), None),
        memory: None,
    };
    assert_eq!(evaluate(&license.body, &checks).name(), "wrong-machine");
    assert!(license.body.unwrap_content_key(node.unwrapper()).is_err());
}

#[test]
fn enrollment_certificate_and_state_vectors_parse() {
    let enrollment = enrollment::verify(&vector("enrollment-v1.enroll")).unwrap();
    let node = NodeIdentity::load(&repo_path("docs/vectors/node")).unwrap();
    assert_eq!(enrollment.node_id, node.public().node_id());
    assert_eq!(enrollment.tpm_rollbacks, None);
    let tpm_enrollment = enrollment::verify(&vector("enrollment-tpm-v1.enroll")).unwrap();
    assert_eq!(tpm_enrollment.tpm_rollbacks, Some(7));
    assert_eq!(
        tpm_enrollment.unwrap_public().unwrap().suite(),
        "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
    );
    assert_eq!(enrollment.declared_use.use_case, "test vectors");

    let cert = Envelope::parse(&vector("issuer-v1.cert"), DocumentKind::IssuerCertificate).unwrap();
    cert.verify_signature().unwrap();

    let state_dir = tempfile::TempDir::new().unwrap();
    std::fs::write(
        state_dir.path().join(trusted_time::STATE_FILE),
        vector("node-state-v1.json"),
    )
    .unwrap();
    let high_water = trusted_time::read_signed(state_dir.path(), &node.public())
        .unwrap()
        .map(|s| s.high_water);
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
    let state = trusted_time::read_signed(state_dir.path(), &node.public())
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

    // The same state as a TPM node writes it, and the mark its TPM Clock implies an
    // hour later (FORMATS.md's worked example).
    std::fs::write(
        state_dir.path().join(trusted_time::STATE_FILE),
        vector("node-state-v1-tpm.json"),
    )
    .unwrap();
    let tpm_state = trusted_time::read_signed(state_dir.path(), &node.public())
        .unwrap()
        .unwrap();
    let mark = tpm_state.tpm.unwrap();
    assert_eq!(
        (mark.nv_index, mark.counter, mark.clock_ms),
        (0x0138_1234, 42, 86_400_000)
    );
    assert_eq!(tpm_state.licenses, state.licenses);
    assert_eq!(
        trusted_time::anchored_high_water(tpm_state.high_water, &mark, 86_400_000 + 3_600_000),
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 51, 0).unwrap()
    );
}

fn vector_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&vector(name)).unwrap()
}

fn vector_node() -> NodeIdentity {
    NodeIdentity::load(&repo_path("docs/vectors/node")).unwrap()
}

/// The checks a node makes, on the vector node at 2027-06-01.
fn on_vector_node<T>(f: impl FnOnce(&Checks) -> T) -> T {
    let node = vector_node();
    let public = node.public();
    let profile = vector_profile();
    let checks = Checks {
        node: Some(&public),
        hardware: Some(&profile),
        time: TimeContext::new(Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap(), None),
        memory: None,
    };
    f(&checks)
}

#[test]
fn full_license_vector_carries_every_option_and_its_watermark_key_unwraps() {
    let license = authenticate(
        &vector("license-full-v1.license"),
        &TrustRoots::compiled_in(),
    )
    .unwrap();
    let body = &license.body;
    assert!(on_vector_node(|checks| matches!(
        evaluate(body, checks),
        Verdict::Valid { .. }
    )));
    let caps = &body.caps;
    assert_eq!(
        (
            caps.requests_per_day,
            caps.requests_per_month,
            caps.tokens_per_day
        ),
        (Some(1000), Some(20_000), Some(2_000_000))
    );
    assert_eq!(
        (caps.tokens_per_month, caps.concurrent, caps.context),
        (Some(40_000_000), Some(4), Some(2048))
    );
    assert_eq!(body.features, ["output-filter", "watermark"]);
    assert_eq!(body.renewal.len(), 2);
    let filter = body.output_filter.as_ref().unwrap();
    assert_eq!(filter.terms, ["Project Albatross"]);
    assert_eq!(filter.patterns.len(), 1);
    assert_eq!(body.extensions.len(), 1);
    assert!(!body.extensions[0].critical);
    assert!(body.extensions[0].value["note"]
        .as_str()
        .unwrap()
        .contains('\u{1}'));

    let watermark = body.watermark.as_ref().unwrap();
    let expected = vector_json("watermark-v1.json");
    let watermark::Params::Kgw(kgw) = watermark.params else {
        panic!("the full license's watermark is kgw")
    };
    assert_eq!(kgw.gamma, expected["gamma"].as_f64().unwrap());
    assert_eq!(kgw.delta, expected["delta"].as_f64().unwrap());
    let key = key_wrap::unwrap_secret(
        vector_node().unwrapper(),
        &key_wrap::watermark_binding_info(&body.license_id, &body.model.model_id),
        &watermark.key.to_wrapped(),
    )
    .unwrap();
    assert_eq!(hex::encode(*key), expected["key"].as_str().unwrap());
    assert_eq!(expected["license_id"], body.license_id.as_str());
}

#[test]
fn tournament_license_vector_verifies_and_its_g_values_follow_from_the_signer() {
    let license = std::fs::read(repo_path("docs/vectors/license-tournament-v1.license")).unwrap();
    let verified = leasehold::license::verify::authenticate(
        &license,
        &leasehold::license::TrustRoots::compiled_in(),
    )
    .unwrap();
    let body = &verified.body;
    assert_eq!(body.features, ["watermark", "watermark-tournament"]);
    let watermark = body.watermark.as_ref().unwrap();
    let watermark::Params::Tournament(t) = watermark.params else {
        panic!("not a tournament: {:?}", watermark.params)
    };
    let v = vector_json("watermark-tournament-v1.json");
    assert_eq!(
        (u64::from(t.depth), u64::from(t.context)),
        (v["depth"].as_u64().unwrap(), v["context"].as_u64().unwrap())
    );
    let unwrapped = key_wrap::unwrap_secret(
        vector_node().unwrapper(),
        &key_wrap::watermark_binding_info(&body.license_id, &body.model.model_id),
        &watermark.key.to_wrapped(),
    )
    .unwrap();
    assert_eq!(hex::encode(*unwrapped), v["key"].as_str().unwrap());
    let key = WatermarkKey::from_bytes(*unwrapped);
    for step in v["steps"].as_array().unwrap() {
        let previous: Vec<i32> = serde_json::from_value(step["previous"].clone()).unwrap();
        let seed = watermark.params.step_seed(&key, &previous);
        assert_eq!(seed.to_string(), step["seed"].as_str().unwrap());
        let g = watermark::tournament::g_values(seed, step["token"].as_i64().unwrap() as i32);
        let bits: Vec<u64> = (0..t.depth).map(|l| (g >> l) & 1).collect();
        assert_eq!(serde_json::json!(bits), step["g"], "{step}");
    }
    let d = &v["detection"];
    let tokens: Vec<i32> = serde_json::from_value(d["tokens"].clone()).unwrap();
    let found = watermark::detect(&tokens, &key, &watermark.params);
    assert_eq!(
        (found.scored as u64, found.trials as u64, found.hits as u64),
        (
            d["scored"].as_u64().unwrap(),
            d["trials"].as_u64().unwrap(),
            d["ones"].as_u64().unwrap()
        )
    );
    assert_eq!(
        format!("{:.6e}", found.p_value),
        d["p_value"].as_str().unwrap()
    );
}

#[test]
fn watermark_vector_key_and_green_lists_follow_from_the_signer() {
    let v = vector_json("watermark-v1.json");
    let seed: [u8; 32] = hex::decode(v["signer_seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signer = SecretKey::from_bytes(&seed);
    let key = WatermarkKey::derive(
        &signer,
        v["license_id"].as_str().unwrap(),
        v["model_id"].as_str().unwrap(),
    );
    assert_eq!(hex::encode(key.as_bytes()), v["key"].as_str().unwrap());
    let kgw = watermark::Kgw {
        gamma: v["gamma"].as_f64().unwrap(),
        delta: v["delta"].as_f64().unwrap(),
        context: v["context"].as_u64().unwrap() as u32,
    };
    let params = watermark::Params::Kgw(kgw);
    let steps = v["steps"].as_array().unwrap();
    let mut greens = 0;
    for step in steps {
        let previous: Vec<i32> = serde_json::from_value(step["previous"].clone()).unwrap();
        let seed = params.step_seed(&key, &previous);
        assert_eq!(seed.to_string(), step["seed"].as_str().unwrap());
        let token = step["token"].as_i64().unwrap() as i32;
        let green = watermark::kgw::is_green(seed, token, &kgw);
        assert_eq!(green, step["green"].as_bool().unwrap(), "{step}");
        greens += usize::from(green);
    }
    // Both kinds of answer are in the vector.
    assert!(
        greens > 0 && greens < steps.len(),
        "{greens} of {}",
        steps.len()
    );
}

#[test]
fn renewal_vectors_verify_as_server_and_node_verify_them() {
    let node = vector_node();
    let public = node.public();
    let (envelope, request) = protocol::parse_request(&vector("renewal-request-v1.json")).unwrap();
    protocol::verify_request(&envelope, &request, &public.signing_key.to_bytes()).unwrap();
    assert_eq!(request.usage.tpm_rollbacks, None);
    // A TPM node's request carries its count of refused rolled-back states.
    let (tpm_envelope, tpm_request) =
        protocol::parse_request(&vector("renewal-request-tpm-v1.json")).unwrap();
    protocol::verify_request(&tpm_envelope, &tpm_request, &public.signing_key.to_bytes()).unwrap();
    assert_eq!(tpm_request.usage.tpm_rollbacks, Some(8));
    let ledger = vector_json("usage-v1.json");
    let position = request.usage.ledger.as_ref().unwrap();
    assert_eq!(
        hex::encode(position.ledger_id),
        ledger["ledger_id"].as_str().unwrap()
    );
    assert_eq!(
        position.seq,
        ledger["last_checkpoint"]["seq"].as_u64().unwrap()
    );
    assert!(position.reported.is_some());

    let node_id = public.node_id();
    let expected = protocol::Expected {
        node_id: &node_id,
        nonce: request.nonce,
        scope: Some(("Vector Org", "vector-model")),
    };
    let roots = TrustRoots::compiled_in();
    let held = authenticate(&vector("license-issuer-v1.license"), &roots).unwrap();
    for (file, status) in [
        ("renewal-response-renewed-v1.json", "renewed"),
        ("renewal-response-pending-v1.json", "pending"),
        ("renewal-response-refused-v1.json", "refused"),
    ] {
        let opened = protocol::open_response(&vector(file), &roots, &expected).unwrap();
        assert!(matches!(opened.authority, Authority::Issuer { .. }));
        match (&opened.body.decision, status) {
            (protocol::Decision::Renewed { license }, "renewed") => {
                assert!(license.ends_with("}\n"));
                let renewed = authenticate(license.as_bytes(), &roots).unwrap();
                assert_eq!(renewed.body.license_id, held.body.license_id);
                assert_eq!((held.body.serial, renewed.body.serial), (8, 9));
            }
            (protocol::Decision::Pending { enrollment_id, .. }, "pending") => {
                assert_eq!(enrollment_id.len(), 16)
            }
            (protocol::Decision::Refused { reason, .. }, "refused") => {
                assert_eq!(*reason, protocol::RefusalReason::Revoked)
            }
            (other, _) => panic!("{file}: {other:?}"),
        }
    }
}

#[test]
fn ledger_vector_verifies_and_its_head_attestation_and_prompt_hashes_agree() {
    let node = vector_node();
    let key = node.public().signing_key;
    let expected = vector_json("usage-v1.json");
    let bytes = vector("usage-v1.ledger");
    let (summary, problem) = ledger::verify::verify(&bytes, &key, &key.key_id());
    assert_eq!(problem, None);
    assert_eq!(summary.records, expected["records"].as_u64().unwrap());
    assert_eq!(
        summary.checkpoints,
        expected["checkpoints"].as_u64().unwrap()
    );
    assert_eq!(summary.head_seq, expected["head_seq"].as_u64().unwrap());
    assert_eq!(
        hex::encode(summary.head_hash),
        expected["head_hash"].as_str().unwrap()
    );
    assert_eq!(
        serde_json::to_value(summary.totals).unwrap(),
        expected["totals"]
    );
    assert_eq!(
        hex::encode(summary.genesis.unwrap().0),
        expected["ledger_id"].as_str().unwrap()
    );
    // Every entry type and outcome is in it.
    let text = String::from_utf8(bytes.clone()).unwrap();
    for needle in [
        "\"genesis\"",
        "\"admitted\"",
        "\"completed\"",
        "\"request\"",
        "\"checkpoint\"",
        "\"reported\"",
        "\"recovered\"",
        "\"ok\"",
        "\"cancelled\"",
        "\"filtered\"",
        "\"refused:queue_full\"",
        "\"refused:license_expired\"",
        "\"refused:engine_error\"",
        "\"filter_rule\"",
        "\"prompt_sha256\"",
    ] {
        assert!(text.contains(needle), "{needle}");
    }

    // The head, read as a node reads it at start from its directory.
    let dir = tempfile::TempDir::new().unwrap();
    for entry in std::fs::read_dir(repo_path("docs/vectors/node")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join(ledger::head::HEAD_FILE),
        vector("ledger-v1.head"),
    )
    .unwrap();
    let head = ledger::head::read(&NodeIdentity::load(dir.path()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(Some((head.seq, head.hash)), summary.last_checkpoint);

    let attestation = ledger::attestation::verify(&vector("attestation-v1.json"), &key).unwrap();
    assert_eq!(
        (
            attestation.ledger_seq,
            attestation.ledger_head,
            attestation.totals
        ),
        (summary.head_seq, summary.head_hash, summary.totals)
    );

    let salt = PromptSalt::read(&repo_path("docs/vectors/node/ledger.salt")).unwrap();
    for case in expected["prompt_hashes"].as_array().unwrap() {
        let parts: Vec<&str> = case["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let prompt = match case["kind"].as_str().unwrap() {
            "chat" => PromptParts::Chat(parts.chunks(2).map(|c| (c[0], c[1])).collect()),
            _ => PromptParts::Text(parts[0]),
        };
        let hash = salt.hash(&prompt);
        assert_eq!(serde_json::to_value(hash).unwrap(), case["prompt_sha256"]);
        assert!(text.contains(case["prompt_sha256"].as_str().unwrap()));
    }
}

/// Every file in docs/vectors/negative is refused as its manifest says, by the public
/// path for its kind; the manifest and the directory list the same files.
#[test]
fn negative_vectors_are_refused_as_the_manifest_says() {
    let manifest = vector_json("negative/manifest.json");
    let entries = manifest.as_array().unwrap();
    let mut listed: Vec<String> = entries
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    listed.push("manifest.json".into());
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(repo_path("docs/vectors/negative"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    present.sort();
    assert_eq!(listed, present);

    let node = vector_node();
    let key = node.public().signing_key;
    let roots = TrustRoots::compiled_in();
    let request = protocol::parse_request(&vector("renewal-request-v1.json"))
        .unwrap()
        .1;
    let node_id = key.key_id();
    let expected_response = protocol::Expected {
        node_id: &node_id,
        nonce: request.nonce,
        scope: Some(("Vector Org", "vector-model")),
    };
    let mut kinds = std::collections::BTreeSet::new();
    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        let bytes = vector(&format!("negative/{file}"));
        let kind = entry["kind"].as_str().unwrap();
        let found = match kind {
            "license" => on_vector_node(|checks| assess(&bytes, &roots, checks).verdict.name()),
            "ledger" => ledger::verify::verify(&bytes, &key, &node_id)
                .1
                .map_or("intact", |p| p.kind()),
            "attestation" => ledger::attestation::verify(&bytes, &key)
                .err()
                .map_or("valid", |e| e.kind()),
            "renewal-response" => protocol::open_response(&bytes, &roots, &expected_response)
                .err()
                .map_or("valid", |e| e.kind()),
            other => panic!("{file}: unknown kind {other}"),
        };
        assert_eq!(
            found,
            entry["expected"].as_str().unwrap(),
            "{file}: {}",
            entry["why"]
        );
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 4);
}

#[test]
fn audit_answer_vector_verifies_covers_its_period_and_reports_as_written() {
    let node = vector_node();
    let key = node.public().signing_key;
    let expected = vector_json("audit-answer-v1.json");
    let bytes = vector("audit-answer-v1.audit");
    let parsed = ledger::audit::parse(&bytes).unwrap();
    let verified = ledger::audit::verify(&parsed, &key).unwrap();
    let body = &verified.body;
    assert_eq!(body.audit_id.as_deref(), expected["audit_id"].as_str());
    assert_eq!(body.node_id, expected["node_id"].as_str().unwrap());
    assert_eq!(body.first_seq, expected["first_seq"].as_u64().unwrap());
    assert_eq!(body.last_seq, expected["last_seq"].as_u64().unwrap());
    assert_eq!(
        hex::encode(body.records_sha256),
        expected["records_sha256"].as_str().unwrap()
    );
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(expected[k].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!((body.from, body.to), (at("from"), at("to")));
    // The run starts at a checkpoint before the period and ends at one at its end.
    assert!(verified.summary.genesis.is_none());
    verified.covers(at("from"), at("to")).unwrap();
    assert!(verified
        .covers(at("from") - chrono::Duration::hours(1), at("to"))
        .is_err());
    assert!(verified
        .covers(at("from"), at("to") + chrono::Duration::hours(1))
        .is_err());
    // The records are the vector ledger's own lines.
    let whole = vector("usage-v1.ledger");
    assert!(whole
        .windows(parsed.records.len())
        .any(|w| w == parsed.records));
    let (rows, unreadable) = ledger::report::report_rows(
        parsed.records,
        Some(at("from")),
        Some(at("to")),
        ledger::report::Period::Quarter,
    );
    assert_eq!(unreadable, 0);
    assert_eq!(
        ledger::report::csv(&rows),
        expected["report_csv"].as_str().unwrap()
    );
    // Which equals the report over the whole ledger for the same period.
    let (all, _) = ledger::report::report_rows(
        &whole,
        Some(at("from")),
        Some(at("to")),
        ledger::report::Period::Quarter,
    );
    assert_eq!(all, rows);

    // One byte changed in the records, or the run cut short: refused.
    let mut edited = bytes.clone();
    let last = edited.len() - 10;
    edited[last] ^= 1;
    let err = ledger::audit::verify(&ledger::audit::parse(&edited).unwrap(), &key).unwrap_err();
    assert_eq!(err.kind(), "records-altered");
    let cut = &bytes[..bytes.len() - 1];
    let err = ledger::audit::verify(&ledger::audit::parse(cut).unwrap(), &key).unwrap_err();
    assert_eq!(err.kind(), "records-altered");
    // Another key.
    let other = SecretKey::generate().public_key();
    let err = ledger::audit::verify(&parsed, &other).unwrap_err();
    assert_eq!(err.kind(), "wrong-signer");
}

#[test]
fn a_renewal_response_can_carry_an_audit_request() {
    let node = vector_node();
    let node_id = node.public().node_id();
    let request = vector("renewal-request-v1.json");
    let (_, body) = protocol::parse_request(&request).unwrap();
    let expected = protocol::Expected {
        node_id: &node_id,
        nonce: body.nonce,
        scope: Some(("Vector Org", "vector-model")),
    };
    let opened = protocol::open_response(
        &vector("renewal-response-audit-v1.json"),
        &TrustRoots::compiled_in(),
        &expected,
    )
    .unwrap();
    assert!(matches!(
        opened.body.decision,
        protocol::Decision::Renewed { .. }
    ));
    let call = opened.body.audit.expect("an audit request");
    let answer = vector_json("audit-answer-v1.json");
    assert_eq!(call.audit_id, answer["audit_id"].as_str().unwrap());
    assert_eq!(
        leasehold::format::time::rfc3339(call.from),
        answer["from"].as_str().unwrap()
    );
    // The other responses carry none.
    let renewed = protocol::open_response(
        &vector("renewal-response-renewed-v1.json"),
        &TrustRoots::compiled_in(),
        &expected,
    )
    .unwrap();
    assert!(renewed.body.audit.is_none());
}
