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
use leasehold::crypto::key_wrap::{KeyUnwrapper, P256UnwrapSecret};
use leasehold::crypto::keyfile;
use leasehold::crypto::signing::SecretKey;
use leasehold::crypto::ContentKey;
use leasehold::format::encoding::Digest;
use leasehold::format::{Body, Envelope};
use leasehold::ledger::attestation::AttestationBody;
use leasehold::ledger::head::LedgerHeadBody;
use leasehold::ledger::prompt_hash::{PromptParts, PromptSalt, SALT_FILE};
use leasehold::ledger::record::{self, Entry, Outcome, RecordBody, RefusalCode, Totals};
use leasehold::license::body::Extension;
use leasehold::license::issue::{certify, issue, Safeguards, Terms};
use leasehold::license::{Caps, FilterRules, IssuerCertBody, LicenseBody};
use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse};
use leasehold::node::trusted_time::{NodeStateBody, TpmMark};
use leasehold::node::NodeIdentity;
use leasehold::protocol::{
    sign_response, Decision, LedgerAnchor, LedgerPosition, LicenseRef, RefusalReason,
    RenewalRequestBody, RenewalResponseBody, UsageCheckpoint,
};
use leasehold::seal::{self, Header};
use leasehold::watermark::{kgw::is_green, Kgw, Params, WatermarkKey};

// The vector node's hardware, shared with tests/vectors.rs.
#[path = "../tests/common/vectors.rs"]
mod vectors;

fn main() -> anyhow::Result<()> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/vectors");
    std::fs::create_dir_all(&out)?;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    if std::env::args().nth(1).as_deref() == Some("--only-audit") {
        // The audit vectors alone, from the vectors already written (deterministic:
        // Ed25519 signatures over fixed inputs), leaving the others as they are.
        audit_vectors(&out)?;
        println!("wrote the audit vectors to {}", out.display());
        return Ok(());
    }
    let root = keyfile::read_secret_key(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
    )?;
    if std::env::args().nth(1).as_deref() == Some("--only-tournament") {
        // The tournament watermark's vectors alone, from the vector node, enrollment
        // and sealed model already written, leaving the others as they are.
        tournament_vectors(&out, &root, t0)?;
        println!(
            "wrote the tournament watermark vectors to {}",
            out.display()
        );
        return Ok(());
    }

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
        Envelope::sign(&state, identity.signer(), vec![]).render(),
    )?;
    let (first, second) = (format!("{:032x}", 1), format!("{:032x}", 2));
    state.note_spent(&first, 9);
    state.note_serial(&second, 3);
    state.note_revoked(&second);
    std::fs::write(
        out.join("node-state-v1-licenses.json"),
        Envelope::sign(&state, identity.signer(), vec![]).render(),
    )?;
    // The same state as a TPM node writes it: its counter and the TPM's Clock.
    state.tpm = Some(TpmMark {
        nv_index: 0x0138_1234,
        counter: 42,
        clock_ms: 86_400_000,
    });
    std::fs::write(
        out.join("node-state-v1-tpm.json"),
        Envelope::sign(&state, identity.signer(), vec![]).render(),
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
        Some(cert.clone()),
        &enrollment,
        &header,
        &key,
        &Terms {
            serial: 8,
            ..terms.clone()
        },
    )?;
    std::fs::write(out.join("license-issuer-v1.license"), issued.render())?;

    let full = full_license(&out, &root, &enrollment, &header, &key, &terms)?;
    // A TPM node's enrollment: the P-256 unwrap key, and the TPM's count of refused
    // rolled-back states when it enrolled; and a license for it.
    let tpm_public = P256UnwrapSecret::from_bytes(p256_vector_secret())?.public_key();
    let tpm_enrollment = enrollment::EnrollmentBody {
        unwrap_key: tpm_public.as_bytes().to_vec(),
        unwrap_suite: tpm_public.suite_field(),
        tpm_rollbacks: Some(7),
        ..enrollment.clone()
    };
    p256_license(&out, &root, &tpm_enrollment, &header, &key, &terms)?;
    std::fs::write(
        out.join("enrollment-tpm-v1.enroll"),
        Envelope::sign(&tpm_enrollment, identity.signer(), vec![]).render(),
    )?;
    let ledger = usage_ledger(&out, &identity, t0)?;
    let issuer_license: LicenseBody = issued.decode_body()?;
    renewals(
        &out,
        &identity,
        &issuer,
        &cert,
        &enrollment,
        &header,
        &key,
        &Terms {
            serial: 9,
            license_id: Some(issuer_license.license_id.clone()),
            issued_at: t0 + Duration::days(30),
            not_before: t0 + Duration::days(30),
            ..terms.clone()
        },
        &ledger,
        t0,
    )?;
    let license_v1: LicenseBody = license.decode_body()?;
    attestation(&out, &identity, &license_v1, &ledger, t0)?;
    watermark_vector(&out, &root, &full)?;
    tournament_vectors(&out, &root, t0)?;
    negatives(&out, &root, &identity, &license_v1, &ledger, t0)?;
    audit_vectors(&out)?;
    println!("wrote test vectors to {}", out.display());
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(())
}

