//! The license server with real nodes on loopback: a real `leasehold license-server`
//! process (SQLite, and two replicas on a real PostgreSQL), real `leasehold serve`
//! nodes with the tiny test model, the `admin` and `enroll --server` commands.

// Without the inference runtime the tests that serve are left out, and with them the
// uses of some helpers.
#![cfg_attr(not(feature = "inference"), allow(dead_code, unused_imports))]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::node::leasehold;
use common::postgres::{postgres_url, TempDatabase};
use common::vendor::{ok, Node, Vendor, CA_ENV, ORG};
use leasehold::protocol::{LedgerPosition, UsageCheckpoint};
use serde_json::{json, Value};
use tempfile::TempDir;

/// `leasehold renew` (air-gapped, by files) for the node in `dir` with extra flags.
fn renew_by_file(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["renew", "--node-dir", "node", "--license", "node.license"];
    all.extend_from_slice(args);
    leasehold(dir, &all)
}

/// A started vendor with one entitled, enrolled and approved node.
fn vendor_with_node(lease: &str, grace: &str) -> (Vendor, Node) {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(1, lease, grace);
    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    (vendor, node)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The ledger findings `admin usage` lists for the (one) node.
fn ledger_findings(vendor: &Vendor) -> Vec<String> {
    let usage = vendor.admin_json(&["usage"]);
    usage["nodes"][0]["ledger_findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no ledger_findings in {usage}"))
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// Real `serve` nodes renewing against the server (the inference runtime).
#[cfg(feature = "inference")]
mod serving {
    use std::time::Instant;

    use super::*;
    use common::node::{eventually, Server};
    use common::vendor::{as_strs, serve_args};

    async fn license_state(http: &reqwest::Client, node: &Server) -> Value {
        common::node::get_json(http, &node.url("/v1/license")).await
    }

    async fn chat(http: &reqwest::Client, node: &Server) -> (u16, Value) {
        let response = http
        .post(node.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}))
        .send()
        .await
        .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn phase(http: &reqwest::Client, node: &Server) -> String {
        license_state(http, node).await["phase"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_leases_renewed_keep_a_node_serving_for_a_minute() {
        let mut vendor = Vendor::new(None, &[]);
        vendor.start();
        vendor.entitle(1, "10s", "5s");
        let node = Node::new(&vendor);
        let id = node.enroll_ok(&vendor);

        // The approver sees the declared use.
        let pending = vendor.admin_ok(&["enrollments"]);
        assert!(pending.contains(&id), "{pending}");
        assert!(
            pending.contains("support chat")
                && pending.contains("prompts stay in the EU")
                && pending.contains("VPN only"),
            "{pending}"
        );

        // The node waits for approval with a clear message, then serves.
        let (node_tx, node_rx) = std::sync::mpsc::channel();
        {
            let dir = node.path().to_path_buf();
            let url = vendor.url();
            std::thread::spawn(move || {
                let server = Server::start(&dir, &as_strs(&serve_args(&url)));
                node_tx.send(server).unwrap();
            });
        }
        let stderr_log = node
            .path()
            .join(format!("serve-{}.stderr", std::process::id()));
        let waiting = eventually(Duration::from_secs(30), async || {
            std::fs::read_to_string(&stderr_log)
                .unwrap_or_default()
                .contains("waiting for approval")
        })
        .await;
        assert!(waiting, "the node should say it waits for approval");
        vendor.admin_ok(&["approve", &id]);
        let server = node_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(node.path().join("node.license").exists());

        let http = client();
        let start = Instant::now();
        let mut requests = 0;
        while start.elapsed() < Duration::from_secs(60) {
            let (status, body) = chat(&http, &server).await;
            assert_eq!(
                status,
                200,
                "request {requests} failed at {:?}: {body}",
                start.elapsed()
            );
            requests += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let state = license_state(&http, &server).await;
        assert_eq!(state["phase"], "serving");
        let serial = state["serial"].as_u64().unwrap();
        assert!(
            serial >= 10,
            "a 10 s lease renewed at about half should reach serial 10 in 60 s, got {serial}"
        );
        assert_eq!(state["renewal"]["consecutive_failures"], 0);

        // The server saw the renewals and the usage.
        let licenses = vendor.admin_json(&["list"]);
        assert!(licenses["licenses"][0]["serial"].as_u64().unwrap() >= serial);
        let usage = vendor.admin_json(&["usage", "--org", ORG]);
        let reported = usage["nodes"][0]["requests"].as_u64().unwrap();
        assert_eq!(usage["nodes"][0]["ledger_findings"], json!([]));
        assert!(
            reported > 0 && reported <= requests,
            "usage {reported} of {requests}"
        );
        // The license file on disk is the one in force.
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(node.path().join("node.license")).unwrap())
                .unwrap();
        assert!(on_disk["body"]["serial"].as_u64().unwrap() >= serial);
    }

    /// Serve until `renewals` more renewals went through (each reports the ledger), after
    /// `requests` answered chats; then stop the node.
    async fn serve_session(vendor: &Vendor, node: &Node, requests: usize, renewals: u64) {
        let http = client();
        let mut server = node.serve(vendor);
        for _ in 0..requests {
            assert_eq!(chat(&http, &server).await.0, 200);
        }
        let first = license_state(&http, &server).await["renewal"]["renewals"]
            .as_u64()
            .unwrap();
        let renewed = eventually(Duration::from_secs(40), async || {
            license_state(&http, &server).await["renewal"]["renewals"]
                .as_u64()
                .unwrap()
                >= first + renewals
        })
        .await;
        assert!(
            renewed,
            "{renewals} renewal(s) expected: {}",
            server.stderr()
        );
        server.stop();
    }

    /// The vendor requests an audit; the serving node hears of it in its next renewal
    /// response, reports a fresh checkpoint and uploads its ledger records of the
    /// period; the server's report equals `audit report` on the node's ledger.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_serving_node_answers_an_audit_after_its_next_renewal() {
        let (vendor, node) = vendor_with_node("8s", "30s");
        let server = node.serve(&vendor);
        let http = client();
        // Before the period: two requests, and a renewal that reports a checkpoint after
        // them (the run then starts there, not at the genesis record).
        for _ in 0..2 {
            assert_eq!(chat(&http, &server).await.0, 200);
        }
        let renewals = license_state(&http, &server).await["renewal"]["renewals"]
            .as_u64()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), async || {
                license_state(&http, &server).await["renewal"]["renewals"]
                    .as_u64()
                    .unwrap()
                    > renewals
            })
            .await
        );
        let now = || leasehold::format::time::rfc3339(leasehold::node::clock::system_now());
        std::thread::sleep(Duration::from_millis(1100));
        let from = now();
        let from = from.as_str();
        for _ in 0..3 {
            assert_eq!(chat(&http, &server).await.0, 200);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let to = now();
        std::thread::sleep(Duration::from_millis(1100));
        // After the period: not in the report.
        assert_eq!(chat(&http, &server).await.0, 200);
        let audit = vendor.admin_json(&[
            "audit", "request", "--org", ORG, "--from", from, "--to", &to,
        ]);
        let audit_id = audit["id"].as_str().unwrap().to_string();
        let answered = eventually(Duration::from_secs(40), async || {
            license_state(&http, &server).await["renewal"]["audit"]["answered_at"].is_string()
        })
        .await;
        let state = license_state(&http, &server).await;
        assert!(answered, "{state}\n{}", server.stderr());
        assert_eq!(state["renewal"]["audit"]["audit_id"], audit_id.as_str());
        assert!(state["renewal"]["audit"]["requested_at"].is_string());
        let log = server.stderr();
        assert!(
            log.contains("requested an audit")
                && log.contains(&format!("answered audit {audit_id}")),
            "{log}"
        );

        let shown = vendor.admin_json(&["audit", "show", &audit_id]);
        let part = &shown["nodes"][0];
        assert_eq!(part["status"], "answered", "{shown}");
        assert_eq!(part["via"], "upload");
        assert_eq!(part["totals"]["requests"], 3, "{shown}");
        assert!(part["first_seq"].as_u64().unwrap() > 0, "{shown}");
        assert!(part["findings"].as_array().unwrap().is_empty(), "{shown}");
        let node_id = part["node_id"].as_str().unwrap();
        let csv = vendor.admin_ok(&[
            "audit", "report", &audit_id, "--node", node_id, "--format", "csv",
        ]);
        let expected = ok(
            &common::audit::report(node.path(), from, &to, "quarter", "csv"),
            "audit report",
        );
        assert_eq!(csv, expected);
        // Answered: later renewals no longer carry it.
        let renewals = state["renewal"]["renewals"].as_u64().unwrap();
        let renewed = eventually(Duration::from_secs(20), async || {
            license_state(&http, &server).await["renewal"]["renewals"]
                .as_u64()
                .unwrap()
                > renewals
        })
        .await;
        assert!(renewed);
        let shown = vendor.admin_json(&["audit", "show", &audit_id]);
        assert_eq!(shown["nodes"][0]["asked"], part["asked"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolled_back_or_deleted_ledger_is_flagged_at_renewal() {
        let (vendor, node) = vendor_with_node("6s", "60s");
        let ledger = node.path().join("node/usage.ledger");
        let head = node.path().join("node/ledger.head");

        serve_session(&vendor, &node, 3, 2).await;
        // The head first: it is written after the ledger, so this copy of the ledger
        // holds the checkpoint it names (a consistent backup).
        let backup = (
            std::fs::read(&head).unwrap(),
            std::fs::read(&ledger).unwrap(),
        );
        serve_session(&vendor, &node, 3, 2).await;
        assert_eq!(ledger_findings(&vendor), Vec::<String>::new());

        // Rolled back to the backup, head included: the node itself cannot tell...
        std::fs::write(&head, &backup.0).unwrap();
        std::fs::write(&ledger, &backup.1).unwrap();
        serve_session(&vendor, &node, 0, 1).await;
        // ...but the license server can.
        let findings = ledger_findings(&vendor);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].contains("went-backwards"), "{findings:?}");

        // Deleted, head and all: the node starts a new ledger, the server notices.
        std::fs::remove_file(&ledger).unwrap();
        std::fs::remove_file(&head).unwrap();
        serve_session(&vendor, &node, 1, 1).await;
        let findings = ledger_findings(&vendor);
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(
            findings[1].contains("replaced") && findings[1].contains("deleted"),
            "{findings:?}"
        );
        // Renewals went on (flagged, not refused); the table says what to do.
        let table = vendor.admin_ok(&["usage"]);
        assert!(
            table.contains("LEDGER FLAGGED") && table.contains("audit verify"),
            "{table}"
        );
        // The server's metrics count the findings and the renewals.
        let metrics = client()
            .get(format!("{}/metrics", vendor.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in [
            "leasehold_server_ledger_findings_total{kind=\"replaced\"} 1",
            "leasehold_server_ledger_findings_total{kind=\"went-backwards\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        let renewed: f64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("leasehold_server_renewals_total{decision=\"renewed\",reason=\"\"} ")
            })
            .unwrap_or_else(|| panic!("{metrics}"))
            .parse()
            .unwrap();
        assert!(renewed >= 6.0, "{metrics}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_down_lapses_the_node_and_its_return_revives_it() {
        let (mut vendor, node) = vendor_with_node("6s", "3s");
        let server = node.serve(&vendor);
        let http = client();
        assert_eq!(chat(&http, &server).await.0, 200);

        vendor.stop();
        let stopped = Instant::now();
        // Serving continues through lease + grace, then 403 license_expired.
        assert!(
            eventually(Duration::from_secs(20), async || phase(&http, &server)
                .await
                == "lapsed")
            .await
        );
        assert!(
            stopped.elapsed() >= Duration::from_secs(3),
            "lapsed too early"
        );
        let (status, body) = chat(&http, &server).await;
        assert_eq!(status, 403);
        assert_eq!(body["error"]["code"], "license_expired");
        let state = license_state(&http, &server).await;
        assert!(state["renewal"]["consecutive_failures"].as_u64().unwrap() > 0);

        // The server returns on the same address: service comes back, no node restart.
        let pid = server.pid();
        vendor.start();
        assert!(
            eventually(Duration::from_secs(20), async || phase(&http, &server)
                .await
                == "serving")
            .await
        );
        assert_eq!(chat(&http, &server).await.0, 200);
        assert_eq!(server.pid(), pid);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoking_a_node_stops_it_and_spares_the_others() {
        let mut vendor = Vendor::new(None, &[]);
        vendor.start();
        vendor.entitle(2, "6s", "30s");
        let (a, b) = (Node::new(&vendor), Node::new(&vendor));
        for n in [&a, &b] {
            let id = n.enroll_ok(&vendor);
            vendor.admin_ok(&["approve", &id]);
        }
        let (sa, sb) = (a.serve(&vendor), b.serve(&vendor));
        let http = client();
        let node_a = license_state(&http, &sa).await["node_id"]
            .as_str()
            .unwrap()
            .to_string();

        vendor.admin_ok(&["revoke", "--node", &node_a, "--reason", "contract ended"]);
        let revoked_at = Instant::now();
        // Within one renewal interval (half of the 6 s lease, plus jitter), not grace.
        assert!(
            eventually(Duration::from_secs(8), async || phase(&http, &sa).await
                == "lapsed")
            .await
        );
        assert!(revoked_at.elapsed() < Duration::from_secs(8));
        let state = license_state(&http, &sa).await;
        assert_eq!(state["revoked"], true);
        assert!(state["renewal"]["refused"]
            .as_str()
            .unwrap()
            .contains("contract ended"));
        let (status, body) = chat(&http, &sa).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("license_expired"))
        );
        assert!(
            !a.path().join("node.license").exists(),
            "the revoked license is moved aside"
        );

        // The other node renews on and serves.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(phase(&http, &sb).await, "serving");
        assert_eq!(chat(&http, &sb).await.0, 200);
        let listed = vendor.admin_json(&["list"]);
        let statuses: Vec<bool> = listed["licenses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["revoked_at"].is_null())
            .collect();
        assert_eq!(statuses.iter().filter(|active| **active).count(), 1);

        // A restarted revoked node is refused with its own exit code.
        drop(sa);
        let out = leasehold(a.path(), &as_strs(&serve_args(&vendor.url())));
        assert_eq!(
            out.status.code(),
            Some(22),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));

        // Put the revoked license back and start without the license server: its lease is
        // still in grace, but the node remembers the revocation in its signed state.
        std::fs::rename(
            a.path().join("node.license.revoked"),
            a.path().join("node.license"),
        )
        .unwrap();
        let out = leasehold(
            a.path(),
            &[
                "serve",
                "--license",
                "node.license",
                "--sealed",
                "m.sealed",
                "--node-dir",
                "node",
                "--listen",
                "127.0.0.1:0",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(22), "{stderr}");
        assert!(stderr.contains("revoked"), "{stderr}");
    }
}

// Serves requests: needs the inference runtime.
#[cfg(feature = "inference")]
#[test]
fn an_entitlement_mandates_its_watermark_and_filter_in_every_lease() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.add_model();
    std::fs::write(
        vendor.path().join("rules.toml"),
        "terms = [\"Project Albatross\"]\npatterns = ['[0-9]{3}-[0-9]{2}-[0-9]{4}']\n",
    )
    .unwrap();
    std::fs::write(
        vendor.path().join("unbounded.toml"),
        "patterns = ['secret.*']\n",
    )
    .unwrap();
    let entitle = |extra: &[&str]| vendor.try_entitle(1, "1h", "0s", extra);
    // Safeguards that a node could not apply are refused when entitling.
    for bad in [
        &["--watermark", "gamma=1.5,delta=2"][..],
        &["--filter-rules", "unbounded.toml"][..],
    ] {
        let out = entitle(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
    }
    ok(
        &entitle(&[
            "--watermark",
            "gamma=0.5,delta=3.0",
            "--filter-rules",
            "rules.toml",
        ]),
        "admin entitle",
    );
    let listed = vendor.admin_json(&["entitlements"]);
    let safeguards = &listed["entitlements"][0]["safeguards"];
    assert_eq!(safeguards["watermark"]["gamma"], 0.5);
    assert_eq!(safeguards["output_filter"]["terms"][0], "Project Albatross");

    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    // The first lease (fetched by serve) and a renewal (by files) both mandate them,
    // with the same watermark key: text from either lease is one license's text.
    let p = node.path();
    let first = {
        let mut server = node.serve(&vendor);
        let url = server.url("/v1/license");
        let license: Value = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() });
        assert_eq!(license["safeguards"]["watermark"]["delta"], 3.0);
        let _ = server.child.kill();
        let _ = server.child.wait();
        std::fs::read(p.join("node.license")).unwrap()
    };
    let renew = |args: &[&str]| ok(&renew_by_file(p, args), &format!("renew {args:?}"));
    renew(&["--request-out", "req.json"]);
    vendor.answer_renewal_file(p, "req.json", "resp.json");
    renew(&["--response", "resp.json"]);
    let second = std::fs::read(p.join("node.license")).unwrap();
    let identity = leasehold::node::NodeIdentity::load(&p.join("node")).unwrap();
    let keys: Vec<[u8; 32]> = [first, second]
        .iter()
        .map(|bytes| {
            let license = leasehold::license::verify::authenticate(
                bytes,
                &leasehold::license::TrustRoots::compiled_in(),
            )
            .unwrap();
            let body = &license.body;
            assert_eq!(body.features, ["output-filter", "watermark"]);
            assert_eq!(
                body.output_filter.as_ref().unwrap().terms,
                ["Project Albatross"]
            );
            let guards =
                leasehold::runtime::safeguards::Safeguards::from_license(body, &identity).unwrap();
            let watermark = guards.watermark.unwrap();
            let leasehold::watermark::Params::Kgw(kgw) = watermark.params else {
                panic!("kgw")
            };
            assert_eq!((kgw.gamma, kgw.delta), (0.5, 3.0));
            *watermark.key.as_bytes()
        })
        .collect();
    assert_eq!(keys[0], keys[1]);
}

