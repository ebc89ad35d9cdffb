//! The vectors in docs/vectors re-derived from docs/FORMATS.md's rules alone: this file
//! uses no leasehold code, only general libraries (JSON parsing, SHA-256, Ed25519,
//! HPKE), the way an independent verifier would be written from the text. Each rule
//! checked here is quoted from the section it comes from; when a vector and the text
//! disagree, one of them is wrong.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/vectors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap()
}

fn text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap()
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn b64_32(v: &Value) -> [u8; 32] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap();
    assert_eq!(s, s.to_lowercase(), "Hex is lowercase");
    hex::decode(s).unwrap()
}

// "Canonical JSON": serde_json's compact writer, spelled out.

fn canonical_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// "the shortest decimal that reads back as the same IEEE-754 double. When 10⁻⁵ ≤ x <
/// 10¹⁶ it is written positionally with at least one digit after the point; otherwise as
/// `d` or `d.ddd`, `e`, the exponent's sign (`+` or `-`) and its digits without leading
/// zeros".
fn canonical_float(x: f64) -> String {
    let sci = format!("{x:e}"); // shortest round-trip digits: "2.5e16", "1e-6", "2e0"
    let (mantissa, exponent) = sci.split_once('e').unwrap();
    let exponent: i32 = exponent.parse().unwrap();
    if (1e-5..1e16).contains(&x.abs()) {
        let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
        let point = exponent + 1; // digits before the decimal point
        let (int, frac) = if point <= 0 {
            ("0".to_string(), "0".repeat(-point as usize) + &digits)
        } else if point as usize >= digits.len() {
            (
                digits.clone() + &"0".repeat(point as usize - digits.len()),
                String::new(),
            )
        } else {
            (
                digits[..point as usize].to_string(),
                digits[point as usize..].to_string(),
            )
        };
        let frac = if frac.is_empty() {
            "0".to_string()
        } else {
            frac
        };
        format!("{}{int}.{frac}", if x < 0.0 { "-" } else { "" })
    } else {
        format!("{mantissa}e{exponent:+}")
    }
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_u64() {
            Some(u) => out.push_str(&u.to_string()),
            None => out.push_str(&canonical_float(n.as_f64().unwrap())),
        },
        Value::String(s) => canonical_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (k, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_string(k, out);
                out.push(':');
                canonical(item, out);
            }
            out.push('}');
        }
    }
}

fn canonical_text(v: &Value) -> String {
    let mut s = String::new();
    canonical(v, &mut s);
    s
}

#[test]
fn the_float_rule_gives_the_documented_examples() {
    for (x, written) in [
        (2.0, "2.0"),
        (0.25, "0.25"),
        (0.00001, "0.00001"),
        (1e-6, "1e-6"),
        (2.5e16, "2.5e+16"),
        (0.10000000149011612, "0.10000000149011612"),
    ] {
        assert_eq!(canonical_float(x), written);
        // The same as what serde_json writes (the text names it as the reference).
        assert_eq!(serde_json::to_string(&x).unwrap(), written);
    }
}

/// "Every time … `YYYY-MM-DDTHH:MM:SS`, then, only when the sub-second part is not
/// zero, `.` and 3, 6 or 9 digits (the fewest of these that hold it exactly), then `Z`".
fn check_time(s: &str, whole_seconds: bool) -> DateTime<Utc> {
    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(s).unwrap().into();
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    assert_eq!(s, format!("{base}{fraction}Z"), "canonical time");
    if whole_seconds {
        assert_eq!(nanos, 0, "{s}: whole seconds");
    }
    t
}

// "Signed documents".

/// "Domain tags, NUL-terminated".
fn domain(kind: &str) -> String {
    let name = match kind {
        "issuer-certificate" => "issuer certificate".to_string(),
        other => other.replace('-', " "),
    };
    format!("leasehold {name}\0")
}

/// Body fields in the order the text lists them, per kind.
fn documented_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "license" => &[
            "version",
            "license_id",
            "serial",
            "licensee",
            "issued_at",
            "not_before",
            "expires_at",
            "grace_seconds",
            "node",
            "model",
            "caps",
            "features",
            "renewal",
            "content_key",
            "watermark",
            "output_filter",
            "extensions",
        ],
        "issuer-certificate" => &[
            "version",
            "issuer_key",
            "orgs",
            "models",
            "not_before",
            "not_after",
            "max_lease_seconds",
        ],
        "enrollment" => &[
            "version",
            "node_id",
            "signing_key",
            "unwrap_key",
            "unwrap_suite",
            "created_at",
            "hardware",
            "declared_use",
            "request",
            "tpm_rollbacks",
        ],
        "node-state" => &["version", "node_id", "high_water", "licenses", "tpm"],
        "renewal-request" => &[
            "version", "node_id", "node_key", "model_id", "license", "nonce", "sent_at", "usage",
        ],
        "renewal-response" => &[
            "version",
            "node_id",
            "request_nonce",
            "server_time",
            "decision",
            "audit",
        ],
        "audit-answer" => &[
            "version",
            "node_id",
            "audit_id",
            "from",
            "to",
            "made_at",
            "first_seq",
            "last_seq",
            "records_bytes",
            "records_sha256",
        ],
        "ledger-head" => &["version", "node_id", "seq", "hash", "at"],
        "attestation" => &[
            "version",
            "node_id",
            "at",
            "license_id",
            "serial",
            "licensee",
            "model_id",
            "phase",
            "expires_at",
            "grace_ends",
            "ledger_seq",
            "ledger_head",
            "totals",
        ],
        other => panic!("no field list for {other}"),
    }
}