/// A license with every optional part: all caps, two renewal URLs, a watermark, an
/// output filter (so both features), and a non-critical extension whose value needs
/// escaping. Root-signed; the extension is added to the issued body and the body
/// signed again, as a vendor tool that writes extensions would.
fn full_license(
    out: &Path,
    root: &SecretKey,
    enrollment: &enrollment::EnrollmentBody,
    header: &Header,
    key: &ContentKey,
    terms: &Terms,
) -> anyhow::Result<LicenseBody> {
    let full_terms = Terms {
        serial: 10,
        caps: Caps {
            requests_per_day: Some(1000),
            requests_per_month: Some(20_000),
            tokens_per_day: Some(2_000_000),
            tokens_per_month: Some(40_000_000),
            concurrent: Some(4),
            context: Some(2048),
        },
        renewal: vec![
            "https://licenses.example.com".into(),
            "https://licenses-2.example.com/base/".into(),
        ],
        safeguards: Safeguards {
            watermark: Some(Params::Kgw(Kgw {
                gamma: 0.25,
                delta: 2.0,
                context: 2,
            })),
            output_filter: Some(FilterRules {
                terms: vec!["Project Albatross".into()],
                patterns: vec![r"\b\d{3}-\d{2}-\d{4}\b".into()],
            }),
        },
        ..terms.clone()
    };
    let issued = issue(root, None, enrollment, header, key, &full_terms)?;
    let mut body: LicenseBody = issued.decode_body()?;
    body.extensions.push(Extension {
        name: "example.com/purchase-order".into(),
        critical: false,
        value: serde_json::json!({
            "po": "PO-2026/0042",
            "note": "caf\u{e9} \"quoted\" back\\slash tab\t ctrl\u{1}",
            "lines": [1, 2, 3],
        }),
    });
    let envelope = Envelope::sign(&body, root, vec![]);
    std::fs::write(out.join("license-full-v1.license"), envelope.render())?;
    Ok(body)
}

/// The vector TPM node's P-256 unwrap key: a fixed scalar (public test data; a real TPM
/// node's key never leaves its TPM), SHA-256 of a label.
fn p256_vector_secret() -> [u8; 32] {
    leasehold::crypto::sha256(&[b"leasehold vector P-256 unwrap key"])
}

/// A license for a node whose unwrap key is a P-256 key (the suite of TPM nodes): issued
/// from `tpm_enrollment` (the vector node's enrollment with the key of
/// [`p256_vector_secret`]), and the scalar that opens it.
fn p256_license(
    out: &Path,
    root: &SecretKey,
    tpm_enrollment: &enrollment::EnrollmentBody,
    header: &Header,
    key: &ContentKey,
    terms: &Terms,
) -> anyhow::Result<()> {
    let secret = P256UnwrapSecret::from_bytes(p256_vector_secret())?;
    let public = secret.public_key();
    let license = issue(
        root,
        None,
        tpm_enrollment,
        header,
        key,
        &Terms {
            serial: 11,
            ..terms.clone()
        },
    )?;
    std::fs::write(out.join("license-p256-v1.license"), license.render())?;
    write_json(
        &out.join("license-p256-v1.json"),
        &serde_json::json!({
            "unwrap_secret_hex": hex::encode(secret.as_bytes()),
            "unwrap_point_hex": hex::encode(public.as_bytes()),
            "suite": public.suite(),
            "content_key": B64.encode(key.as_bytes()),
        }),
    )
}

/// What the vector ledger holds, for the documents that name it.
struct VectorLedger {
    genesis_hash: [u8; 32],
    genesis_at: chrono::DateTime<Utc>,
    /// (seq, hash) of each checkpoint.
    checkpoints: Vec<(u64, [u8; 32])>,
    /// Totals at each checkpoint, in order.
    checkpoint_totals: Vec<Totals>,
    head: (u64, [u8; 32]),
    totals: Totals,
    bodies: Vec<RecordBody>,
}