#[test]
fn an_entitlement_for_n_nodes_refuses_the_next_approval() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(2, "1h", "0s");
    // Enrollments are only requests: all three are pending, none holds a seat.
    let ids: Vec<String> = (0..3)
        .map(|_| Node::new(&vendor).enroll_ok(&vendor))
        .collect();
    let enrolled =
        |v: &Vendor| v.admin_json(&["entitlements"])["entitlements"][0]["enrolled"].clone();
    assert_eq!(enrolled(&vendor), 0);
    vendor.admin_ok(&["approve", &ids[0]]);
    vendor.admin_ok(&["approve", &ids[1]]);
    assert_eq!(enrolled(&vendor), 2);
    // The third approval finds the seats taken.
    let out = vendor.admin(&["approve", &ids[2]]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("covers 2 node(s), and all are taken by approved nodes"),
        "{stderr}"
    );
    assert_eq!(enrolled(&vendor), 2);
    // It stays pending (the refused approval changed nothing), and denying it frees nothing.
    let pending = vendor.admin_json(&["enrollments"]);
    assert_eq!(pending["enrollments"][0]["id"], ids[2].as_str());
    vendor.admin_ok(&["deny", &ids[2]]);
    assert_eq!(enrolled(&vendor), 2);
    // Another organization has no entitlement at all.
    let stranger = Node::new(&vendor);
    let out = leasehold(
        stranger.path(),
        &[
            "enroll",
            "--node-dir",
            "node",
            "--server",
            &vendor.url(),
            "--org",
            "Other Org",
            "--model",
            "tiny",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no current entitlement"));
}

/// An enrollment for our organization and the tiny model from a key the flooder made.
fn flood_enrollment(dir: &Path) -> Vec<u8> {
    use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse, LicenseRequest};
    use leasehold::node::hardware::ComponentKind;
    let (identity, _) = leasehold::node::NodeIdentity::load_or_create(dir).unwrap();
    let choice = BindingChoice {
        components: Some(vec![ComponentKind::MachineId, ComponentKind::Hostname]),
        required: Some(vec![ComponentKind::MachineId]),
        min_others: Some(0),
    };
    enrollment::create(
        &identity,
        &common::machine_a(),
        &choice,
        DeclaredUse {
            use_case: "squatting".into(),
            data_handling: "none".into(),
            security_measures: String::new(),
        },
        Some(LicenseRequest {
            organization: ORG.into(),
            model_id: "tiny".into(),
        }),
        chrono::Utc::now(),
    )
    .unwrap()
    .render()
    .into_bytes()
}