/// The fields present are the documented ones, in the documented order.
/// "`node`" of a license body, fields in order.
const LICENSE_NODE_FIELDS: &[&str] = &[
    "node_id",
    "signing_key",
    "unwrap_key",
    "unwrap_suite",
    "hardware",
];

/// "`usage`" of renewal requests and checkpoint reports, fields in order.
const USAGE_FIELDS: &[&str] = &[
    "since",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "ledger",
    "tpm_rollbacks",
];

fn check_order(what: &str, fields: &Map<String, Value>, documented: &[&str]) {
    let present: Vec<&str> = fields.keys().map(String::as_str).collect();
    let expected: Vec<&str> = documented
        .iter()
        .copied()
        .filter(|f| fields.contains_key(*f))
        .collect();
    assert_eq!(present, expected, "{what}: fields and their order");
}

/// "Canonical form of the envelope", written out from its parts.
fn render_envelope(v: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let o = v.as_object().unwrap();
    let mut lines = vec![
        format!("{pad}  \"leasehold\": {}", canonical_text(&o["leasehold"])),
        format!("{pad}  \"body\": {}", canonical_text(&o["body"])),
        format!("{pad}  \"signer\": {}", canonical_text(&o["signer"])),
        format!("{pad}  \"signature\": {}", canonical_text(&o["signature"])),
    ];
    if let Some(chain) = o.get("chain") {
        let items: Vec<String> = chain
            .as_array()
            .unwrap()
            .iter()
            .map(|e| render_envelope(e, indent + 4))
            .collect();
        assert!(!items.is_empty(), "\"chain\": [] is not canonical");
        lines.push(format!(
            "{pad}  \"chain\": [\n{}\n{pad}  ]",
            items.join(",\n")
        ));
    }
    format!("{pad}{{\n{}\n{pad}}}", lines.join(",\n"))
}

/// Check a signed document: the file is its canonical rendering, the body is canonical
/// JSON with the documented fields in order, the signature verifies under the kind's
/// domain tag (strictly), and so does each chain element's. Returns the body.
fn check_signed(name: &str, expected_kind: &str) -> Value {
    check_signed_bytes(name, &read(name), expected_kind)
}

fn check_signed_bytes(name: &str, bytes: &[u8], expected_kind: &str) -> Value {
    let file = std::str::from_utf8(bytes).unwrap();
    let v: Value = serde_json::from_str(file).unwrap();
    assert_eq!(v["leasehold"], expected_kind, "{name}");
    assert_eq!(
        format!("{}\n", render_envelope(&v, 0)),
        file,
        "{name}: canonical form"
    );
    check_signature(name, &v);
    if let Some(chain) = v.get("chain") {
        for cert in chain.as_array().unwrap() {
            assert_eq!(cert["leasehold"], "issuer-certificate");
            assert!(cert.get("chain").is_none());
            check_signature(name, cert);
            // "its `issuer_key` MUST equal the license's `signer`"
            assert_eq!(cert["body"]["issuer_key"], v["signer"], "{name}");
        }
    }
    v["body"].clone()
}

fn check_signature(name: &str, v: &Value) {
    let kind = v["leasehold"].as_str().unwrap();
    let body = canonical_text(&v["body"]);
    check_order(
        &format!("{name} {kind}"),
        v["body"].as_object().unwrap(),
        documented_fields(kind),
    );
    assert_eq!(v["body"]["version"], 1);
    let key = VerifyingKey::from_bytes(&b64_32(&v["signer"])).unwrap();
    assert!(!key.is_weak(), "a key of small order MUST be refused");
    let signature: [u8; 64] = B64
        .decode(v["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let message = [domain(kind).as_bytes(), body.as_bytes()].concat();
    key.verify_strict(&message, &Signature::from_bytes(&signature))
        .unwrap_or_else(|e| panic!("{name}: {kind} signature: {e}"));
}

/// "the **key id** of an Ed25519 public key: the first 8 bytes of SHA-256 of its 32
/// bytes, 16 hex".
fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&sha256(&[key])[..8])
}

/// "A reader MUST: split into lines …, trim …, skip empty lines and lines starting with
/// `#` …, and require exactly one remaining line … `KIND:BASE64`".
fn key_file(name: &str, kind: &str) -> [u8; 32] {
    let t = text(name);
    let lines: Vec<&str> = t
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.len(), 1, "{name}");
    let (k, b64) = lines[0].split_once(':').unwrap();
    assert_eq!(k, kind, "{name}");
    B64.decode(b64).unwrap().try_into().unwrap()
}

fn node_signing_key() -> [u8; 32] {
    let seed = key_file("node/node.key", "ed25519-secret");
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
}