/// A ledger written by hand with the ledger's own encoder, at fixed times (with the
/// fractions a node's clock gives): every entry type and outcome, a `reported` and a
/// `recovered` record; and its signed `ledger.head`.
fn usage_ledger(
    out: &Path,
    identity: &NodeIdentity,
    t0: chrono::DateTime<Utc>,
) -> anyhow::Result<VectorLedger> {
    let node_id = identity.public().node_id();
    let license_id = format!("{:032x}", 0xabcu32);
    let salt = PromptSalt::load_or_create(identity.dir())?;
    let chat = PromptParts::Chat(vec![
        ("system", "You are terse."),
        ("user", "Name a bird. Then another."),
    ]);
    let text = PromptParts::Text("Once upon a time");
    let chat_hash = salt.hash(&chat);
    let text_hash = salt.hash(&text);
    let request_id = |n: u32| format!("chatcmpl-{n:024x}");
    let admitted = |n: u32, prompt_tokens: u64, hash: Option<Digest>| Entry::Admitted {
        request_id: request_id(n),
        license_id: license_id.clone(),
        model_id: "vector-model".into(),
        prompt_tokens,
        client_key: "3f2a9c01".into(),
        prompt_sha256: hash,
    };
    let completed = |n: u32, completion_tokens: u64, outcome: Outcome| Entry::Completed {
        request_id: request_id(n),
        completion_tokens,
        outcome,
        filter_rule: (outcome == Outcome::Filtered).then(|| "term 'Project Albatross'".into()),
    };
    let refused = |n: u32, code: RefusalCode, hash: Option<Digest>| Entry::Request {
        request_id: request_id(n),
        license_id: license_id.clone(),
        model_id: "vector-model".into(),
        prompt_tokens: 0,
        completion_tokens: 0,
        outcome: Outcome::Refused(code),
        client_key: "-".into(),
        prompt_sha256: hash,
        filter_rule: None,
    };
    let mut entries = vec![
        Entry::Genesis {
            node_id: node_id.clone(),
        },
        admitted(1, 25, Some(chat_hash)),
        completed(1, 12, Outcome::Ok),
        admitted(2, 9, Some(text_hash)),
        completed(2, 3, Outcome::Cancelled),
        admitted(3, 14, None),
        completed(3, 7, Outcome::Filtered),
        refused(4, RefusalCode::QueueFull, None),
        refused(5, RefusalCode::LicenseCapExceeded, None),
        admitted(6, 31, None),
        completed(6, 0, Outcome::Refused(RefusalCode::EngineError)),
        // Checkpoint (totals filled in below), then the server's acknowledgement.
        Entry::Checkpoint {
            totals: Totals::default(),
        },
        Entry::Reported {
            seq: 0,
            hash: [0; 32],
        },
        Entry::Recovered {
            torn_bytes: 57,
            torn_sha256: leasehold::crypto::sha256(&[b"{\"body\":{\"seq\":13,"]),
            moved_to: "/var/lib/leasehold/node/usage.ledger.torn-1767225700".into(),
        },
        // An interrupted request: admitted, never completed (the node stopped).
        admitted(7, 40, None),
        refused(8, RefusalCode::LicenseExpired, None),
        Entry::Checkpoint {
            totals: Totals::default(),
        },
    ];
    let key = identity.signer();
    let mut text_out = String::new();
    let (mut prev, mut totals) = ([0u8; 32], Totals::default());
    let mut ledger = VectorLedger {
        genesis_hash: [0; 32],
        genesis_at: t0,
        checkpoints: vec![],
        checkpoint_totals: vec![],
        head: (0, [0; 32]),
        totals,
        bodies: vec![],
    };
    for (seq, entry) in entries.iter_mut().enumerate() {
        match entry {
            Entry::Checkpoint { totals: t } => *t = totals,
            Entry::Reported { seq, hash } => (*seq, *hash) = ledger.checkpoints[0],
            _ => {}
        }
        // Times with the fractions a node clock gives, never decreasing; record 3 falls
        // on a whole second (written without a fraction), record 4 in the same second.
        let at = t0
            + Duration::seconds(60 * seq as i64)
            + Duration::nanoseconds(if seq == 3 { 0 } else { 641_927_787 })
            - Duration::seconds(if seq == 4 { 60 } else { 0 });
        let body = RecordBody {
            seq: seq as u64,
            prev,
            at,
            entry: entry.clone(),
        };
        let (line, hash) = record::encode(&body, Some(key));
        text_out.push_str(&line);
        totals.add(entry)?;
        if seq == 0 {
            ledger.genesis_hash = hash;
            ledger.genesis_at = at;
        }
        if matches!(entry, Entry::Checkpoint { .. }) {
            ledger.checkpoints.push((seq as u64, hash));
            ledger.checkpoint_totals.push(totals);
        }
        ledger.head = (seq as u64, hash);
        ledger.bodies.push(body);
        prev = hash;
    }
    ledger.totals = totals;
    std::fs::write(out.join("usage-v1.ledger"), &text_out)?;
    let (cp_seq, cp_hash) = *ledger.checkpoints.last().expect("two checkpoints");
    let head = LedgerHeadBody {
        version: LedgerHeadBody::VERSION,
        node_id,
        seq: cp_seq,
        hash: cp_hash,
        at: t0 + Duration::hours(1),
    };
    std::fs::write(
        out.join("ledger-v1.head"),
        Envelope::sign(&head, key, vec![]).render(),
    )?;
    let salt_hex = hex::encode(std::fs::read(identity.dir().join(SALT_FILE))?);
    write_json(
        &out.join("usage-v1.json"),
        &serde_json::json!({
            "records": ledger.bodies.len(),
            "checkpoints": ledger.checkpoints.len(),
            "ledger_id": hex::encode(ledger.genesis_hash),
            "head_seq": ledger.head.0,
            "head_hash": hex::encode(ledger.head.1),
            "last_checkpoint": {"seq": cp_seq, "hash": hex::encode(cp_hash)},
            "totals": ledger.totals,
            "prompt_salt": salt_hex,
            "prompt_hashes": [
                {"kind": "chat", "parts": ["system", "You are terse.", "user", "Name a bird. Then another."], "prompt_sha256": chat_hash},
                {"kind": "text", "parts": ["Once upon a time"], "prompt_sha256": text_hash},
            ],
        }),
    )?;
    Ok(ledger)
}