// Serves requests: needs the inference runtime.
#[cfg(feature = "inference")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_flood_takes_no_seat_and_is_rate_limited() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start_with(&[
        "--enrollments-per-address",
        "5",
        "--enrollments-per-org",
        "8",
    ]);
    vendor.entitle(1, "1h", "0s");
    // The real node enrolls (from 127.0.0.1).
    let node = Node::new(&vendor);
    let real = node.enroll_ok(&vendor);

    // Someone outside submits enrollments of keys they made, from two addresses:
    // more than the organization's one seat, more than the limits.
    let keys = TempDir::new().unwrap();
    let url = format!("{}/v1/enrollments", vendor.url());
    let flood = async |from: [u8; 4], n: usize, first: usize| -> Vec<reqwest::Response> {
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(from))
            .build()
            .unwrap();
        let mut answers = Vec::new();
        for i in first..first + n {
            let document = flood_enrollment(&keys.path().join(i.to_string()));
            answers.push(http.post(&url).body(document).send().await.unwrap());
        }
        answers
    };
    let statuses = |answers: &[reqwest::Response]| -> Vec<u16> {
        answers.iter().map(|r| r.status().as_u16()).collect()
    };
    // Per address: 5 a minute, then 429 with Retry-After.
    let first = flood([127, 0, 0, 2], 7, 0).await;
    assert_eq!(statuses(&first), [201, 201, 201, 201, 201, 429, 429]);
    let retry: u64 = first[5].headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Per organization: 8 a minute from anywhere (1 real + 5 above + 2 more).
    let second = flood([127, 0, 0, 3], 4, 7).await;
    assert_eq!(statuses(&second), [201, 201, 429, 429]);
    let refusal: Value = second.into_iter().nth(2).unwrap().json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "rate_limited");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("for organization '{ORG}'")),
        "{refusal}"
    );

    // Eight pending enrollments for one seat, and the seat is still free: the vendor
    // approves the real node.
    let pending = vendor.admin_json(&["enrollments"]);
    assert_eq!(pending["enrollments"].as_array().unwrap().len(), 8);
    let entitlement = &vendor.admin_json(&["entitlements"])["entitlements"][0];
    assert_eq!(entitlement["enrolled"], 0);
    vendor.admin_ok(&["approve", &real]);
    let squatter = pending["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] != real.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(vendor.admin(&["approve", &squatter]).status.code(), Some(1));
    let _ = node.serve(&vendor);
    assert!(node.path().join("node.license").exists());

    let metrics = reqwest::get(format!("{}/metrics", vendor.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "leasehold_server_rejected_requests_total{endpoint=\"enrollments\",reason=\"rate-limited\"} 4"
        ),
        "{metrics}"
    );
}

