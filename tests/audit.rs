//! Audits against a real `license-server` process: the vendor requests one, a renewal
//! response carries it, an air-gapped node exports its answer (`leasehold audit export`)
//! and the vendor imports it (`admin audit import`). A hostile operator's answers (cut
//! short, forged with the node key over a rewritten ledger, signed by another key) are
//! refused, and the ones the node signed are kept as findings. The upload after a
//! renewal by a serving node is in tests/license_server.rs and tests/portal_browser.rs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::audit::{renew_reporting, report, request, signed_answer, write_requests};
use common::vendor::{ok, Node, Vendor};
use leasehold::ledger::record::{self, Entry, RecordBody};
use leasehold::ledger::Position;
use leasehold::node::{clock, NodeIdentity};
use serde_json::Value;

/// `admin audit import FILE --json`: (exit code, output).
fn import(vendor: &Vendor, file: &Path) -> (i32, Value) {
    let out = vendor.admin(&["--json", "audit", "import", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap_or_else(|_| {
            Value::String(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }),
    )
}

/// Rewrite the ledger as a hostile operator holding the node key would: drop the
/// request records `drop`, and re-chain and re-sign everything after (hashes and
/// checkpoint totals all consistent).
fn forge_ledger(identity: &NodeIdentity, drop: &[&str]) {
    let path = identity.dir().join(leasehold::ledger::LEDGER_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut prev = [0u8; 32];
    let mut seq = 0u64;
    let mut totals = leasehold::ledger::record::Totals::default();
    for line in text.lines() {
        let parsed = record::parse(line).unwrap();
        let mut entry = parsed.body.entry;
        if let Entry::Request { request_id, .. } = &entry {
            if drop.contains(&request_id.as_str()) {
                continue;
            }
        }
        match &mut entry {
            Entry::Checkpoint { totals: t } => *t = totals,
            Entry::Reported { .. } => continue,
            _ => {}
        }
        totals.add(&entry).unwrap();
        let body = RecordBody {
            seq,
            prev,
            at: parsed.body.at,
            entry,
        };
        let (line, hash) = record::encode(&body, Some(identity.signer()));
        out.push_str(&line);
        prev = hash;
        seq += 1;
    }
    std::fs::write(&path, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_air_gapped_answer_is_imported_and_hostile_answers_are_refused_and_flagged() {
    air_gapped_audit(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_audit_on_postgresql() {
    let Some(admin_url) = common::postgres::postgres_url() else {
        return;
    };
    let db = common::postgres::TempDatabase::create(&admin_url);
    air_gapped_audit(Some(db.url())).await;
}

async fn air_gapped_audit(db: Option<String>) {
    let mut vendor = Vendor::new(db, &[]);
    vendor.start();
    vendor.entitle(1, "50m", "10m");
    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    let node_id = identity.public().node_id();

    // Usage before the audit, reported at a renewal (the server holds that checkpoint).
    let first = write_requests(&identity, None, 0..3).await;
    let answer = renew_reporting(&vendor.url(), &identity, &first).await;
    assert!(answer.get("audit").is_none(), "no audit yet: {answer}");
    let from = "2020-01-01T00:00:00Z";
    // More usage, then the period ends.
    write_requests(&identity, Some(&first), 3..6).await;
    std::thread::sleep(Duration::from_millis(1100));
    let to = leasehold::format::time::rfc3339(clock::system_now());
    std::thread::sleep(Duration::from_millis(1100));
    let audit = vendor.admin_json(&[
        "audit",
        "request",
        "--org",
        common::vendor::ORG,
        "--from",
        from,
        "--to",
        &to,
        "--note",
        "Q4 <b>audit</b>",
    ]);
    let audit_id = audit["id"].as_str().unwrap().to_string();
    assert_eq!(audit["nodes"][0]["node_id"], node_id.as_str());
    assert_eq!(audit["nodes"][0]["status"], "waiting");

    // The next renewal response names the audit (it reports a checkpoint after the period).
    let after = write_requests(&identity, Some(&first), 6..7).await;
    let answer = renew_reporting(&vendor.url(), &identity, &after).await;
    assert_eq!(answer["audit"]["audit_id"], audit_id.as_str(), "{answer}");
    assert_eq!(answer["audit"]["to"], to.as_str());

    // The node exports its answer; the expected report is `audit report` on its ledger.
    let dir = node.path();
    let export = |out: &str| common::audit::export(dir, from, &to, out);
    ok(&export("answer.audit"), "audit export");
    let expected = ok(&report(dir, from, &to, "quarter", "csv"), "audit report");
    assert!(
        expected.contains(",6,"),
        "six requests in the period:\n{expected}"
    );
    let good = std::fs::read(dir.join("answer.audit")).unwrap();

    // Cut short in transit or by the operator: refused (the header the node signed names
    // other records). Not held against the node: anyone holding a copy can cut one.
    let cut = dir.join("cut.audit");
    std::fs::write(&cut, &good[..good.len() - 100]).unwrap();
    let (code, refused) = import(&vendor, &cut);
    assert_eq!(code, 22, "{refused}");
    assert_eq!(refused["accepted"], false);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("records-altered"),
        "{refused}"
    );

    // One record's token count lowered, the header re-signed with the node key over the
    // edited records: the record no longer matches its hash. Refused and flagged.
    let parsed = leasehold::ledger::audit::parse(&good).unwrap();
    let edited = String::from_utf8(parsed.records.to_vec())
        .unwrap()
        .replacen("\"prompt_tokens\":14", "\"prompt_tokens\":1", 1);
    assert_ne!(edited.as_bytes(), parsed.records);
    let body = leasehold::ledger::audit::AuditAnswerBody {
        records_sha256: leasehold::crypto::sha256(&[edited.as_bytes()]),
        records_bytes: edited.len() as u64,
        ..parsed.body.clone()
    };
    let tampered = signed_answer(&identity, &body, edited.as_bytes());
    std::fs::write(dir.join("tampered.audit"), &tampered).unwrap();
    let (code, refused) = import(&vendor, &dir.join("tampered.audit"));
    assert_eq!(code, 22, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("damaged")
            && refused["message"]
                .as_str()
                .unwrap()
                .contains("does not match its hash"),
        "{refused}"
    );

    // Signed by another key than the node's: refused, and not held against the node.
    let mut wrong_signer = good.clone();
    let header_end = good.windows(3).position(|w| w == b"\n}\n").unwrap();
    let header = String::from_utf8(good[..header_end].to_vec()).unwrap();
    let other_key = [9u8; 32];
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let swapped = header.replace(
        &b64(&identity.public().signing_key.to_bytes()),
        &b64(&other_key),
    );
    wrong_signer.splice(..header_end, swapped.into_bytes());
    let forged_signer = dir.join("signer.audit");
    std::fs::write(&forged_signer, &wrong_signer).unwrap();
    let (code, refused) = import(&vendor, &forged_signer);
    assert_eq!(
        code, 1,
        "a foreign answer is an error, not a finding: {refused}"
    );

    // The operator rewrites the ledger with the node key (drops two requests, re-chains,
    // re-signs every checkpoint) and exports: the answer verifies on its own, but it
    // does not hold the checkpoints the node reported at its renewals.
    let original = std::fs::read(dir.join("node/usage.ledger")).unwrap();
    forge_ledger(&identity, &["req-1", "req-4"]);
    ok(
        &export("forged.audit"),
        "audit export of the rewritten ledger",
    );
    let (code, refused) = import(&vendor, &dir.join("forged.audit"));
    assert_eq!(code, 22, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("skips-checkpoint"),
        "{refused}"
    );
    std::fs::write(dir.join("node/usage.ledger"), &original).unwrap();

    // A short run: the genuine records up to the checkpoint reported before the period,
    // then one checkpoint signed with the node key and dated after it. Everything
    // verifies, and no checkpoint the server holds is skipped, but the run does not reach
    // the checkpoint the node reported after the period: refused.
    let text = std::fs::read_to_string(dir.join("node/usage.ledger")).unwrap();
    let mut short = String::new();
    for line in text.lines().take(first.seq as usize + 1) {
        short.push_str(line);
        short.push('\n');
    }
    let (line, _) = record::encode(
        &RecordBody {
            seq: first.seq + 1,
            prev: first.hash,
            at: clock::system_now(),
            entry: Entry::Checkpoint {
                totals: first.totals,
            },
        },
        Some(identity.signer()),
    );
    short.push_str(&line);
    let body = leasehold::ledger::audit::AuditAnswerBody {
        first_seq: 0,
        last_seq: first.seq + 1,
        records_bytes: short.len() as u64,
        records_sha256: leasehold::crypto::sha256(&[short.as_bytes()]),
        ..parsed.body.clone()
    };
    let forged = signed_answer(&identity, &body, short.as_bytes());
    std::fs::write(dir.join("short.audit"), &forged).unwrap();
    let (code, refused) = import(&vendor, &dir.join("short.audit"));
    assert_eq!(code, 22, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("does not reach a checkpoint this node reported after the period"),
        "{refused}"
    );

    // Refusals so far are recorded; the two the node signed are findings.
    let shown = vendor.admin_json(&["audit", "show", &audit_id]);
    let part = &shown["nodes"][0];
    assert_eq!(part["status"], "waiting", "{shown}");
    // The cut answer named no audit: recorded on none.
    assert_eq!(part["refusals"], 3, "{shown}");
    let findings: Vec<&str> = part["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    // A cut answer says nothing about the node (anyone holding a copy can cut one):
    // recorded, not a finding.
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert!(findings[0].starts_with("damaged"), "{findings:?}");
    assert!(findings[1].starts_with("skips-checkpoint"), "{findings:?}");

    // The genuine answer is accepted; the report equals `audit report` on the ledger.
    let (code, accepted) = import(&vendor, &dir.join("answer.audit"));
    assert_eq!(code, 0, "{accepted}");
    assert_eq!(accepted["receipt"]["audit_id"], audit_id.as_str());
    assert_eq!(accepted["receipt"]["totals"]["requests"], 6);
    let csv = vendor.admin_ok(&[
        "audit", "report", &audit_id, "--node", &node_id, "--format", "csv",
    ]);
    assert_eq!(csv, expected);
    let shown = vendor.admin_json(&["audit", "show", &audit_id]);
    let part = &shown["nodes"][0];
    assert_eq!(part["status"], "answered");
    assert_eq!(part["via"], "import");
    assert_eq!(part["totals"]["filtered"], 2);
    assert_eq!(
        part["findings"].as_array().unwrap().len(),
        2,
        "findings stay"
    );
    // Answered once: a second import is refused.
    let (code, again) = import(&vendor, &dir.join("answer.audit"));
    assert_eq!(code, 1, "{again}");
    assert!(again.to_string().contains("already answered"), "{again}");

    // Renewals no longer carry it; a node that lets an audit go unanswered through its
    // renewals is flagged.
    let second = vendor.admin_json(&[
        "audit",
        "request",
        "--org",
        common::vendor::ORG,
        "--from",
        from,
        "--to",
        &to,
        "--renewals",
        "2",
    ]);
    let second_id = second["id"].as_str().unwrap();
    for asked in 1..=2 {
        let answer = renew_reporting(&vendor.url(), &identity, &after).await;
        assert_eq!(answer["audit"]["audit_id"], second_id, "{answer}");
        let shown = vendor.admin_json(&["audit", "show", second_id]);
        let status = shown["nodes"][0]["status"].as_str().unwrap().to_string();
        assert_eq!(status, if asked < 2 { "waiting" } else { "unanswered" });
    }
    let list = vendor.admin_ok(&["audit", "list"]);
    assert!(
        list.contains(&audit_id) && list.contains("FLAGGED"),
        "{list}"
    );
}

/// Records dated ahead of the server's clock (a node clock set forward while it wrote
/// them, to move usage past the period's end): the checkpoint the node reported is dated
/// more than the request window after the server received it. Refused and flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_dated_ahead_of_the_server_are_flagged_as_misdated() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(1, "50m", "10m");
    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    let node_id = identity.public().node_id();

    // Written by hand with the node key: a request an hour ago, then a checkpoint dated
    // ten minutes ahead.
    let now = clock::system_now();
    let mut text = String::new();
    let mut prev = [0u8; 32];
    let mut totals = leasehold::ledger::record::Totals::default();
    let mut genesis = [0u8; 32];
    let entries = [
        (now - chrono::Duration::hours(1), Entry::Genesis { node_id }),
        (now - chrono::Duration::hours(1), request(0)),
    ];
    for (seq, (at, entry)) in entries.into_iter().enumerate() {
        totals.add(&entry).unwrap();
        let body = RecordBody {
            seq: seq as u64,
            prev,
            at,
            entry,
        };
        let (line, hash) = record::encode(&body, Some(identity.signer()));
        text.push_str(&line);
        prev = hash;
        if seq == 0 {
            genesis = hash;
        }
    }
    let ahead = RecordBody {
        seq: 2,
        prev,
        at: now + chrono::Duration::minutes(10),
        entry: Entry::Checkpoint { totals },
    };
    let (line, hash) = record::encode(&ahead, Some(identity.signer()));
    text.push_str(&line);
    std::fs::write(node.path().join("node/usage.ledger"), &text).unwrap();
    // Reported at a renewal now: the server holds it, received now.
    let position = Position {
        ledger_id: genesis,
        since: now - chrono::Duration::hours(1),
        seq: 2,
        hash,
        totals,
        reported: None,
    };
    renew_reporting(&vendor.url(), &identity, &position).await;

    let to = leasehold::format::time::rfc3339(now - chrono::Duration::minutes(30));
    let from = "2020-01-01T00:00:00Z";
    vendor.admin_json(&[
        "audit",
        "request",
        "--org",
        common::vendor::ORG,
        "--from",
        from,
        "--to",
        &to,
    ]);
    ok(
        &common::audit::export(node.path(), from, &to, "answer.audit"),
        "audit export",
    );
    let (code, refused) = import(&vendor, &node.path().join("answer.audit"));
    assert_eq!(code, 22, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("misdated"),
        "{refused}"
    );
}