/// A renewal request naming the vector ledger's last checkpoint, and the three kinds of
/// answer, issuer-signed with the certificate in `chain`.
#[allow(clippy::too_many_arguments)]
fn renewals(
    out: &Path,
    identity: &NodeIdentity,
    issuer: &SecretKey,
    cert: &Envelope,
    enrollment: &enrollment::EnrollmentBody,
    header: &Header,
    key: &ContentKey,
    renewed_terms: &Terms,
    ledger: &VectorLedger,
    t0: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let public = identity.public();
    let node_id = public.node_id();
    let nonce = [0x5a; 16];
    let (cp_seq, cp_hash) = *ledger.checkpoints.last().expect("checkpoints");
    let totals = *ledger.checkpoint_totals.last().expect("checkpoints");
    let license_id = renewed_terms
        .license_id
        .clone()
        .expect("a renewal keeps its id");
    let request = RenewalRequestBody {
        version: RenewalRequestBody::VERSION,
        node_id: node_id.clone(),
        node_key: public.signing_key.to_bytes(),
        model_id: "vector-model".into(),
        license: Some(LicenseRef {
            license_id,
            serial: 8,
        }),
        nonce,
        sent_at: t0 + Duration::days(30),
        usage: UsageCheckpoint {
            since: Some(leasehold::format::time::whole_seconds(ledger.genesis_at)),
            requests: totals.requests,
            prompt_tokens: totals.prompt_tokens,
            completion_tokens: totals.completion_tokens,
            ledger: Some(LedgerPosition {
                ledger_id: ledger.genesis_hash,
                seq: cp_seq,
                hash: cp_hash,
                reported: Some(LedgerAnchor {
                    seq: ledger.checkpoints[0].0,
                    hash: ledger.checkpoints[0].1,
                }),
            }),
            tpm_rollbacks: None,
        },
    };
    std::fs::write(
        out.join("renewal-request-v1.json"),
        Envelope::sign(&request, identity.signer(), vec![]).render(),
    )?;
    // The same request from a TPM node that has since refused one rolled-back state.
    let tpm_request = RenewalRequestBody {
        usage: UsageCheckpoint {
            tpm_rollbacks: Some(8),
            ..request.usage.clone()
        },
        ..request.clone()
    };
    std::fs::write(
        out.join("renewal-request-tpm-v1.json"),
        Envelope::sign(&tpm_request, identity.signer(), vec![]).render(),
    )?;
    let renewed = issue(
        issuer,
        Some(cert.clone()),
        enrollment,
        header,
        key,
        renewed_terms,
    )?;
    let server_time = t0 + Duration::days(30) + Duration::nanoseconds(123_456_789);
    let answers = [
        (
            "renewed",
            Decision::Renewed {
                license: renewed.render(),
            },
        ),
        (
            "pending",
            Decision::Pending {
                enrollment_id: "0f1e2d3c4b5a6978".into(),
                message: "waiting for the vendor's approval".into(),
            },
        ),
        (
            "refused",
            Decision::Refused {
                reason: RefusalReason::Revoked,
                message: "license revoked by the vendor".into(),
            },
        ),
    ];
    for (name, decision) in answers {
        let body = RenewalResponseBody {
            version: RenewalResponseBody::VERSION,
            node_id: node_id.clone(),
            request_nonce: nonce,
            server_time,
            decision,
            audit: None,
        };
        std::fs::write(
            out.join(format!("renewal-response-{name}-v1.json")),
            sign_response(issuer, Some(cert), &body).render(),
        )?;
    }
    Ok(())
}

/// The node's attestation while serving license-v1, naming the vector ledger's head.
fn attestation(
    out: &Path,
    identity: &NodeIdentity,
    license: &LicenseBody,
    ledger: &VectorLedger,
    t0: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let body = AttestationBody {
        version: AttestationBody::VERSION,
        node_id: identity.public().node_id(),
        at: t0 + Duration::hours(2),
        license_id: license.license_id.clone(),
        serial: license.serial,
        licensee: license.licensee.clone(),
        model_id: license.model.model_id.clone(),
        phase: "serving".into(),
        expires_at: license.expires_at,
        grace_ends: license.expires_at + Duration::seconds(license.grace_seconds as i64),
        ledger_seq: ledger.head.0,
        ledger_head: ledger.head.1,
        totals: ledger.totals,
    };
    std::fs::write(
        out.join("attestation-v1.json"),
        Envelope::sign(&body, identity.signer(), vec![]).render(),
    )?;
    Ok(())
}