// Serves requests: needs the inference runtime.
#[cfg(feature = "inference")]
#[test]
fn air_gapped_renewal_by_files_and_replays_refused() {
    let (vendor, node) = vendor_with_node("1h", "0s");
    let p = node.path();
    // First license, by request file too.
    let first = {
        let mut server = node.serve(&vendor);
        let _ = server.child.kill();
        let _ = server.child.wait();
        std::fs::read(p.join("node.license")).unwrap()
    };
    let renew = |args: &[&str]| renew_by_file(p, args);
    ok(
        &renew(&["--request-out", "req1.json"]),
        "renew --request-out",
    );
    vendor.answer_renewal_file(p, "req1.json", "resp1.json");
    let out = ok(&renew(&["--response", "resp1.json"]), "renew --response");
    assert!(out.contains("serial 2"), "{out}");
    assert_ne!(std::fs::read(p.join("node.license")).unwrap(), first);

    // The same response again: no request is pending.
    let out = renew(&["--response", "resp1.json"]);
    assert_eq!(out.status.code(), Some(1));
    // A new request, answered with the old response: nonce mismatch.
    ok(&renew(&["--request-out", "req2.json"]), "second request");
    let out = renew(&["--response", "resp1.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replayed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A forged response (one signature byte changed) is refused.
    vendor.answer_renewal_file(p, "req2.json", "resp2.json");
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(p.join("resp2.json")).unwrap()).unwrap();
    let sig = doc["signature"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    doc["signature"] = Value::String(format!("{flipped}{}", &sig[1..]));
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push('\n');
    std::fs::write(p.join("forged.json"), text).unwrap();
    let out = renew(&["--response", "forged.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed by a trusted issuer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The genuine one still works.
    let out = ok(
        &renew(&["--response", "resp2.json"]),
        "renew --response resp2",
    );
    assert!(out.contains("serial 3"), "{out}");
}

/// POST a renewal request body to `{base}/v1/renewals`: the status and the JSON answer.
async fn post_renewal(http: &reqwest::Client, base: &str, body: &[u8]) -> (u16, Value) {
    let response = http
        .post(format!("{base}/v1/renewals"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A renewal request for the tiny model signed with the node's key, as sent at `sent_at`.
fn signed_request(
    identity: &leasehold::node::NodeIdentity,
    usage: UsageCheckpoint,
    sent_at: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let current = leasehold::protocol::LicenseRef {
        license_id: "0".repeat(32),
        serial: 0,
    };
    leasehold::protocol::sign_request(identity, "tiny", Some(current), usage, sent_at)
        .0
        .render()
        .into_bytes()
}

/// Usage at ledger checkpoint `seq`, continuing checkpoint `reported` when given.
fn at_checkpoint(seq: u64, reported: Option<u64>) -> UsageCheckpoint {
    UsageCheckpoint {
        since: None,
        requests: seq,
        prompt_tokens: 10 * seq,
        completion_tokens: 10 * seq,
        ledger: Some(LedgerPosition {
            ledger_id: [7; 32],
            seq,
            hash: [seq as u8; 32],
            reported: reported.map(|s| leasehold::protocol::LedgerAnchor {
                seq: s,
                hash: [s as u8; 32],
            }),
        }),
        tpm_rollbacks: None,
    }
}

async fn metric(vendor: &Vendor, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", vendor.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

// Serves requests: needs the inference runtime.
#[cfg(feature = "inference")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_stale_renewal_request_is_refused_and_plants_no_finding() {
    use chrono::{Duration as Span, Utc};
    let (vendor, node) = vendor_with_node("1h", "0s");
    let p = node.path();
    let http = client();
    let url = vendor.url();
    drop(node.serve(&vendor)); // the node's first license, to write requests with

    // A request the node wrote, captured, sent twice verbatim: renewed once, then refused.
    ok(
        &renew_by_file(p, &["--request-out", "req.json"]),
        "renew --request-out",
    );
    let captured = std::fs::read(p.join("req.json")).unwrap();
    let (status, answer) = post_renewal(&http, &url, &captured).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post_renewal(&http, &url, &captured).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "replayed_request");

    // The honest node reports ledger checkpoint 5, then 9. Its request of checkpoint 5,
    // replayed, would make the ledger look rolled back: refused before the comparison.
    let identity = leasehold::node::NodeIdentity::load(&p.join("node")).unwrap();
    let earlier = signed_request(&identity, at_checkpoint(5, None), Utc::now());
    assert_eq!(post_renewal(&http, &url, &earlier).await.0, 200);
    let later = signed_request(&identity, at_checkpoint(9, Some(5)), Utc::now());
    assert_eq!(post_renewal(&http, &url, &later).await.0, 200);
    // (The serve above may have reported its real ledger before it was stopped, which
    // the first made-up checkpoint then replaces: only the replay must add nothing.)
    let before = ledger_findings(&vendor);
    assert!(before.iter().all(|f| f.contains("replaced")), "{before:?}");
    assert_eq!(post_renewal(&http, &url, &earlier).await.0, 409);
    assert_eq!(ledger_findings(&vendor), before);

    // Signed 10 minutes ago, or 10 minutes ahead: outside the 5-minute window.
    for offset in [Span::minutes(-10), Span::minutes(10)] {
        let stale = signed_request(&identity, UsageCheckpoint::default(), Utc::now() + offset);
        let (status, answer) = post_renewal(&http, &url, &stale).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "request_time_skewed");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("Set the node's clock"), "{message}");
    }
    // A node whose clock is 10 minutes behind (Debian's faketime) writes a request: the
    // server refuses it; the vendor can still submit it as an air-gapped file, once.
    let out = common::node::faketime_command(
        "-10m",
        &[
            "renew",
            "--node-dir",
            "node",
            "--license",
            "node.license",
            "--request-out",
            "old.json",
        ],
    )
    .current_dir(p)
    .output()
    .unwrap();
    ok(&out, "renew --request-out under faketime");
    let old = std::fs::read(p.join("old.json")).unwrap();
    assert_eq!(post_renewal(&http, &url, &old).await.0, 403);
    std::fs::write(vendor.path().join("old.json"), &old).unwrap();
    vendor.admin_ok(&["renew", "--request", "old.json", "--response-out", "a.json"]);
    let again = vendor.admin(&["renew", "--request", "old.json", "--response-out", "b.json"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("was received before"));

    let rejected = "leasehold_server_rejected_requests_total{endpoint=\"renewals\",";
    assert_eq!(
        metric(&vendor, &format!("{rejected}reason=\"replayed\"}}")).await,
        Some(3.0)
    );
    assert_eq!(
        metric(&vendor, &format!("{rejected}reason=\"time-skewed\"}}")).await,
        Some(3.0)
    );
    // None of it stopped the server: the next genuine request renews.
    let fresh = signed_request(&identity, at_checkpoint(12, Some(9)), Utc::now());
    assert_eq!(post_renewal(&http, &url, &fresh).await.0, 200);
    assert_eq!(ledger_findings(&vendor), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_request_replayed_to_another_replica_is_refused() {
    use chrono::{Duration as Span, Utc};
    use leasehold::node::NodeIdentity;

    let Some(admin_url) = postgres_url() else {
        return;
    };
    let db = TempDatabase::create(&admin_url);
    let (a, b, node) = two_replicas_with_node(&db);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    let http = client();
    let request = signed_request(&identity, at_checkpoint(5, None), Utc::now());
    assert_eq!(post_renewal(&http, &a.url(), &request).await.0, 200);
    // Captured on the way to A, replayed to B, then to A: each replica knows the nonce.
    for replica in [&b, &a] {
        let (status, answer) = post_renewal(&http, &replica.url(), &request).await;
        assert_eq!(status, 409, "{answer}");
        assert_eq!(answer["error"]["code"], "replayed_request");
    }
    // The same request sent to both at once: one renewal, one refusal.
    let raced = signed_request(&identity, at_checkpoint(9, Some(5)), Utc::now());
    let (url_a, url_b) = (a.url(), b.url());
    let (to_a, to_b) = tokio::join!(
        post_renewal(&http, &url_a, &raced),
        post_renewal(&http, &url_b, &raced)
    );
    let mut statuses = [to_a.0, to_b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let stale = signed_request(
        &identity,
        UsageCheckpoint::default(),
        Utc::now() - Span::minutes(10),
    );
    assert_eq!(post_renewal(&http, &b.url(), &stale).await.0, 403);
    assert_eq!(ledger_findings(&b), Vec::<String>::new());
}

#[test]
fn an_issuer_out_of_scope_is_refused() {
    // Certified for another organization: the server refuses to entitle ours.
    let mut other_org = Vendor::new(
        None,
        &[
            "--org",
            "Someone Else",
            "--model",
            "tiny",
            "--max-lease",
            "1h",
        ],
    );
    other_org.start();
    other_org.add_model();
    let out = other_org.try_entitle(1, "1h", "0s", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not cover organization"));

    // A lease longer than the certificate's maximum is refused at entitle time.
    let mut short = Vendor::new(
        None,
        &["--org", ORG, "--model", "tiny", "--max-lease", "10m"],
    );
    short.start();
    short.add_model();
    let out = short.try_entitle(1, "1h", "0s", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("maximum lease"));
}

/// Send `n` signed renewal requests at once, spread over `urls`; the serials and
/// license ids of the licenses that came back (each response verified).
async fn renew_concurrently(
    identity: &leasehold::node::NodeIdentity,
    urls: &[String],
    n: usize,
) -> (Vec<u64>, std::collections::HashSet<String>) {
    renew_reporting(identity, urls, n, UsageCheckpoint::default()).await
}

/// As [`renew_concurrently`], each request reporting `usage`.
/// The license a renewal response grants, checked as the node checks it.
fn renewed_license(
    bytes: &[u8],
    node_id: &str,
    nonce: [u8; 16],
) -> leasehold::license::verify::VerifiedLicense {
    use leasehold::license::TrustRoots;
    use leasehold::protocol::{self, Decision, Expected};
    let opened = protocol::open_response(
        bytes,
        &TrustRoots::compiled_in(),
        &Expected {
            node_id,
            nonce,
            scope: Some((ORG, "tiny")),
        },
    )
    .unwrap();
    let Decision::Renewed { license } = opened.body.decision else {
        panic!("not renewed: {:?}", opened.body.decision);
    };
    leasehold::license::verify::authenticate(license.as_bytes(), &TrustRoots::compiled_in())
        .unwrap()
}

async fn renew_reporting(
    identity: &leasehold::node::NodeIdentity,
    urls: &[String],
    n: usize,
    usage: UsageCheckpoint,
) -> (Vec<u64>, std::collections::HashSet<String>) {
    use leasehold::node::clock;
    use leasehold::protocol::{self, LicenseRef};

    let http = client();
    let node_id = identity.public().node_id();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = urls[i % urls.len()].clone();
        let http = http.clone();
        let (request, nonce) = protocol::sign_request(
            identity,
            "tiny",
            Some(LicenseRef {
                license_id: "0".repeat(32),
                serial: 0,
            }),
            usage.clone(),
            clock::system_now(),
        );
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(format!("{url}/v1/renewals"))
                .body(request.render())
                .send()
                .await
                .ok()?;
            Some((response.bytes().await.ok()?.to_vec(), nonce))
        }));
    }
    let mut serials = Vec::new();
    let mut license_ids = std::collections::HashSet::new();
    for t in tasks {
        // A request cut off by a killed server has no answer: it was not acknowledged.
        let Some((bytes, nonce)) = t.await.unwrap() else {
            continue;
        };
        let verified = renewed_license(&bytes, &node_id, nonce);
        serials.push(verified.body.serial);
        license_ids.insert(verified.body.license_id);
    }
    (serials, license_ids)
}

/// Send `n` signed renewal requests at once to `url`; as soon as `k` of them have been
/// answered, `kill -9` the process `pid`. The serials of the answered renewals (each
/// response verified) and how many requests got no answer.
async fn renew_and_kill_after(
    identity: &leasehold::node::NodeIdentity,
    url: &str,
    n: usize,
    k: usize,
    pid: u32,
) -> (Vec<u64>, usize) {
    use leasehold::node::clock;
    use leasehold::protocol::{self, LicenseRef};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let http = client();
    let answered = Arc::new(AtomicUsize::new(0));
    let (reached, kth) = tokio::sync::oneshot::channel::<()>();
    let reached = Arc::new(Mutex::new(Some(reached)));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (request, nonce) = protocol::sign_request(
            identity,
            "tiny",
            Some(LicenseRef {
                license_id: "0".repeat(32),
                serial: 0,
            }),
            UsageCheckpoint::default(),
            clock::system_now(),
        );
        let (http, url) = (http.clone(), url.to_string());
        let (answered, reached) = (answered.clone(), reached.clone());
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(format!("{url}/v1/renewals"))
                .body(request.render())
                .send()
                .await
                .ok()?;
            let bytes = response.bytes().await.ok()?.to_vec();
            if answered.fetch_add(1, Ordering::SeqCst) + 1 == k {
                if let Some(reached) = reached.lock().unwrap().take() {
                    let _ = reached.send(());
                }
            }
            Some((bytes, nonce))
        }));
    }
    // Waiting for the k-th answer (a condition), then kill at once.
    tokio::time::timeout(Duration::from_secs(60), kth)
        .await
        .expect("the server should answer k renewals within a minute")
        .unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let node_id = identity.public().node_id();
    let (mut serials, mut unanswered) = (Vec::new(), 0);
    for t in tasks {
        let Some((bytes, nonce)) = t.await.unwrap() else {
            unanswered += 1;
            continue;
        };
        let verified = renewed_license(&bytes, &node_id, nonce);
        serials.push(verified.body.serial);
    }
    (serials, unanswered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_loses_no_acknowledged_renewal_on_kill_9() {
    use leasehold::node::NodeIdentity;

    let (mut vendor, node) = vendor_with_node("1h", "0s");
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    // 300 renewals at once; kill -9 as soon as 20 are answered, the rest in flight.
    let pid = vendor.server.as_ref().unwrap().pid();
    let (acknowledged, unanswered) =
        renew_and_kill_after(&identity, &vendor.url(), 300, 20, pid).await;
    // Some but not all were acknowledged: the kill cut renewals off mid-way.
    assert!(
        acknowledged.len() >= 20,
        "{} acknowledged",
        acknowledged.len()
    );
    assert!(
        unanswered > 0,
        "all 300 renewals were answered before the kill: it tested no crash mid-write"
    );
    vendor.stop();
    vendor.start();
    let listed = vendor.admin_json(&["list"]);
    let stored = listed["licenses"][0]["serial"].as_u64().unwrap();
    let highest = *acknowledged.iter().max().unwrap();
    assert!(
        stored >= highest,
        "serial {highest} was acknowledged but the database holds {stored} after kill -9"
    );
    // And the next renewal continues above everything handed out.
    let (next, _) = renew_concurrently(&identity, &[vendor.url()], 1).await;
    assert!(next[0] > highest);
    eprintln!(
        "{} renewals acknowledged before kill -9, {unanswered} cut off; stored serial {stored}",
        acknowledged.len()
    );
}

/// Two license server replicas on one PostgreSQL database (the same issuer and token,
/// each its own process and port) and a node enrolled through B, approved through A.
fn two_replicas_with_node(db: &TempDatabase) -> (Vendor, Vendor, Node) {
    let mut a = Vendor::new(Some(db.url()), &[]);
    a.start();
    let mut b = Vendor {
        dir: TempDir::new().unwrap(),
        db: db.url(),
        server: None,
        addr: None,
        tls: false,
    };
    for f in [
        "issuer.key",
        "issuer.cert",
        "admin.token",
        "m.sealed",
        "m.key",
    ] {
        std::fs::copy(a.path().join(f), b.path().join(f)).unwrap();
    }
    b.start();
    a.entitle(2, "1h", "0s");
    let node = Node::new(&a);
    let id = node.enroll_ok(&b);
    assert!(a.admin_ok(&["enrollments"]).contains(&id));
    a.admin_ok(&["approve", &id]);
    (a, b, node)
}

/// A node's count of refused rolled-back states (TPM nodes' `tpm_rollbacks`), reported
/// through `urls` in turn: the first report is the baseline, the same count again is
/// nothing, a higher one is flagged once, on every replica.
async fn rollback_counts_are_flagged_when_they_rise(
    identity: &leasehold::node::NodeIdentity,
    urls: &[String],
    vendors: &[&Vendor],
) {
    let usage = |seq: u64, rollbacks: Option<u64>| UsageCheckpoint {
        since: None,
        requests: seq,
        prompt_tokens: 0,
        completion_tokens: 0,
        ledger: None,
        tpm_rollbacks: rollbacks,
    };
    let findings = |v: &Vendor, kind: &str| {
        v.admin_json(&["usage"])["nodes"][0]["ledger_findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.as_str().unwrap().contains(kind))
            .count()
    };
    let (first, last) = (&urls[..1], &urls[urls.len() - 1..]);
    renew_reporting(identity, first, 1, usage(1, Some(3))).await;
    renew_reporting(identity, last, 1, usage(2, Some(3))).await;
    for v in vendors {
        assert_eq!(
            findings(v, "state-rolled-back"),
            0,
            "a first count and the same again are no finding"
        );
    }
    renew_reporting(identity, last, 1, usage(3, Some(5))).await;
    for v in vendors {
        assert_eq!(findings(v, "state-rolled-back"), 1);
        let all = v.admin_json(&["usage"]).to_string();
        assert!(
            all.contains("refused 2 rolled-back or removed node state(s) since its last report"),
            "{all}"
        );
    }
    renew_reporting(identity, first, 1, usage(4, Some(5))).await;
    for v in vendors {
        assert_eq!(findings(v, "state-rolled-back"), 1, "flagged once");
    }
    // A count that goes down (another counter) or goes missing (a deleted one) cannot
    // be trusted: flagged when it starts, not at every report.
    renew_reporting(identity, last, 1, usage(5, Some(4))).await;
    renew_reporting(identity, first, 1, usage(6, Some(4))).await;
    for v in vendors {
        assert_eq!(findings(v, "rollback-count-unverified"), 1);
    }
    renew_reporting(identity, last, 1, usage(7, None)).await;
    renew_reporting(identity, first, 1, usage(8, None)).await;
    for v in vendors {
        assert_eq!(findings(v, "rollback-count-unverified"), 2);
        assert_eq!(findings(v, "state-rolled-back"), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_count_of_refused_rolled_back_states_is_a_finding() {
    use leasehold::node::NodeIdentity;
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(1, "1h", "0s");
    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    rollback_counts_are_flagged_when_they_rise(&identity, &[vendor.url()], &[&vendor]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_hand_out_serials_that_never_repeat() {
    use leasehold::node::NodeIdentity;

    let Some(admin_url) = postgres_url() else {
        return;
    };
    let db = TempDatabase::create(&admin_url);
    let (a, b, node) = two_replicas_with_node(&db);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();

    // Renewals through either replica, many at once.
    let (serials, license_ids) = renew_concurrently(&identity, &[a.url(), b.url()], 40).await;
    let mut serials = serials;
    serials.sort_unstable();
    let n = serials.len();
    serials.dedup();
    assert_eq!(serials.len(), n, "a serial was handed out twice");
    assert_eq!(license_ids.len(), 1, "one license per enrollment");
    // Both replicas see the same state.
    let (la, lb) = (a.admin_json(&["list"]), b.admin_json(&["list"]));
    assert_eq!(la, lb);
    assert_eq!(
        la["licenses"][0]["serial"].as_u64().unwrap(),
        *serials.last().unwrap()
    );

    // Ledger checkpoints compared across replicas: reported through A, then an older
    // one through B is flagged, and both replicas list the finding.
    let at = |seq: u64, requests: u64| UsageCheckpoint {
        since: None,
        requests,
        prompt_tokens: 10 * requests,
        completion_tokens: 10 * requests,
        ledger: Some(LedgerPosition {
            ledger_id: [7; 32],
            seq,
            hash: [seq as u8; 32],
            reported: None,
        }),
        tpm_rollbacks: None,
    };
    renew_reporting(&identity, &[a.url()], 1, at(9, 4)).await;
    renew_reporting(&identity, &[b.url()], 1, at(5, 2)).await;
    let usage = b.admin_json(&["usage"]);
    let findings = usage["nodes"][0]["ledger_findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{usage}");
    assert!(findings[0].as_str().unwrap().contains("went-backwards"));
    assert_eq!(usage["nodes"], a.admin_json(&["usage"])["nodes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_flag_a_rising_rollback_count() {
    use leasehold::node::NodeIdentity;

    let Some(admin_url) = postgres_url() else {
        return;
    };
    let db = TempDatabase::create(&admin_url);
    let (a, b, node) = two_replicas_with_node(&db);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    rollback_counts_are_flagged_when_they_rise(&identity, &[a.url(), b.url()], &[&a, &b]).await;
}

// Serves requests: needs the inference runtime.
#[cfg(feature = "inference")]
#[test]
fn tls_listener_with_a_private_ca() {
    let mut vendor = Vendor::new(None, &[]);
    let p = vendor.path().to_path_buf();
    std::fs::write(
        p.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let steps: Vec<Vec<&str>> = vec![
        [
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=Test CA",
            ],
        ]
        .concat(),
        [
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for step in steps {
        let made = std::process::Command::new("openssl")
            .args(&step)
            .current_dir(&p)
            .output()
            .expect("openssl (scripts/setup.sh installs it)");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    vendor.tls = true;
    vendor.start();
    assert!(vendor.server.as_ref().unwrap().base.starts_with("https://"));

    // Without trusting the private CA the client refuses the server.
    let url = vendor.url();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args([
            "admin",
            "--server",
            &url,
            "--token-file",
            "admin.token",
            "list",
        ])
        .current_dir(&p)
        .env_remove(CA_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // With it, the whole flow runs over HTTPS.
    vendor.entitle(1, "1h", "0s");
    let node = Node::new(&vendor);
    let id = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &id]);
    let out = leasehold(
        node.path(),
        &[
            "renew",
            "--node-dir",
            "node",
            "--license",
            "node.license",
            "--request-out",
            "r.json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "no license yet");
    let server = node.serve(&vendor);
    assert!(server
        .stderr()
        .contains("license received from https://localhost:"));
}

/// A license body as JSON, signed as is (values no issuing path writes).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct RawLicense(Value);

impl leasehold::format::Body for RawLicense {
    const KIND: leasehold::format::DocumentKind = leasehold::format::DocumentKind::License;
    const VERSION: u32 = 1;
}

#[test]
fn a_license_with_an_overflowing_grace_is_refused_by_check_and_inspect() {
    use leasehold::format::{DocumentKind, Envelope};
    let site = common::node::NodeSite::new(None);
    site.issue("good.license", "+1d", &[]);
    let good = std::fs::read(site.path().join("good.license")).unwrap();
    let envelope = Envelope::parse(&good, DocumentKind::License).unwrap();
    let body: Value = serde_json::from_str(envelope.body.get()).unwrap();
    let root = common::demo_root();
    let ten_years = leasehold::license::body::MAX_GRACE_SECONDS;
    for grace in [u64::MAX, i64::MAX as u64, ten_years + 1] {
        let mut hostile = body.clone();
        hostile["grace_seconds"] = grace.into();
        let signed = Envelope::sign(&RawLicense(hostile), &root, vec![]).render();
        std::fs::write(site.path().join("hostile.license"), signed).unwrap();
        let runs = [
            vec!["inspect", "hostile.license", "--node-dir", "node"],
            vec![
                "check",
                "--license",
                "hostile.license",
                "--sealed",
                "m.sealed",
                "--node-dir",
                "node",
            ],
        ];
        for args in runs {
            let out = leasehold(site.path(), &args);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.status.code(),
                Some(18),
                "{args:?} grace {grace}: {text}"
            );
            assert!(
                text.contains("grace_seconds is out of range")
                    && text.contains(&format!("a grace of {grace} s is longer than")),
                "{args:?}: {text}"
            );
            assert!(!text.contains("panicked"), "{text}");
        }
    }
    // The same license with ten years of grace is fine.
    let mut longest = body.clone();
    longest["grace_seconds"] = ten_years.into();
    let signed = Envelope::sign(&RawLicense(longest), &root, vec![]).render();
    std::fs::write(site.path().join("longest.license"), signed).unwrap();
    let out = leasehold(site.path(), &["inspect", "longest.license"]);
    assert_eq!(out.status.code(), Some(0));
    // Issuing one is refused with the same message.
    let out = leasehold(
        site.path(),
        &[
            "issue",
            "--key",
            common::repo_path("keys/demo/root.key").to_str().unwrap(),
            "--enrollment",
            "node.enroll",
            "--sealed",
            "m.sealed",
            "--content-key",
            "m.key",
            "--licensee",
            "Example Org",
            "--expires",
            "+1d",
            "--grace",
            "20years",
            "--out",
            "x.license",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(10 years) a license may carry"));
}

#[test]
fn an_issuer_with_a_1h_max_lease_cannot_grant_30d_of_grace() {
    let mut vendor = Vendor::new(None, &[]); // certified with --max-lease 1h
    vendor.start();
    vendor.add_model();
    let out = vendor.try_entitle(1, "1h", "30d", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bounds lease and grace together"),
        "{stderr}"
    );
    assert_eq!(
        vendor.try_entitle(1, "50m", "10m", &[]).status.code(),
        Some(0)
    );
    // Signing by hand with the issuer key and its certificate: refused too, because a
    // node would refuse the license (issuer not authorized).
    let p = vendor.path();
    ok(
        &leasehold(p, &["enroll", "--node-dir", "node", "--out", "node.enroll"]),
        "enroll",
    );
    let issue = |expires: &str, grace: &str| {
        leasehold(
            p,
            &[
                "issue",
                "--key",
                "issuer.key",
                "--issuer-cert",
                "issuer.cert",
                "--enrollment",
                "node.enroll",
                "--sealed",
                "m.sealed",
                "--content-key",
                "m.key",
                "--licensee",
                ORG,
                "--expires",
                expires,
                "--grace",
                grace,
                "--out",
                "x.license",
            ],
        )
    };
    let out = issue("+1h", "30d");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("issuer not authorized") && stderr.contains("plus 2592000 s of grace"),
        "{stderr}"
    );
    ok(&issue("+50m", "10m"), "lease + grace within the maximum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_refused_and_the_server_keeps_answering() {
    use chrono::Utc;
    let (vendor, node) = vendor_with_node("1h", "0s");
    let http = client();
    let url = vendor.url();
    let admin = |path: &str, body: Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth("test-admin-token-0123456789abcdef")
            .json(&body)
            .send()
    };
    // Entitlements with grace or lease near the integer limits, bypassing the CLI.
    let entitle = |lease: u64, grace: u64| {
        json!({"org": ORG, "models": ["tiny"], "nodes": 1, "term_end": Utc::now() + chrono::Duration::days(1),
               "lease_seconds": lease, "grace_seconds": grace})
    };
    for (lease, grace, status) in [
        (60, u64::MAX, 400),
        (60, i64::MAX as u64, 400),
        (60, u64::MAX / 1000 + 1, 400),
        (u64::MAX, 0, 403),
        (i64::MAX as u64, 0, 403),
    ] {
        let response = admin("/admin/entitlements", entitle(lease, grace))
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "lease {lease} grace {grace}"
        );
        let answer: Value = response.json().await.unwrap();
        assert!(
            !answer["error"]["message"].as_str().unwrap().is_empty(),
            "{answer}"
        );
    }
    // A node reporting counters no ledger holds: refused. Near the limit, from three
    // runs: stored, and the sum in `admin usage` reported as an overflow, not a panic.
    let identity = leasehold::node::NodeIdentity::load(&node.path().join("node")).unwrap();
    let huge = |requests: u64, since: i64| UsageCheckpoint {
        since: chrono::DateTime::from_timestamp(since, 0),
        requests,
        prompt_tokens: requests,
        completion_tokens: requests,
        ledger: None,
        tpm_rollbacks: None,
    };
    let (status, answer) = post_renewal(
        &http,
        &url,
        &signed_request(&identity, huge(u64::MAX, 1), Utc::now()),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    for since in [1, 2, 3] {
        let request = signed_request(&identity, huge(i64::MAX as u64, since), Utc::now());
        assert_eq!(post_renewal(&http, &url, &request).await.0, 200);
    }
    let usage = vendor.admin_json(&["usage"]);
    assert_eq!(usage["nodes"][0]["requests"], u64::MAX);
    let findings = ledger_findings(&vendor);
    assert!(
        findings.iter().any(|f| f.starts_with("overflow")),
        "{findings:?}"
    );
    // The server still answers: health, and an ordinary renewal.
    let health = common::node::get_json(&http, &format!("{url}/health")).await;
    assert_eq!(health["status"], "ok");
    let request = signed_request(&identity, UsageCheckpoint::default(), Utc::now());
    assert_eq!(post_renewal(&http, &url, &request).await.0, 200);
}