#[test]
fn signed_documents_rederive_from_the_text() {
    let node_key = node_signing_key();
    assert_eq!(node_key, key_file("node/node.pub", "ed25519-public"));
    let node_id = key_id(&node_key);
    for (name, kind) in [
        ("license-v1.license", "license"),
        ("license-issuer-v1.license", "license"),
        ("license-full-v1.license", "license"),
        ("license-tournament-v1.license", "license"),
        ("license-p256-v1.license", "license"),
        ("issuer-v1.cert", "issuer-certificate"),
        ("enrollment-v1.enroll", "enrollment"),
        ("enrollment-tpm-v1.enroll", "enrollment"),
        ("node-state-v1.json", "node-state"),
        ("node-state-v1-licenses.json", "node-state"),
        ("node-state-v1-tpm.json", "node-state"),
        ("renewal-request-v1.json", "renewal-request"),
        ("renewal-request-tpm-v1.json", "renewal-request"),
        ("renewal-response-renewed-v1.json", "renewal-response"),
        ("renewal-response-pending-v1.json", "renewal-response"),
        ("renewal-response-refused-v1.json", "renewal-response"),
        ("ledger-v1.head", "ledger-head"),
        ("attestation-v1.json", "attestation"),
    ] {
        let body = check_signed(name, kind);
        let v: Value = serde_json::from_slice(&read(name)).unwrap();
        // Node-signed kinds: the node's key, and its key id as node_id.
        if [
            "enrollment",
            "node-state",
            "renewal-request",
            "ledger-head",
            "attestation",
        ]
        .contains(&kind)
        {
            assert_eq!(b64_32(&v["signer"]), node_key, "{name}");
            assert_eq!(body["node_id"], node_id.as_str(), "{name}");
        }
        if kind == "renewal-response" {
            assert_eq!(body["node_id"], node_id.as_str());
            check_time(body["server_time"].as_str().unwrap(), false);
        }
    }
}

#[test]
fn the_tpm_node_state_rederives_from_the_text() {
    let body = check_signed("node-state-v1-tpm.json", "node-state");
    let mark = body["tpm"].as_object().unwrap();
    check_order("tpm", mark, &["nv_index", "counter", "clock_ms"]);
    assert_eq!(mark["nv_index"], 0x0138_1234);
    assert_eq!(mark["counter"], 42);
    assert_eq!(mark["clock_ms"], 86_400_000);
    assert_eq!(body["high_water"], "2026-01-01T00:00:00Z");
    // "Between writes": the worked example, one hour of TPM Clock later.
    let elapsed: u64 = (86_400_000 + 3_600_000) - mark["clock_ms"].as_u64().unwrap();
    let credited_ms = elapsed * 17 / 20;
    assert_eq!(credited_ms, 3_060_000);
    let floor_seconds = credited_ms / 1000; // whole seconds, rounded down
    assert_eq!(
        (floor_seconds / 60, floor_seconds % 60),
        (51, 0),
        "2026-01-01T00:51:00Z"
    );
}

#[test]
fn license_fields_rederive_from_the_text() {
    let node_key = node_signing_key();
    let body = check_signed("license-full-v1.license", "license");
    // Times: whole seconds in licenses.
    for f in ["issued_at", "not_before", "expires_at"] {
        check_time(body[f].as_str().unwrap(), true);
    }
    assert_eq!(b64_32(&body["node"]["signing_key"]), node_key);
    check_order(
        "caps",
        body["caps"].as_object().unwrap(),
        &[
            "requests_per_day",
            "requests_per_month",
            "tokens_per_day",
            "tokens_per_month",
            "concurrent",
            "context",
        ],
    );
    check_order(
        "node",
        body["node"].as_object().unwrap(),
        LICENSE_NODE_FIELDS,
    );
    check_order(
        "model",
        body["model"].as_object().unwrap(),
        &[
            "model_id",
            "sealed_header_sha256",
            "plaintext_sha256",
            "plaintext_len",
            "key_id",
        ],
    );
    check_order(
        "watermark",
        body["watermark"].as_object().unwrap(),
        &["gamma", "delta", "context", "key"],
    );
    // "`features` … Known: `watermark` (listed exactly when the `watermark` field is
    // present) and `output-filter`"
    assert_eq!(
        body["features"],
        serde_json::json!(["output-filter", "watermark"])
    );
    assert_eq!(
        body["content_key"]["suite"],
        "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
    );

    // "Content key wrapping": HPKE base mode to node.unwrap_key, info = "leasehold
    // content key v1\0" ‖ license_id ‖ "\0" ‖ model_id, empty AAD.
    use hpke::{
        aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem, OpModeR,
    };
    let secret = key_file("node/unwrap.key", "x25519-secret");
    let private = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&secret).unwrap();
    let license_id = body["license_id"].as_str().unwrap();
    let model_id = body["model"]["model_id"].as_str().unwrap();
    let open = |wrapped: &Value, tag: &str| {
        let enc =
            <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&b64_32(&wrapped["encapsulated"]))
                .unwrap();
        let info = format!("{tag}{license_id}\0{model_id}");
        let ciphertext = B64.decode(wrapped["ciphertext"].as_str().unwrap()).unwrap();
        hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &private,
            &enc,
            info.as_bytes(),
            &ciphertext,
            b"",
        )
        .unwrap()
    };
    let content_key = open(&body["content_key"], "leasehold content key v1\0");
    let sealed: Value = serde_json::from_slice(&read("sealed-v1.json")).unwrap();
    assert_eq!(
        B64.encode(&content_key),
        sealed["content_key"].as_str().unwrap()
    );
    // "content key id: the first 16 bytes of SHA-256("leasehold content key id v1\0" ‖ key)"
    let key_id = &sha256(&[b"leasehold content key id v1\0", &content_key])[..16];
    assert_eq!(
        hex::encode(key_id),
        body["model"]["key_id"].as_str().unwrap()
    );
    let watermark_key = open(&body["watermark"]["key"], "leasehold watermark key v1\0");
    let wm: Value = serde_json::from_slice(&read("watermark-v1.json")).unwrap();
    assert_eq!(hex::encode(&watermark_key), wm["key"].as_str().unwrap());

    // "Hardware binding": e = SHA-256("leasehold hardware v1\0" ‖ enrollment_salt ‖ kind
    // ‖ "\0" ‖ v), then SHA-256("leasehold hardware license v1\0" ‖ license_salt ‖ e).
    let hardware = &body["node"]["hardware"];
    let enrollment_salt = hex_bytes(&hardware["enrollment_salt"]);
    let license_salt = hex_bytes(&hardware["license_salt"]);
    let components = hardware["components"].as_array().unwrap();
    for (kind, value) in [
        ("machine-id", "00112233445566778899aabbccddeeff"),
        ("cpu-model", "Vector CPU"),
        ("memory-class", "16GiB"),
        ("hostname", "vector-node"),
    ] {
        let e = sha256(&[
            b"leasehold hardware v1\0",
            &enrollment_salt,
            kind.as_bytes(),
            b"\0",
            value.as_bytes(),
        ]);
        let h = hex::encode(sha256(&[
            b"leasehold hardware license v1\0",
            &license_salt,
            &e,
        ]));
        let component = components.iter().find(|c| c["kind"] == kind).unwrap();
        assert!(
            component["hashes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == h.as_str()),
            "{kind}"
        );
    }
}