/// The watermark key of license-full-v1 derived from its signer (the demo root), and
/// green-list membership for a few (previous tokens, token) pairs.
fn watermark_vector(out: &Path, root: &SecretKey, license: &LicenseBody) -> anyhow::Result<()> {
    let mandate = license
        .watermark
        .as_ref()
        .expect("the full license has one");
    let params = mandate.params;
    let Params::Kgw(kgw) = params else {
        anyhow::bail!("the full license's watermark is kgw");
    };
    let key = WatermarkKey::derive(root, &license.license_id, &license.model.model_id);
    let mut steps = Vec::new();
    for previous in [vec![], vec![17], vec![17, 4242], vec![9, 17, 4242]] {
        let seed = params.step_seed(&key, &previous);
        for token in [0, 1, 2, 17, 151, 4242, 31999] {
            steps.push(serde_json::json!({
                "previous": previous,
                "seed": seed.to_string(),
                "token": token,
                "green": is_green(seed, token, &kgw),
            }));
        }
    }
    write_json(
        &out.join("watermark-v1.json"),
        &serde_json::json!({
            "signer_seed": hex::encode(*root.to_bytes()),
            "license_id": license.license_id,
            "model_id": license.model.model_id,
            "key": hex::encode(key.as_bytes()),
            "gamma": kgw.gamma,
            "delta": kgw.delta,
            "context": kgw.context,
            "steps": steps,
        }),
    )
}

/// A root-signed license mandating the tournament watermark (depth 4, context 2) for the
/// vector node and sealed model, and watermark-tournament-v1.json: its key derived from
/// the signer, step seeds and g-values for a few (previous tokens, token) pairs, one
/// step's tournament over five tokens, and one detection.
fn tournament_vectors(
    out: &Path,
    root: &SecretKey,
    t0: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    use leasehold::watermark::tournament;
    let enrollment = enrollment::verify(&std::fs::read(out.join("enrollment-v1.enroll"))?)?;
    let sealed = std::fs::read(out.join("sealed-v1.sealed"))?;
    let header = Header::parse(&sealed)?;
    let key = ContentKey::from_bytes([0x42; 32]);
    let params =
        Params::parse("scheme=tournament,depth=4,context=2").map_err(anyhow::Error::msg)?;
    let Params::Tournament(t) = params else {
        anyhow::bail!("not a tournament");
    };
    let terms = Terms {
        licensee: "Vector Org".into(),
        not_before: t0,
        expires_at: t0 + Duration::days(3650),
        grace: Duration::hours(1),
        serial: 11,
        caps: Caps::default(),
        features: vec![],
        renewal: vec![],
        issued_at: t0,
        license_id: None,
        safeguards: Safeguards {
            watermark: Some(params),
            output_filter: None,
        },
    };
    let license = issue(root, None, &enrollment, &header, &key, &terms)?;
    std::fs::write(out.join("license-tournament-v1.license"), license.render())?;
    let body: LicenseBody = license.decode_body()?;
    let wkey = WatermarkKey::derive(root, &body.license_id, &body.model.model_id);

    let mut steps = Vec::new();
    for previous in [vec![], vec![17], vec![17, 4242], vec![9, 17, 4242]] {
        let seed = params.step_seed(&wkey, &previous);
        for token in [0, 1, 17, 4242, 31999] {
            let g = tournament::g_values(seed, token);
            steps.push(serde_json::json!({
                "previous": previous,
                "seed": seed.to_string(),
                "token": token,
                "g": (0..t.depth).map(|l| (g >> l) & 1).collect::<Vec<_>>(),
            }));
        }
    }
    // One step's tournament: the request's distribution over tokens 0..5 after [17, 4242].
    let seed = params.step_seed(&wkey, &[17, 4242]);
    let before = [0.4f64, 0.3, 0.15, 0.1, 0.05];
    let mut after: Vec<f32> = before.iter().map(|p| *p as f32).collect();
    tournament::reweight(
        &mut after,
        None,
        seed,
        &t,
        &mut tournament::Scratch::default(),
    );
    // Detection: a fixed token sequence with a repeated context.
    let text = [5, 17, 4242, 9, 17, 4242, 9, 100, 200, 300, 17, 4242, 9];
    let d = leasehold::watermark::detect(&text, &wkey, &params);
    write_json(
        &out.join("watermark-tournament-v1.json"),
        &serde_json::json!({
            "signer_seed": hex::encode(*root.to_bytes()),
            "license_id": body.license_id,
            "model_id": body.model.model_id,
            "key": hex::encode(wkey.as_bytes()),
            "depth": t.depth,
            "context": t.context,
            "steps": steps,
            "tournament": {
                "previous": [17, 4242],
                "p": before,
                "after": after.iter().map(|w| format!("{w:.6}")).collect::<Vec<_>>(),
            },
            "detection": {
                "tokens": text,
                "scored": d.scored,
                "trials": d.trials,
                "ones": d.hits,
                "p_value": format!("{:.6e}", d.p_value),
            },
        }),
    )
}

