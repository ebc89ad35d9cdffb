//! The usage ledger: every kind of tampering named by `audit verify`, durability under
//! kill -9 during load, and the records matching what clients were told.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::node::{get_text, leasehold, NodeSite};
use leasehold::crypto::signing::{DocumentSigner, SecretKey};
use leasehold::ledger::record::{self, Entry, Outcome, RecordBody};
use leasehold::ledger::{CheckpointPolicy, Ledger};
use leasehold::node::NodeIdentity;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The answered requests in a ledger's text: (request id, prompt tokens, completion
/// tokens), joining each `admitted` record with its `completed` record of outcome ok.
fn answered_in(text: &str) -> HashSet<(String, u64, u64)> {
    let mut admitted = std::collections::HashMap::new();
    let mut answered = HashSet::new();
    for p in text.lines().filter_map(|l| record::parse(l).ok()) {
        match p.body.entry {
            Entry::Admitted {
                request_id,
                prompt_tokens,
                ..
            } => {
                admitted.insert(request_id, prompt_tokens);
            }
            Entry::Completed {
                request_id,
                completion_tokens,
                outcome: Outcome::Ok,
                ..
            } => {
                let prompt = admitted
                    .remove(&request_id)
                    .expect("completed after admitted");
                answered.insert((request_id, prompt, completion_tokens));
            }
            _ => {}
        }
    }
    answered
}

fn request(i: u64) -> Entry {
    Entry::Request {
        request_id: format!("chatcmpl-{i}"),
        license_id: "0".repeat(32),
        model_id: "tiny".into(),
        prompt_tokens: 10 + i,
        completion_tokens: 5,
        outcome: Outcome::Ok,
        client_key: "-".into(),
        prompt_sha256: None,
        filter_rule: None,
    }
}

/// A node directory and a ledger of 12 requests with a checkpoint every 5 records.
async fn written_ledger() -> (TempDir, PathBuf, Vec<String>) {
    let dir = TempDir::new().unwrap();
    let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
    let path = dir.path().join("node/usage.ledger");
    let policy = CheckpointPolicy {
        every_records: 5,
        every: Duration::from_secs(3600),
    };
    let (ledger, opened) = Ledger::open(&path, &identity, policy).unwrap();
    assert_eq!(opened.records, 1, "a new ledger holds its genesis record");
    for i in 0..12 {
        // One at a time, so checkpoints fall every 5 records.
        ledger.append(request(i)).await.unwrap();
    }
    ledger.close().await;
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    (dir, path, lines)
}

fn audit(dir: &Path, ledger: &Path) -> (i32, Value) {
    let out = leasehold(
        dir,
        &[
            "audit",
            "verify",
            ledger.to_str().unwrap(),
            "--node-pub",
            "node/node.pub",
            "--json",
        ],
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap(), json)
}