#[test]
fn p256_license_unwraps_from_the_text() {
    // "Content key wrapping": DHKEM(P-256, HKDF-SHA256) when node.unwrap_suite names it;
    // enc and the recipient key are uncompressed SEC1 points.
    use hpke::{
        aead::AesGcm256, kdf::HkdfSha256, kem::DhP256HkdfSha256, Deserializable, Kem, OpModeR,
    };
    let suite = "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";
    let body = check_signed("license-p256-v1.license", "license");
    check_order(
        "node",
        body["node"].as_object().unwrap(),
        LICENSE_NODE_FIELDS,
    );
    assert_eq!(body["node"]["unwrap_suite"], suite);
    assert_eq!(body["content_key"]["suite"], suite);
    let params: Value = serde_json::from_slice(&read("license-p256-v1.json")).unwrap();
    let point = B64
        .decode(body["node"]["unwrap_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 0x04);
    assert_eq!(
        hex::encode(&point),
        params["unwrap_point_hex"].as_str().unwrap()
    );
    let private =
        <DhP256HkdfSha256 as Kem>::PrivateKey::from_bytes(&hex_bytes(&params["unwrap_secret_hex"]))
            .unwrap();
    let enc = B64
        .decode(body["content_key"]["encapsulated"].as_str().unwrap())
        .unwrap();
    assert_eq!(enc.len(), 65);
    let info = format!(
        "leasehold content key v1\0{}\0{}",
        body["license_id"].as_str().unwrap(),
        body["model"]["model_id"].as_str().unwrap()
    );
    let content_key = hpke::single_shot_open::<AesGcm256, HkdfSha256, DhP256HkdfSha256>(
        &OpModeR::Base,
        &private,
        &<DhP256HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc).unwrap(),
        info.as_bytes(),
        &B64.decode(body["content_key"]["ciphertext"].as_str().unwrap())
            .unwrap(),
        b"",
    )
    .unwrap();
    let sealed: Value = serde_json::from_slice(&read("sealed-v1.json")).unwrap();
    assert_eq!(
        B64.encode(&content_key),
        sealed["content_key"].as_str().unwrap()
    );
}

#[test]
fn renewal_vectors_rederive_from_the_text() {
    let request = check_signed("renewal-request-v1.json", "renewal-request");
    assert_eq!(b64_32(&request["node_key"]), node_signing_key());
    check_time(request["sent_at"].as_str().unwrap(), true);
    check_time(request["usage"]["since"].as_str().unwrap(), true);
    check_order("usage", request["usage"].as_object().unwrap(), USAGE_FIELDS);
    // A TPM node's request: the same, with its count of refused rolled-back states.
    let tpm = check_signed("renewal-request-tpm-v1.json", "renewal-request");
    check_order("usage", tpm["usage"].as_object().unwrap(), USAGE_FIELDS);
    assert_eq!(tpm["usage"]["tpm_rollbacks"], 8);
    assert!(
        request["usage"].get("tpm_rollbacks").is_none(),
        "omitted on file-key nodes"
    );
    let mut without = tpm["usage"].clone();
    without.as_object_mut().unwrap().remove("tpm_rollbacks");
    assert_eq!(without, request["usage"]);
    let enrollment = check_signed("enrollment-tpm-v1.enroll", "enrollment");
    assert_eq!(enrollment["tpm_rollbacks"], 7);
    assert_eq!(
        enrollment["unwrap_suite"],
        "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
    );
    check_order(
        "usage.ledger",
        request["usage"]["ledger"].as_object().unwrap(),
        &["ledger_id", "seq", "hash", "reported"],
    );
    let ledger: Value = serde_json::from_slice(&read("usage-v1.json")).unwrap();
    assert_eq!(request["usage"]["ledger"]["ledger_id"], ledger["ledger_id"]);
    // "`since` (the time of the ledger's genesis record, whole seconds …)"
    let genesis: Value =
        serde_json::from_str(text("usage-v1.ledger").lines().next().unwrap()).unwrap();
    let genesis_at = check_time(genesis["body"]["at"].as_str().unwrap(), false);
    assert_eq!(
        request["usage"]["since"].as_str().unwrap(),
        genesis_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    for status in ["renewed", "pending", "refused"] {
        let name = format!("renewal-response-{status}-v1.json");
        let response = check_signed(&name, "renewal-response");
        assert_eq!(
            response["request_nonce"], request["nonce"],
            "echoes the nonce"
        );
        assert_eq!(response["decision"]["status"], status);
        let fields: &[&str] = match status {
            "renewed" => &["status", "license"],
            "pending" => &["status", "enrollment_id", "message"],
            _ => &["status", "reason", "message"],
        };
        check_order(&name, response["decision"].as_object().unwrap(), fields);
        if status == "renewed" {
            // "the complete license file as a JSON string, including its final `\n`"
            let license = response["decision"]["license"].as_str().unwrap();
            assert!(license.ends_with("}\n"));
            check_signed_bytes("renewed license", license.as_bytes(), "license");
        }
        if status == "pending" {
            let id = response["decision"]["enrollment_id"].as_str().unwrap();
            assert!(
                id.len() == 16
                    && id
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }
}

/// "Usage ledger": every line re-encoded, re-hashed and chained; checkpoints verified and
/// their totals re-added; the head and the attestation named from it.
#[test]
fn ledger_vector_rederives_from_the_text() {
    let node_key = node_signing_key();
    let verifying = VerifyingKey::from_bytes(&node_key).unwrap();
    let file = text("usage-v1.ledger");
    assert!(file.ends_with('\n') && !file.contains('\r'));
    let entry_fields: &[(&str, &[&str])] = &[
        ("genesis", &["type", "node_id"]),
        (
            "request",
            &[
                "type",
                "request_id",
                "license_id",
                "model_id",
                "prompt_tokens",
                "completion_tokens",
                "outcome",
                "client_key",
                "prompt_sha256",
                "filter_rule",
            ],
        ),
        (
            "admitted",
            &[
                "type",
                "request_id",
                "license_id",
                "model_id",
                "prompt_tokens",
                "client_key",
                "prompt_sha256",
            ],
        ),
        (
            "completed",
            &[
                "type",
                "request_id",
                "completion_tokens",
                "outcome",
                "filter_rule",
            ],
        ),
        ("checkpoint", &["type", "totals"]),
        ("reported", &["type", "seq", "hash"]),
        (
            "recovered",
            &["type", "torn_bytes", "torn_sha256", "moved_to"],
        ),
    ];
    let (mut prev, mut last_at) = ([0u8; 32], None::<DateTime<Utc>>);
    let mut totals = [0u64; 3];
    let mut checkpoints: Vec<(u64, [u8; 32])> = Vec::new();
    let mut seen_types = std::collections::BTreeSet::new();
    let mut records = 0u64;
    for (i, line) in file.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let o = v.as_object().unwrap();
        let body = &v["body"];
        let body_text = canonical_text(body);
        // Line fields in order `body`, `hash`, `signature` (only on checkpoints).
        let mut rebuilt = format!(
            "{{\"body\":{body_text},\"hash\":{}",
            canonical_text(&v["hash"])
        );
        let entry = &body["entry"];
        let kind = entry["type"].as_str().unwrap();
        seen_types.insert(kind.to_string());
        assert_eq!(
            o.contains_key("signature"),
            kind == "checkpoint",
            "line {i}"
        );
        if let Some(sig) = o.get("signature") {
            rebuilt.push_str(&format!(",\"signature\":{}", canonical_text(sig)));
        }
        rebuilt.push('}');
        assert_eq!(rebuilt, line, "line {i}: canonical");
        check_order(
            "record body",
            body.as_object().unwrap(),
            &["seq", "prev", "at", "entry"],
        );
        let documented = entry_fields.iter().find(|(t, _)| *t == kind).unwrap().1;
        check_order(kind, entry.as_object().unwrap(), documented);
        assert_eq!(body["seq"], i as u64);
        assert_eq!(hex_bytes(&body["prev"]), prev, "line {i}: prev");
        let hash = sha256(&[b"leasehold ledger record\0", body_text.as_bytes()]);
        assert_eq!(hex_bytes(&v["hash"]), hash, "line {i}: hash");
        let at = check_time(body["at"].as_str().unwrap(), false);
        assert!(
            last_at.is_none_or(|last| at >= last),
            "line {i}: `at` MUST NOT decrease"
        );
        last_at = Some(at);
        let n = |f: &str| entry[f].as_u64().unwrap();
        match kind {
            "genesis" => {
                assert_eq!(i, 0);
                assert_eq!(entry["node_id"], key_id(&node_key).as_str());
            }
            "request" => {
                totals[0] += 1;
                totals[1] += n("prompt_tokens");
                totals[2] += n("completion_tokens");
            }
            "admitted" => {
                totals[0] += 1;
                totals[1] += n("prompt_tokens");
            }
            "completed" => totals[2] += n("completion_tokens"),
            "checkpoint" => {
                let t = &entry["totals"];
                check_order(
                    "totals",
                    t.as_object().unwrap(),
                    &["requests", "prompt_tokens", "completion_tokens"],
                );
                assert_eq!(
                    [
                        t["requests"].as_u64().unwrap(),
                        t["prompt_tokens"].as_u64().unwrap(),
                        t["completion_tokens"].as_u64().unwrap()
                    ],
                    totals,
                    "line {i}: checkpoint totals"
                );
                let sig: [u8; 64] = B64
                    .decode(v["signature"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap();
                let message = [
                    b"leasehold ledger checkpoint\0".as_slice(),
                    body_text.as_bytes(),
                ]
                .concat();
                verifying
                    .verify_strict(&message, &Signature::from_bytes(&sig))
                    .unwrap();
                checkpoints.push((i as u64, hash));
            }
            "reported" => {
                let named = (
                    n("seq"),
                    <[u8; 32]>::try_from(hex_bytes(&entry["hash"])).unwrap(),
                );
                assert!(
                    checkpoints.contains(&named),
                    "line {i}: reported names an earlier checkpoint"
                );
            }
            _ => {}
        }
        if let Some(outcome) = entry.get("outcome") {
            seen_types.insert(outcome.as_str().unwrap().to_string());
            assert_eq!(entry.get("filter_rule").is_some(), outcome == "filtered");
        }
        prev = hash;
        records += 1;
    }
    for kind in [
        "genesis",
        "request",
        "admitted",
        "completed",
        "checkpoint",
        "reported",
        "recovered",
        "ok",
        "cancelled",
        "filtered",
    ] {
        assert!(seen_types.contains(kind), "the vector holds {kind}");
    }
    let summary: Value = serde_json::from_slice(&read("usage-v1.json")).unwrap();
    assert_eq!(summary["records"], records);
    assert_eq!(summary["head_hash"].as_str().unwrap(), hex::encode(prev));

    // The head names the last checkpoint; whole seconds.
    let head = check_signed("ledger-v1.head", "ledger-head");
    let (seq, hash) = *checkpoints.last().unwrap();
    assert_eq!(
        (head["seq"].as_u64().unwrap(), hex_bytes(&head["hash"])),
        (seq, hash.to_vec())
    );
    check_time(head["at"].as_str().unwrap(), true);

    // The attestation: "`ledger_seq` and `ledger_head` … the last durable ledger record,
    // of any type", totals "over every record up to and including `ledger_seq`".
    let attestation = check_signed("attestation-v1.json", "attestation");
    assert_eq!(attestation["ledger_seq"], records - 1);
    assert_eq!(
        attestation["ledger_head"].as_str().unwrap(),
        hex::encode(prev)
    );
    let t = &attestation["totals"];
    assert_eq!(
        [
            t["requests"].as_u64().unwrap(),
            t["prompt_tokens"].as_u64().unwrap(),
            t["completion_tokens"].as_u64().unwrap()
        ],
        totals
    );

    // "prompt_sha256 … SHA-256 of "leasehold prompt\0" ‖ salt ‖ kind ‖ parts", each
    // part its byte length (u64 little-endian) then its UTF-8 bytes.
    let salt = read("node/ledger.salt");
    assert_eq!(salt.len(), 32);
    for case in summary["prompt_hashes"].as_array().unwrap() {
        let mut encoded = Vec::new();
        for part in case["parts"].as_array().unwrap() {
            let p = part.as_str().unwrap().as_bytes();
            encoded.extend_from_slice(&(p.len() as u64).to_le_bytes());
            encoded.extend_from_slice(p);
        }
        let kind = format!("{}\0", case["kind"].as_str().unwrap());
        let h = sha256(&[b"leasehold prompt\0", &salt, kind.as_bytes(), &encoded]);
        assert_eq!(case["prompt_sha256"].as_str().unwrap(), hex::encode(h));
        assert!(file.contains(&hex::encode(h)));
    }
}

/// "Watermark": key = SHA-256("leasehold watermark key v1\0" ‖ signer seed ‖ license_id
/// ‖ "\0" ‖ model_id); seed = first 8 bytes (LE) of SHA-256("leasehold watermark\0" ‖
/// key ‖ previous `context` token ids as i32 LE); green when splitmix64(seed ^ t) <
/// ⌊γ·2^64⌋.
#[test]
fn watermark_vector_rederives_from_the_text() {
    let v: Value = serde_json::from_slice(&read("watermark-v1.json")).unwrap();
    let seed = hex_bytes(&v["signer_seed"]);
    let license_id = v["license_id"].as_str().unwrap();
    let model_id = v["model_id"].as_str().unwrap();
    let key = sha256(&[
        b"leasehold watermark key v1\0",
        &seed,
        license_id.as_bytes(),
        b"\0",
        model_id.as_bytes(),
    ]);
    assert_eq!(hex::encode(key), v["key"].as_str().unwrap());
    let gamma = v["gamma"].as_f64().unwrap();
    let context = v["context"].as_u64().unwrap() as usize;
    let threshold = (gamma * 2f64.powi(64)).floor() as u64;
    let splitmix64 = |mut x: u64| {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    for step in v["steps"].as_array().unwrap() {
        let previous: Vec<i32> = serde_json::from_value(step["previous"].clone()).unwrap();
        let recent = &previous[previous.len().saturating_sub(context)..];
        let encoded: Vec<u8> = recent.iter().flat_map(|t| t.to_le_bytes()).collect();
        let digest = sha256(&[b"leasehold watermark\0", &key, &encoded]);
        let seed = u64::from_le_bytes(digest[..8].try_into().unwrap());
        assert_eq!(seed.to_string(), step["seed"].as_str().unwrap());
        let token = step["token"].as_i64().unwrap() as u32;
        let green = splitmix64(seed ^ u64::from(token)) < threshold;
        assert_eq!(green, step["green"].as_bool().unwrap(), "{step}");
    }
}

/// "Watermark", tournament: the key as for KGW; seed = first 8 bytes (LE) of
/// SHA-256("leasehold watermark tournament\0" ‖ key ‖ previous `context` ids as i32 LE);
/// g_l(t) = bit l−1 of splitmix64(seed ^ t); one round p(t) ← p(t)(1 + g_l(t) − G_l);
/// detection counts the 1s of each distinct context's token, p = P(Bin(N, ½) ≥ ones).
#[test]
fn tournament_watermark_vector_rederives_from_the_text() {
    let body = check_signed("license-tournament-v1.license", "license");
    let mark = body["watermark"].as_object().unwrap();
    check_order("watermark", mark, &["scheme", "depth", "context", "key"]);
    assert_eq!(mark["scheme"], "tournament");
    assert_eq!(
        body["features"],
        serde_json::json!(["watermark", "watermark-tournament"])
    );

    let v: Value = serde_json::from_slice(&read("watermark-tournament-v1.json")).unwrap();
    assert_eq!(v["license_id"], body["license_id"]);
    assert_eq!(
        (v["depth"].clone(), v["context"].clone()),
        (mark["depth"].clone(), mark["context"].clone())
    );
    let seed = hex_bytes(&v["signer_seed"]);
    let key = sha256(&[
        b"leasehold watermark key v1\0",
        &seed,
        v["license_id"].as_str().unwrap().as_bytes(),
        b"\0",
        v["model_id"].as_str().unwrap().as_bytes(),
    ]);
    assert_eq!(hex::encode(key), v["key"].as_str().unwrap());
    let depth = v["depth"].as_u64().unwrap() as u32;
    let context = v["context"].as_u64().unwrap() as usize;
    let splitmix64 = |mut x: u64| {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    let step_seed = |previous: &[i64]| {
        let recent = &previous[previous.len().saturating_sub(context)..];
        let encoded: Vec<u8> = recent
            .iter()
            .flat_map(|t| (*t as i32).to_le_bytes())
            .collect();
        let digest = sha256(&[b"leasehold watermark tournament\0", &key, &encoded]);
        u64::from_le_bytes(digest[..8].try_into().unwrap())
    };
    let g = |seed: u64, token: u32, l: u32| (splitmix64(seed ^ u64::from(token)) >> l) & 1;
    for step in v["steps"].as_array().unwrap() {
        let previous: Vec<i64> = serde_json::from_value(step["previous"].clone()).unwrap();
        let seed = step_seed(&previous);
        assert_eq!(seed.to_string(), step["seed"].as_str().unwrap());
        let token = step["token"].as_u64().unwrap() as u32;
        let bits: Vec<u64> = (0..depth).map(|l| g(seed, token, l)).collect();
        assert_eq!(serde_json::json!(bits), step["g"], "{step}");
    }

    // The tournament of one step, in f64.
    let t = &v["tournament"];
    let previous: Vec<i64> = serde_json::from_value(t["previous"].clone()).unwrap();
    let seed = step_seed(&previous);
    let mut p: Vec<f64> = t["p"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for l in 0..depth {
        let total: f64 = p.iter().sum();
        let big_g: f64 = p
            .iter()
            .enumerate()
            .map(|(i, p)| p * g(seed, i as u32, l) as f64)
            .sum::<f64>()
            / total;
        for (i, p) in p.iter_mut().enumerate() {
            *p *= 1.0 + g(seed, i as u32, l) as f64 - big_g;
        }
    }
    for (ours, written) in p.iter().zip(t["after"].as_array().unwrap()) {
        let written: f64 = written.as_str().unwrap().parse().unwrap();
        assert!((ours - written).abs() < 2e-6, "{p:?} vs {}", t["after"]);
    }

    // Detection: distinct contexts only, the binomial tail summed term by term.
    let d = &v["detection"];
    let tokens: Vec<i64> = serde_json::from_value(d["tokens"].clone()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut scored, mut ones) = (0u64, 0u64);
    for i in context..tokens.len() {
        if !seen.insert(tokens[i - context..i].to_vec()) {
            continue;
        }
        let seed = step_seed(&tokens[..i]);
        scored += 1;
        ones += (0..depth)
            .map(|l| g(seed, tokens[i] as u32, l))
            .sum::<u64>();
    }
    let n = scored * u64::from(depth);
    assert_eq!(
        (
            d["scored"].as_u64(),
            d["trials"].as_u64(),
            d["ones"].as_u64()
        ),
        (Some(scored), Some(n), Some(ones))
    );
    let choose = |n: u64, k: u64| (1..=k).fold(1f64, |c, i| c * (n - k + i) as f64 / i as f64);
    let tail: f64 = (ones..=n).map(|k| choose(n, k)).sum::<f64>() / 2f64.powi(n as i32);
    let written: f64 = d["p_value"].as_str().unwrap().parse().unwrap();
    assert!(
        (tail - written).abs() <= 1e-6 * written,
        "{tail} vs {written}"
    );
}

/// "Sealed model container": the header rebuilt field by field from sealed-v1.json.
#[test]
fn sealed_header_rederives_from_the_text() {
    let v: Value = serde_json::from_slice(&read("sealed-v1.json")).unwrap();
    let plain = read("sealed-v1.plain");
    let sealed = read("sealed-v1.sealed");
    let model_id = v["model_id"].as_str().unwrap().as_bytes();
    let mut header = b"LHSEALED".to_vec();
    header.extend(1u16.to_le_bytes());
    header.extend((83 + model_id.len() as u32).to_le_bytes());
    header.extend((v["segment_size"].as_u64().unwrap() as u32).to_le_bytes());
    header.extend((plain.len() as u64).to_le_bytes());
    header.extend(sha256(&[&plain]));
    let key = B64.decode(v["content_key"].as_str().unwrap()).unwrap();
    header.extend(&sha256(&[b"leasehold content key id v1\0", &key])[..16]);
    header.extend(hex_bytes(&v["nonce_prefix"]));
    header.extend((model_id.len() as u16).to_le_bytes());
    header.extend(model_id);
    assert_eq!(hex::encode(&header), v["header_hex"].as_str().unwrap());
    assert_eq!(&sealed[..header.len()], &header[..]);
    let segment = v["segment_size"].as_u64().unwrap() as usize;
    let segments = plain.len().div_ceil(segment).max(1);
    assert_eq!(sealed.len(), header.len() + plain.len() + 16 * segments);

    // Segment i: AES-256-GCM, nonce = prefix ‖ i (u32 BE) ‖ last flag, AAD = SHA-256(header)
    // ‖ i (u64 BE) ‖ last flag.
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let digest = sha256(&[&header]);
    let mut offset = header.len();
    let mut out = Vec::new();
    for i in 0..segments {
        let last = u8::from(i + 1 == segments);
        let len = segment.min(plain.len() - i * segment) + 16;
        let mut nonce = hex_bytes(&v["nonce_prefix"]);
        nonce.extend((i as u32).to_be_bytes());
        nonce.push(last);
        let aad = [&digest[..], &(i as u64).to_be_bytes(), &[last]].concat();
        let mut buf = sealed[offset..offset + len].to_vec();
        let opened = cipher
            .open_in_place(
                Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        out.extend_from_slice(opened);
        offset += len;
    }
    assert_eq!(out, plain);
}

/// "Audit answer": the header up to the first `\n}\n` is a signed envelope naming the
/// records after it by length and SHA-256; the records are lines of the vector ledger
/// from a checkpoint dated before `from` to one dated at or after `to`. The renewal
/// response carrying the audit names the same period.
#[test]
fn audit_vectors_rederive_from_the_text() {
    let bytes = read("audit-answer-v1.audit");
    let end = bytes.windows(3).position(|w| w == b"\n}\n").unwrap() + 3;
    let header = check_signed_bytes("audit-answer-v1.audit", &bytes[..end], "audit-answer");
    assert_eq!(b64_32(&header_signer(&bytes[..end])), node_signing_key());
    assert_eq!(header["node_id"], key_id(&node_signing_key()));
    let records = &bytes[end..];
    assert_eq!(header["records_bytes"], records.len() as u64);
    assert_eq!(
        header["records_sha256"].as_str().unwrap(),
        hex::encode(sha256(&[records]))
    );
    let from = check_time(header["from"].as_str().unwrap(), true);
    let to = check_time(header["to"].as_str().unwrap(), true);
    check_time(header["made_at"].as_str().unwrap(), true);
    // The records are whole lines of the ledger, in order, first and last checkpoints.
    let ledger = text("usage-v1.ledger");
    let records = std::str::from_utf8(records).unwrap();
    assert!(records.ends_with('\n') && ledger.contains(records));
    let lines: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (&lines[0]["body"], &lines[lines.len() - 1]["body"]);
    assert_eq!(first["entry"]["type"], "checkpoint");
    assert_eq!(last["entry"]["type"], "checkpoint");
    assert_eq!(first["seq"], header["first_seq"]);
    assert_eq!(last["seq"], header["last_seq"]);
    assert!(check_time(first["at"].as_str().unwrap(), false) < from);
    assert!(check_time(last["at"].as_str().unwrap(), false) >= to);
    // Consecutive sequence numbers and a chain of hashes from the first line.
    for pair in lines.windows(2) {
        assert_eq!(
            pair[1]["body"]["seq"],
            pair[0]["body"]["seq"].as_u64().unwrap() + 1
        );
        assert_eq!(pair[1]["body"]["prev"], pair[0]["hash"]);
    }
    let expected: Value = serde_json::from_slice(&read("audit-answer-v1.json")).unwrap();
    for field in ["audit_id", "node_id", "from", "to", "first_seq", "last_seq"] {
        assert_eq!(header[field], expected[field], "{field}");
    }

    let response = check_signed("renewal-response-audit-v1.json", "renewal-response");
    assert_eq!(response["decision"]["status"], "renewed");
    let audit = response["audit"].as_object().unwrap();
    check_order("audit", audit, &["audit_id", "from", "to"]);
    assert_eq!(response["audit"]["audit_id"], header["audit_id"]);
    assert_eq!(response["audit"]["from"], header["from"]);
    assert_eq!(response["audit"]["to"], header["to"]);
    // The other responses carry none.
    let renewed = check_signed("renewal-response-renewed-v1.json", "renewal-response");
    assert!(renewed.get("audit").is_none());
}

/// The `signer` of an envelope's text.
fn header_signer(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes).unwrap()["signer"].clone()
}