/// One file per refusal, and docs/vectors/negative/manifest.json naming what each must
/// be refused as (by the public verification path for its kind).
fn negatives(
    out: &Path,
    root: &SecretKey,
    identity: &NodeIdentity,
    license: &LicenseBody,
    ledger: &VectorLedger,
    t0: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let dir = out.join("negative");
    std::fs::create_dir_all(&dir)?;
    let mut manifest = Vec::new();
    let mut add = |file: &str, kind: &str, expected: &str, why: &str, bytes: &[u8]| {
        std::fs::write(dir.join(file), bytes).expect("write a negative vector");
        manifest.push(serde_json::json!({
            "file": file, "kind": kind, "expected": expected, "why": why,
        }));
    };
    let license_text = std::fs::read_to_string(out.join("license-v1.license"))?;
    let stranger = SecretKey::from_bytes(&[0x77; 32]);

    // Licenses (verdict as `leasehold inspect --json` names it, on the vector node).
    let edited = license_text.replacen("\"serial\":7", "\"serial\":70", 1);
    add(
        "license-edited.license",
        "license",
        "tampered",
        "serial changed after signing",
        edited.as_bytes(),
    );
    let spaced = license_text.replacen("\"serial\":7", "\"serial\": 7", 1);
    add(
        "license-not-canonical.license",
        "license",
        "tampered",
        "a space inside the body",
        spaced.as_bytes(),
    );
    let crlf = license_text.replace('\n', "\r\n");
    add(
        "license-crlf.license",
        "license",
        "tampered",
        "CRLF line ends",
        crlf.as_bytes(),
    );
    let mut body = license.clone();
    body.version = 2;
    add(
        "license-version-2.license",
        "license",
        "unsupported",
        "version 2, correctly signed",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );
    let mut body = license.clone();
    body.extensions.push(Extension {
        name: "example.com/must-understand".into(),
        critical: true,
        value: serde_json::json!(true),
    });
    add(
        "license-critical-extension.license",
        "license",
        "unsupported",
        "an unknown critical extension",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );
    let mut body = license.clone();
    body.features.push("telemetry".into());
    add(
        "license-unknown-feature.license",
        "license",
        "unsupported",
        "a feature this build lacks",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );
    add(
        "license-unknown-signer.license",
        "license",
        "unknown-issuer",
        "signed by a key that is no root and has no certificate",
        Envelope::sign(license, &stranger, vec![])
            .render()
            .as_bytes(),
    );
    let mut body = license.clone();
    body.node.unwrap_key = vec![9; 32];
    add(
        "license-other-node.license",
        "license",
        "wrong-machine",
        "bound to another node's unwrap key",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );
    let mut body = license.clone();
    body.expires_at = t0 + Duration::days(30);
    body.grace_seconds = 0;
    add(
        "license-expired.license",
        "license",
        "expired",
        "expired on 2026-01-31 (checked at 2027-06-01)",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );
    let mut body = license.clone();
    body.grace_seconds = 316_224_001;
    add(
        "license-grace-too-long.license",
        "license",
        "unsupported",
        "grace beyond 10 years of 366 days",
        Envelope::sign(&body, root, vec![]).render().as_bytes(),
    );

    // Ledgers (the problem `leasehold audit verify --json` names).
    let text = std::fs::read_to_string(out.join("usage-v1.ledger"))?;
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let join = |lines: &[String]| lines.join("\n") + "\n";
    let key = identity.signer();
    let rechain = |bodies: &[RecordBody]| {
        let mut prev = [0u8; 32];
        let mut s = String::new();
        for (seq, body) in bodies.iter().enumerate() {
            let body = RecordBody {
                seq: seq as u64,
                prev,
                ..body.clone()
            };
            let (line, hash) = record::encode(&body, Some(key));
            s.push_str(&line);
            prev = hash;
        }
        s
    };
    let mut l = lines.clone();
    l[2] = l[2].replacen("\"completion_tokens\":12", "\"completion_tokens\":2", 1);
    add(
        "ledger-edited.ledger",
        "ledger",
        "edited",
        "a token count changed",
        join(&l).as_bytes(),
    );
    let mut l = lines.clone();
    l.remove(5);
    add(
        "ledger-deleted.ledger",
        "ledger",
        "deleted",
        "record 5 removed",
        join(&l).as_bytes(),
    );
    let mut l = lines.clone();
    l.swap(3, 4);
    add(
        "ledger-reordered.ledger",
        "ledger",
        "reordered",
        "records 3 and 4 swapped",
        join(&l).as_bytes(),
    );
    add(
        "ledger-truncated.ledger",
        "ledger",
        "truncated",
        "cut inside the last record",
        &text.as_bytes()[..text.len() - 20],
    );
    let mut l = lines.clone();
    let (forged, _) = record::encode(
        &RecordBody {
            entry: Entry::Genesis {
                node_id: "x".into(),
            },
            ..ledger.bodies[0].clone()
        },
        None,
    );
    l[0] = forged.trim_end().into();
    add(
        "ledger-foreign.ledger",
        "ledger",
        "foreign",
        "genesis names another node",
        join(&l).as_bytes(),
    );
    let mut l = lines.clone();
    let (other, _) = record::encode(
        &RecordBody {
            entry: Entry::Completed {
                request_id: "chatcmpl-x".into(),
                completion_tokens: 1,
                outcome: Outcome::Ok,
                filter_rule: None,
            },
            ..ledger.bodies[4].clone()
        },
        Some(key),
    );
    l[4] = other.trim_end().into();
    add(
        "ledger-forked.ledger",
        "ledger",
        "forked",
        "record 4 replaced by another correctly hashed record",
        join(&l).as_bytes(),
    );
    let mut l = lines.clone();
    let cp = ledger.checkpoints[0].0 as usize;
    let (resigned, _) = record::encode(&ledger.bodies[cp], Some(&stranger));
    l[cp] = resigned.trim_end().into();
    add(
        "ledger-bad-checkpoint-signature.ledger",
        "ledger",
        "bad-checkpoint-signature",
        "a checkpoint signed by another key",
        join(&l).as_bytes(),
    );
    let mut bodies = ledger.bodies.clone();
    bodies[cp].entry = Entry::Checkpoint {
        totals: Totals {
            requests: 1,
            ..ledger.checkpoint_totals[0]
        },
    };
    add(
        "ledger-checkpoint-totals.ledger",
        "ledger",
        "edited",
        "a re-signed checkpoint whose totals are not the records' sum",
        rechain(&bodies).as_bytes(),
    );
    let mut bodies = ledger.bodies.clone();
    bodies.insert(3, ledger.bodies[0].clone());
    add(
        "ledger-second-genesis.ledger",
        "ledger",
        "foreign",
        "a second genesis record, re-chained and re-signed",
        rechain(&bodies).as_bytes(),
    );
    let mut bodies = ledger.bodies.clone();
    bodies[5].at = bodies[4].at - Duration::seconds(1);
    add(
        "ledger-time-went-back.ledger",
        "ledger",
        "edited",
        "a record dated before the one ahead of it, re-chained",
        rechain(&bodies).as_bytes(),
    );
    let mut bodies = ledger.bodies.clone();
    bodies[cp + 1].entry = Entry::Reported {
        seq: 5,
        hash: [7; 32],
    };
    add(
        "ledger-unknown-reported.ledger",
        "ledger",
        "edited",
        "a reported record naming no checkpoint, re-chained",
        rechain(&bodies).as_bytes(),
    );
    let mut l = lines.clone();
    let signature = &lines[cp][lines[cp].find(",\"signature\"").expect("signed")..];
    l[1] = format!("{}{signature}", &lines[1][..lines[1].len() - 1]);
    add(
        "ledger-signed-request.ledger",
        "ledger",
        "malformed",
        "a signature on a record that is not a checkpoint",
        join(&l).as_bytes(),
    );
    let mut l = lines.clone();
    l[1] = l[1].replacen("\"prompt_tokens\":25", "\"prompt_tokens\":25.0", 1);
    add(
        "ledger-not-canonical.ledger",
        "ledger",
        "malformed",
        "a float where an integer belongs",
        join(&l).as_bytes(),
    );
    add(
        "ledger-empty.ledger",
        "ledger",
        "foreign",
        "an empty file",
        b"",
    );

    // Attestation (`leasehold audit verify-attestation`).
    let attestation = std::fs::read_to_string(out.join("attestation-v1.json"))?;
    add(
        "attestation-edited.json",
        "attestation",
        "bad-signature",
        "phase changed after signing",
        attestation
            .replacen("\"serving\"", "\"lapsed\"", 1)
            .as_bytes(),
    );
    let body: AttestationBody = Envelope::parse(
        attestation.as_bytes(),
        leasehold::format::DocumentKind::Attestation,
    )?
    .decode_body()?;
    add(
        "attestation-wrong-signer.json",
        "attestation",
        "wrong-signer",
        "signed by another key",
        Envelope::sign(&body, &stranger, vec![]).render().as_bytes(),
    );
    let mut other = body.clone();
    other.node_id = stranger.public_key().key_id();
    add(
        "attestation-wrong-node-id.json",
        "attestation",
        "wrong-node-id",
        "the node's key, another node id",
        Envelope::sign(&other, key, vec![]).render().as_bytes(),
    );

    // Renewal responses (checked with the vector request's nonce, for the vector node).
    let renewed = std::fs::read_to_string(out.join("renewal-response-renewed-v1.json"))?;
    let envelope = Envelope::parse(
        renewed.as_bytes(),
        leasehold::format::DocumentKind::RenewalResponse,
    )?;
    let body: RenewalResponseBody = envelope.decode_body()?;
    let issuer = keyfile::read_secret_key(&out.join("issuer.key"))?;
    let mut replay = body.clone();
    replay.request_nonce = [0x11; 16];
    add(
        "renewal-response-replayed.json",
        "renewal-response",
        "replayed",
        "answers another request's nonce",
        sign_response(&issuer, Some(&envelope.chain[0]), &replay)
            .render()
            .as_bytes(),
    );
    let mut other = body.clone();
    other.node_id = stranger.public_key().key_id();
    add(
        "renewal-response-wrong-node.json",
        "renewal-response",
        "wrong-node",
        "for another node",
        sign_response(&issuer, Some(&envelope.chain[0]), &other)
            .render()
            .as_bytes(),
    );
    add(
        "renewal-response-untrusted.json",
        "renewal-response",
        "untrusted",
        "signed by a key no root certified",
        sign_response(&stranger, None, &body).render().as_bytes(),
    );
    let mut late = body.clone();
    late.server_time = t0 + Duration::days(3701);
    add(
        "renewal-response-out-of-scope.json",
        "renewal-response",
        "out-of-scope",
        "made after the issuer certificate's not_after",
        sign_response(&issuer, Some(&envelope.chain[0]), &late)
            .render()
            .as_bytes(),
    );
    add(
        "renewal-response-edited.json",
        "renewal-response",
        "untrusted",
        "server_time changed after signing",
        renewed
            .replacen(":00.123456789Z", ":01.123456789Z", 1)
            .as_bytes(),
    );

    write_json(
        &dir.join("manifest.json"),
        &serde_json::Value::Array(manifest),
    )
}