/// `n` short completions, each answered with 200.
async fn complete(http: &reqwest::Client, server: &common::node::Server, n: usize) {
    for _ in 0..n {
        let r = http
            .post(server.url("/v1/completions"))
            .json(&json!({"model": "tiny", "prompt": "once upon", "max_tokens": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn is_checkpoint(line: &str) -> bool {
    line.contains("\"type\":\"checkpoint\"")
}

#[tokio::test]
async fn an_intact_ledger_verifies_and_each_tampering_is_named() {
    let (dir, path, lines) = written_ledger().await;
    // genesis + 12 requests + checkpoints after 5, 10 and at close (2 more).
    assert_eq!(lines.iter().filter(|l| is_checkpoint(l)).count(), 3);
    let (code, report) = audit(dir.path(), &path);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["intact"], true);
    assert_eq!(report["requests"], 12);
    assert_eq!(report["prompt_tokens"], (10..22).sum::<u64>());

    let tampered = dir.path().join("tampered.ledger");
    let check = |lines: &[String], kind: &str, what: &str| {
        write_lines(&tampered, lines);
        let (code, report) = audit(dir.path(), &tampered);
        assert_eq!(code, 23, "{what}: {report}");
        assert_eq!(report["problem"], kind, "{what}: {report}");
        report
    };

    // Edited: one token count changed.
    let mut edited = lines.clone();
    edited[3] = edited[3].replace("\"completion_tokens\":5", "\"completion_tokens\":4");
    let report = check(&edited, "edited", "edited record");
    assert!(report["message"].as_str().unwrap().contains("record 3"));

    // Deleted: a request record removed.
    let mut deleted = lines.clone();
    deleted.remove(4);
    let report = check(&deleted, "deleted", "deleted record");
    assert!(report["message"]
        .as_str()
        .unwrap()
        .contains("record 4 should be"));

    // Reordered: two records swapped.
    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    check(&reordered, "reordered", "swapped records");

    // Truncated: the file cut inside a record.
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&tampered, &text[..text.len() - 20]).unwrap();
    let (code, report) = audit(dir.path(), &tampered);
    assert_eq!((code, report["problem"].as_str()), (23, Some("truncated")));

    // Forked: record 2 replaced by a different, correctly hashed record of the same
    // number; record 3 still chains to the original.
    let original = record::parse(&lines[2]).unwrap().body;
    let forged = RecordBody {
        entry: Entry::Request {
            request_id: "chatcmpl-forged".into(),
            license_id: "0".repeat(32),
            model_id: "tiny".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            outcome: Outcome::Ok,
            client_key: "-".into(),
            prompt_sha256: None,
            filter_rule: None,
        },
        ..original
    };
    let (line, _) = record::encode(&forged, None);
    let mut forked = lines.clone();
    forked[2] = line.trim_end().to_string();
    check(&forked, "forked", "forked history");

    // Bad checkpoint signature: a checkpoint re-signed by another key.
    let at = lines.iter().position(|l| is_checkpoint(l)).unwrap();
    let body = record::parse(&lines[at]).unwrap().body;
    let (resigned, _) = record::encode(&body, Some(&SecretKey::generate()));
    let mut bad_sig = lines.clone();
    bad_sig[at] = resigned.trim_end().to_string();
    check(&bad_sig, "bad-checkpoint-signature", "re-signed checkpoint");

    // Another node's key: every checkpoint fails.
    let other = TempDir::new().unwrap();
    NodeIdentity::load_or_create(&other.path().join("node")).unwrap();
    let out = leasehold(
        dir.path(),
        &[
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--node-pub",
            other.path().join("node/node.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(23));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
}

/// Re-chain `bodies` as a node holding `key` would write them: fresh `prev` links, hashes
/// and checkpoint signatures (the operator has the node key on disk).
fn rechain(bodies: Vec<RecordBody>, key: &dyn DocumentSigner) -> Vec<String> {
    let mut prev = [0u8; 32];
    let mut lines = Vec::new();
    for (seq, mut body) in bodies.into_iter().enumerate() {
        body.seq = seq as u64;
        body.prev = prev;
        let (line, hash) = record::encode(&body, Some(key));
        prev = hash;
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// A ledger rebuilt with the node's own key chains and signs correctly, yet breaks
/// rules no node breaks: each is refused by `audit verify` (docs/FORMATS.md, step 5–6).
#[tokio::test]
async fn a_re_signed_ledger_that_breaks_the_writing_rules_is_refused() {
    let (dir, _path, lines) = written_ledger().await;
    let identity = NodeIdentity::load(&dir.path().join("node")).unwrap();
    let key = identity.signer();
    let bodies: Vec<RecordBody> = lines
        .iter()
        .map(|l| record::parse(l).unwrap().body)
        .collect();
    // Re-chaining the untouched bodies gives back the same file: the rebuild is faithful.
    assert_eq!(rechain(bodies.clone(), key), lines);
    let tampered = dir.path().join("tampered.ledger");
    let check = |lines: &[String], kind: &str, says: &str| {
        write_lines(&tampered, lines);
        let (code, report) = audit(dir.path(), &tampered);
        assert_eq!(code, 23, "{says}: {report}");
        assert_eq!(report["problem"], kind, "{says}: {report}");
        let message = report["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{message}");
    };

    // A second genesis record: the history after it would report another ledger id.
    let mut second_genesis = bodies.clone();
    second_genesis.insert(3, bodies[0].clone());
    check(
        &rechain(second_genesis, key),
        "foreign",
        "second genesis record",
    );

    // A record dated before the one ahead of it.
    let mut backdated = bodies.clone();
    backdated[4].at = bodies[3].at - chrono::Duration::seconds(3600);
    check(&rechain(backdated, key), "edited", "dated before");

    // A `reported` record naming a checkpoint the ledger does not hold.
    let mut reported = bodies.clone();
    let checkpoint = lines.iter().position(|l| is_checkpoint(l)).unwrap();
    reported.insert(
        checkpoint + 1,
        RecordBody {
            entry: Entry::Reported {
                seq: checkpoint as u64 + 1,
                hash: [7; 32],
            },
            ..bodies[checkpoint].clone()
        },
    );
    check(
        &rechain(reported, key),
        "edited",
        "not a checkpoint earlier",
    );
    // The same record naming the real checkpoint verifies.
    let mut reported = bodies.clone();
    let real = record::parse(&lines[checkpoint]).unwrap().actual_hash;
    reported.insert(
        checkpoint + 1,
        RecordBody {
            entry: Entry::Reported {
                seq: checkpoint as u64,
                hash: real,
            },
            ..bodies[checkpoint].clone()
        },
    );
    write_lines(&tampered, &rechain(reported, key));
    let (code, report) = audit(dir.path(), &tampered);
    assert_eq!(code, 0, "{report}");

    // A signature on a request record (outside the hash, so it changes nothing the
    // chain covers, but no writer puts one there).
    let mut signed_request = lines.clone();
    let signature = &lines[checkpoint][lines[checkpoint].find(",\"signature\"").unwrap()..];
    signed_request[2] = format!("{}{signature}", lines[2].strip_suffix('}').unwrap());
    check(&signed_request, "malformed", "not a checkpoint");
}

#[tokio::test]
async fn a_torn_tail_is_moved_aside_and_recorded_at_the_next_start() {
    let (dir, path, _) = written_ledger().await;
    let identity = NodeIdentity::load(&dir.path().join("node")).unwrap();
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"body\":{\"seq\":17,\"pr");
    std::fs::write(&path, &text).unwrap();
    let (ledger, opened) = Ledger::open(&path, &identity, CheckpointPolicy::default()).unwrap();
    let (bytes, side) = opened.recovered.expect("the torn tail is reported");
    assert_eq!(bytes, 21);
    assert_eq!(std::fs::read(&side).unwrap(), b"{\"body\":{\"seq\":17,\"pr");
    ledger.append(request(99)).await.unwrap();
    ledger.close().await;
    let (code, report) = audit(dir.path(), &path);
    assert_eq!(code, 0, "{report}");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"type\":\"recovered\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_keeps_every_answered_request() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let server = site.serve("x.license", &["--parallel", "4"]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64, u64)>::new()));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let http = http.clone();
        let url = server.url("/v1/chat/completions");
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..25 {
                let body = json!({"model": "tiny", "messages": [{"role": "user", "content": format!("hello {c} {r}")}], "max_tokens": 6, "temperature": 0});
                let Ok(response) = http.post(&url).json(&body).send().await else {
                    return;
                };
                let Ok(v) = response.json::<Value>().await else {
                    return;
                };
                answered.lock().unwrap().push((
                    v["id"].as_str().unwrap().to_string(),
                    v["usage"]["prompt_tokens"].as_u64().unwrap(),
                    v["usage"]["completion_tokens"].as_u64().unwrap(),
                ));
            }
        }));
    }
    // Let about half of the 200 requests finish, then kill -9.
    common::node::eventually(Duration::from_secs(60), async || {
        answered.lock().unwrap().len() >= 100
    })
    .await;
    server.signal("KILL");
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 100);

    let ledger = site.path().join("node/usage.ledger");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let recorded = answered_in(&text);
    for a in &answered {
        assert!(
            recorded.contains(a),
            "answered request {a:?} is not in the ledger"
        );
    }
    // Whatever the kill left, the ledger verifies up to its last complete record.
    let out = audit(site.path(), Path::new("node/usage.ledger"));
    let (code, report) = out;
    assert!(
        code == 0 || report["problem"] == "truncated",
        "after kill -9: {report}"
    );

    // A restart takes the ledger over (moving a torn tail aside), and it verifies.
    drop(server);
    let server = site.serve("x.license", &[]);
    let ok = http
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "again"}], "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    server.signal("TERM");
    let mut server = server;
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let (code, report) = audit(site.path(), Path::new("node/usage.ledger"));
    assert_eq!(code, 0, "{report}");
    // Totals count every admitted request: the answered ones, the one after the
    // restart, and those the kill cut mid-answer (admitted, never completed).
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(answered_in(&text).len(), recorded.len() + 1);
    let admitted = text
        .lines()
        .filter_map(|l| record::parse(l).ok())
        .filter(|p| matches!(p.body.entry, Entry::Admitted { .. }))
        .count();
    assert_eq!(report["requests"].as_u64().unwrap() as usize, admitted);
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("\"type\":\"checkpoint\""),
        "a clean shutdown ends with a signed checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_enforced_from_the_ledger_across_a_restart() {
    let site = NodeSite::new(None);
    site.issue(
        "x.license",
        "+3d",
        &["--cap", "requests-per-day=3", "--cap", "context=64"],
    );
    // The node's clock runs from noon tomorrow (Debian's faketime), so no UTC midnight
    // falls inside the test, whenever it runs.
    let noon = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("@%Y-%m-%d 12:00:00")
        .to_string();
    let serve = || {
        let args = NodeSite::serve_args("x.license", &[]);
        common::node::Server::start_command(
            site.path(),
            common::node::faketime_command(&noon, &args),
        )
    };
    let http = reqwest::Client::new();
    let chat = async |server: &common::node::Server, max_tokens: u64| {
        http.post(server.url("/v1/chat/completions"))
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}))
            .send()
            .await
            .unwrap()
    };
    let server = serve();
    // The context cap bounds the context: 100 new tokens do not fit in 64.
    assert_eq!(chat(&server, 100).await.status(), 400);
    for _ in 0..3 {
        assert_eq!(chat(&server, 4).await.status(), 200);
    }
    let check_refused = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry > 0 && retry <= 86_400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "license_cap_exceeded");
        assert_eq!(v["error"]["cap"], "requests-per-day");
        assert!(v["error"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"));
    };
    check_refused(chat(&server, 4).await).await;
    let state = common::node::get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(state["usage"]["requests_today"], 3);

    // After a restart the count comes back from the ledger.
    drop(server);
    let server = serve();
    check_refused(chat(&server, 4).await).await;
    let text = std::fs::read_to_string(site.path().join("node/usage.ledger")).unwrap();
    assert_eq!(text.matches("refused:license_cap_exceeded").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_rolled_back_ledger_is_refused_at_start() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let http = reqwest::Client::new();
    let session = async |requests: usize| {
        let mut server = site.serve("x.license", &[]);
        complete(&http, &server, requests).await;
        server.stop();
    };
    let ledger = site.path().join("node/usage.ledger");
    session(2).await;
    let old = std::fs::read(&ledger).unwrap();
    session(2).await;
    let current = std::fs::read(&ledger).unwrap();
    let serve = || leasehold(site.path(), &NodeSite::serve_args("x.license", &[]));

    // Rolled back to the earlier copy.
    std::fs::write(&ledger, &old).unwrap();
    let out = serve();
    assert_eq!(out.status.code(), Some(23));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rolled back"));
    // Deleted.
    std::fs::remove_file(&ledger).unwrap();
    let out = serve();
    assert_eq!(out.status.code(), Some(23));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was deleted"));
    // The real one back: the node starts and goes on with it.
    std::fs::write(&ledger, &current).unwrap();
    session(1).await;
    let (code, report) = audit(site.path(), Path::new("node/usage.ledger"));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["requests"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_report_totals_equal_what_clients_were_told() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    std::fs::write(
        site.path().join("keys.txt"),
        "key-one-0123456789\nkey-two-0123456789\n",
    )
    .unwrap();
    let mut server = site.serve("x.license", &["--api-key-file", "keys.txt"]);
    let http = reqwest::Client::new();
    let (mut prompt, mut completion) = (0u64, 0u64);
    for i in 0..6u64 {
        let key = if i.is_multiple_of(2) {
            "key-one-0123456789"
        } else {
            "key-two-0123456789"
        };
        let stream = i == 5;
        let (path, body) = if i % 3 == 1 {
            (
                "/v1/completions",
                json!({"model": "tiny", "prompt": format!("story {i}"), "max_tokens": 5}),
            )
        } else {
            (
                "/v1/chat/completions",
                json!({"model": "tiny", "messages": [{"role": "user", "content": format!("hi {i}")}], "max_tokens": 4 + i,
                       "stream": stream, "stream_options": {"include_usage": true}}),
            )
        };
        let text = http
            .post(server.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let usage = if stream {
            text.lines()
                .rev()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find(|v| v["usage"].is_object())
                .unwrap()["usage"]
                .clone()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
        };
        prompt += usage["prompt_tokens"].as_u64().unwrap();
        completion += usage["completion_tokens"].as_u64().unwrap();
    }
    server.stop();

    let report = |extra: &[&str]| {
        let mut args = vec!["audit", "report", "node/usage.ledger"];
        args.extend_from_slice(extra);
        let out = leasehold(site.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&report(&["--format", "json", "--by", "day"])).unwrap();
    assert_eq!(json["totals"]["requests"], 6);
    assert_eq!(json["totals"]["prompt_tokens"], prompt);
    assert_eq!(json["totals"]["completion_tokens"], completion);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per client key: {json}");
    assert!(rows
        .iter()
        .all(|r| r["period"].as_str().unwrap().len() == 10));
    let csv = report(&["--format", "csv", "--by", "quarter"]);
    assert!(csv.starts_with("period,license_id,model_id,client_key,requests"));
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.lines().nth(1).unwrap().contains("-Q"));
    // A window that ends before the records holds nothing.
    let empty: Value = serde_json::from_str(&report(&[
        "--format",
        "json",
        "--to",
        "2000-01-01T00:00:00Z",
    ]))
    .unwrap();
    assert_eq!(empty["totals"]["requests"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_attestation_checks_out_offline_and_edits_do_not() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let server = site.serve("x.license", &[]);
    let http = reqwest::Client::new();
    complete(&http, &server, 2).await;
    let text = get_text(&http, &server.url("/v1/license/attestation")).await;
    std::fs::write(site.path().join("att.json"), &text).unwrap();
    let verify = |file: &str| {
        leasehold(
            site.path(),
            &[
                "audit",
                "verify-attestation",
                file,
                "--enrollment",
                "node.enroll",
                "--json",
            ],
        )
    };
    let out = verify("att.json");
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["attestation"]["phase"], "serving");
    assert_eq!(v["attestation"]["totals"]["requests"], 2);
    assert_eq!(v["attestation"]["model_id"], "tiny");
    // The ledger head it names is the ledger's last durable record.
    let ledger = std::fs::read_to_string(site.path().join("node/usage.ledger")).unwrap();
    let last = record::parse(ledger.lines().last().unwrap()).unwrap();
    assert_eq!(v["attestation"]["ledger_seq"], last.body.seq);
    assert_eq!(
        v["attestation"]["ledger_head"],
        hex::encode(last.actual_hash)
    );
    // Edited: the request count raised.
    std::fs::write(
        site.path().join("edited.json"),
        text.replace("\"requests\":2", "\"requests\":1"),
    )
    .unwrap();
    let out = verify("edited.json");
    assert_eq!(out.status.code(), Some(15));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_prompt_hashes_find_a_prompt_without_storing_it() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let http = reqwest::Client::new();
    let secret = "what is the launch date of project albatross?";
    let chat = |server: &common::node::Server| {
        http.post(server.url("/v1/chat/completions"))
            .json(&json!({"model": "tiny", "max_tokens": 3,
                          "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": secret}]}))
            .send()
    };
    // Without the opt-in: no hash in the records.
    let mut server = site.serve("x.license", &[]);
    let plain: Value = chat(&server).await.unwrap().json().await.unwrap();
    server.stop();
    // With it: one hash per request, and neither the prompt nor the salt in the ledger.
    let mut server = site.serve("x.license", &["--ledger-prompt-hash"]);
    let hashed: Value = chat(&server).await.unwrap().json().await.unwrap();
    complete(&http, &server, 1).await;
    server.stop();
    let text = std::fs::read_to_string(site.path().join("node/usage.ledger")).unwrap();
    assert!(!text.contains("albatross"));
    assert_eq!(text.matches("prompt_sha256").count(), 2);
    let salt = std::fs::read(site.path().join("node/ledger.salt")).unwrap();
    assert!(!text.contains(&hex::encode(&salt)));
    let (code, report) = audit(site.path(), Path::new("node/usage.ledger"));
    assert_eq!(code, 0, "{report}");

    // The operator, with the salt, finds the request that carried the prompt.
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": secret}]);
    std::fs::write(site.path().join("asked.json"), messages.to_string()).unwrap();
    let find = |chat_file: &str| {
        leasehold(
            site.path(),
            &[
                "audit",
                "prompt-hash",
                "--salt",
                "node/ledger.salt",
                "--chat",
                chat_file,
                "--ledger",
                "node/usage.ledger",
                "--json",
            ],
        )
    };
    let out = find("asked.json");
    assert_eq!(out.status.code(), Some(0));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = found["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{found}");
    assert_eq!(records[0]["request_id"], hashed["id"]);
    assert_ne!(records[0]["request_id"], plain["id"]);
    // Another prompt is not there (exit 1).
    let other = json!([{"role": "user", "content": secret}]);
    std::fs::write(site.path().join("other.json"), other.to_string()).unwrap();
    assert_eq!(find("other.json").status.code(), Some(1));
    // The completions prompt too.
    let out = leasehold(
        site.path(),
        &[
            "audit",
            "prompt-hash",
            "--salt",
            "node/ledger.salt",
            "--text",
            "once upon",
            "--ledger",
            "node/usage.ledger",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": cmpl-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ledger_serves_one_process() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let mut server = site.serve("x.license", &[]);
    // A second node process on the same directory would interleave records.
    let out = leasehold(site.path(), &NodeSite::serve_args("x.license", &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another leasehold process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[test]
fn run_records_each_answer_and_obeys_the_caps() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &["--cap", "requests-per-day=2"]);
    let run = || {
        leasehold(
            site.path(),
            &NodeSite::run_args("x.license", &["--prompt", "hello", "--max-tokens", "3"]),
        )
    };
    for _ in 0..2 {
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The cap counts `run` like `serve`, and survives the process: the third is refused.
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requests-per-day"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(site.path().join("node/usage.ledger")).unwrap();
    assert_eq!(text.matches("\"client_key\":\"cli\"").count(), 3);
    assert_eq!(text.matches("\"outcome\":\"ok\"").count(), 2);
    assert_eq!(text.matches("refused:license_cap_exceeded").count(), 1);
    let (code, report) = audit(site.path(), Path::new("node/usage.ledger"));
    assert_eq!(code, 0, "{report}");
    // Checkpoint totals count request records, the refused one included.
    assert_eq!(report["requests"], 3);
}