/// An audit answer over the vector ledger: the run from its first checkpoint (the period
/// starts a second after it) to its second (the period ends at it), answering audit
/// `audit-00000000000000aa`; the renewed response vector again, carrying that audit.
fn audit_vectors(out: &Path) -> anyhow::Result<()> {
    use leasehold::ledger::audit::{self, End};
    use leasehold::ledger::report::{self as report, Period};
    use leasehold::protocol::AuditCall;

    let identity = NodeIdentity::load(&out.join("node"))?;
    let ledger = std::fs::read(out.join("usage-v1.ledger"))?;
    let checkpoints: Vec<(u64, chrono::DateTime<Utc>)> = record::each(&ledger)
        .flatten()
        .filter(|p| matches!(p.body.entry, Entry::Checkpoint { .. }))
        .map(|p| (p.body.seq, p.body.at))
        .collect();
    let [(_, first_at), (second, second_at), ..] = checkpoints[..] else {
        anyhow::bail!("the vector ledger has fewer than two checkpoints");
    };
    // Periods are whole seconds (the server keeps them so).
    let whole = leasehold::format::time::whole_seconds;
    let (from, to) = (whole(first_at) + Duration::seconds(1), whole(second_at));
    let audit_id = "audit-00000000000000aa";
    let answer = audit::build(
        &identity,
        &ledger,
        Some(audit_id),
        from,
        to,
        End::ReportedCheckpoint(second),
        second_at + Duration::minutes(5),
    )?;
    std::fs::write(out.join("audit-answer-v1.audit"), &answer)?;
    let parsed = audit::parse(&answer).map_err(anyhow::Error::msg)?;
    let (rows, _) = report::report_rows(parsed.records, Some(from), Some(to), Period::Quarter);
    write_json(
        &out.join("audit-answer-v1.json"),
        &serde_json::json!({
            "audit_id": audit_id,
            "node_id": parsed.body.node_id,
            "from": leasehold::format::time::rfc3339(from),
            "to": leasehold::format::time::rfc3339(to),
            "first_seq": parsed.body.first_seq,
            "last_seq": parsed.body.last_seq,
            "records_bytes": parsed.body.records_bytes,
            "records_sha256": hex::encode(parsed.body.records_sha256),
            "report_csv": report::csv(&rows),
            "totals": report::totals(&rows),
        }),
    )?;

    let renewed = std::fs::read_to_string(out.join("renewal-response-renewed-v1.json"))?;
    let envelope = Envelope::parse(
        renewed.as_bytes(),
        leasehold::format::DocumentKind::RenewalResponse,
    )?;
    let mut body: RenewalResponseBody = envelope.decode_body()?;
    body.audit = Some(AuditCall {
        audit_id: audit_id.into(),
        from,
        to,
    });
    let issuer = keyfile::read_secret_key(&out.join("issuer.key"))?;
    std::fs::write(
        out.join("renewal-response-audit-v1.json"),
        sign_response(&issuer, Some(&envelope.chain[0]), &body).render(),
    )?;
    Ok(())
}
