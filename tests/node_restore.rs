//! Issue 13, attack 3: restore a backup of the node directory (as a VM snapshot would),
//! performed the way a hostile operator would: `cp -a` of the live node directory right
//! after a renewal, requests served, one checkpoint interval passed, the node stopped,
//! the backup put back with `cp -a`, the node started again. Nothing on the node can
//! tell; the license server must flag it from the node's checkpoint reports.
//!
//! Real processes on loopback: `leasehold license-server` (SQLite), `leasehold serve`
//! with the tiny test model and `--checkpoint-interval 1`, the `admin` CLI.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{eventually, get_json, Server};
use common::vendor::{Node, Vendor, ADMIN_TOKEN, ORG};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The vendor (an issuer certified by the demo root, the tiny model sealed, a running
/// license server) and one customer node directory, enrolled and approved.
struct Site {
    vendor: Vendor,
    node: Node,
}

impl Site {
    fn new(lease: &str, grace: &str) -> Site {
        // The max lease bounds lease + grace together.
        let mut vendor = Vendor::new(
            None,
            &["--org", ORG, "--model", "tiny", "--max-lease", "2h"],
        );
        vendor.start();
        vendor.entitle(1, lease, grace);
        let node = Node::new(&vendor);
        let id = node.enroll_ok(&vendor);
        vendor.admin_ok(&["approve", &id]);
        Site { vendor, node }
    }

    fn node_path(&self) -> &Path {
        self.node.path()
    }

    /// `leasehold admin ARGS` against the license server; its output.
    fn admin(&self, args: &[&str]) -> String {
        self.vendor.admin_ok(args)
    }

    /// The ledger findings `admin usage --json` lists for the node.
    fn findings(&self) -> Vec<String> {
        let usage: Value = serde_json::from_str(&self.admin(&["--json", "usage"])).unwrap();
        usage["nodes"][0]["ledger_findings"]
            .as_array()
            .unwrap_or_else(|| panic!("no ledger_findings in {usage}"))
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect()
    }

    /// `leasehold serve` with the license server, reporting every second.
    fn serve(&self) -> Server {
        self.node
            .serve_with(&self.vendor, &["--checkpoint-interval", "1"])
    }
}

/// `cp -a FROM TO` in `dir`, as the operator would.
fn cp_a(dir: &Path, from: &str, to: &str) {
    let status = Command::new("cp")
        .args(["-a", from, to])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {from} {to}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn renewal_state(http: &reqwest::Client, node: &Server) -> Value {
    get_json(http, &node.url("/v1/license")).await["renewal"].clone()
}

/// Checkpoint reports the node has had acknowledged since it started.
async fn reports(http: &reqwest::Client, node: &Server) -> u64 {
    renewal_state(http, node).await["checkpoints"]["reports"]
        .as_u64()
        .unwrap_or(0)
}

/// Wait until the node has sent `more` further checkpoint reports, so that the last
/// one began after everything before this call.
async fn reports_pass(http: &reqwest::Client, node: &Server, more: u64) {
    let before = reports(http, node).await;
    let passed = eventually(Duration::from_secs(20), async || {
        reports(http, node).await >= before + more
    })
    .await;
    assert!(
        passed,
        "{more} checkpoint report(s) expected in 20 s: {}\n{}",
        renewal_state(http, node).await,
        node.stderr()
    );
}

async fn chat(http: &reqwest::Client, node: &Server) {
    let response = http
        .post(node.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// The findings as the admin API lists them (polled: cheaper than the CLI).
async fn api_findings(http: &reqwest::Client, site: &Site) -> Vec<Value> {
    let usage: Value = http
        .get(format!("{}/admin/usage", site.vendor.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    usage["nodes"][0]["ledger_findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_node_directory_is_flagged_by_the_license_server_at_its_first_report() {
    // A 20 s lease renews after about 10 s; the grace keeps the restored (older) license
    // servable when the node starts again.
    let site = Site::new("20s", "5m");
    let http = client();
    let mut node = site.serve();

    // Right after a renewal, a hot backup of the node directory and its license.
    let renewed = eventually(Duration::from_secs(30), async || {
        renewal_state(&http, &node).await["renewals"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert!(renewed, "no renewal in 30 s: {}", node.stderr());
    std::fs::create_dir(site.node_path().join("backup")).unwrap();
    cp_a(site.node_path(), "node", "backup/node");
    cp_a(site.node_path(), "node.license", "backup/node.license");

    // Requests the backup does not hold, then one checkpoint interval (a report that
    // began after them).
    for _ in 0..3 {
        chat(&http, &node).await;
    }
    reports_pass(&http, &node, 2).await;
    let acknowledged = renewal_state(&http, &node).await["checkpoints"]["acknowledged_seq"]
        .as_u64()
        .unwrap();
    node.stop();
    // Control: an honest stop and restart is not flagged.
    let mut node = site.serve();
    reports_pass(&http, &node, 2).await;
    assert_eq!(site.findings(), Vec::<String>::new());
    node.stop();

    // The attack: put the backup back, as it was, and start again.
    std::fs::remove_dir_all(site.node_path().join("node")).unwrap();
    std::fs::remove_file(site.node_path().join("node.license")).unwrap();
    cp_a(site.node_path(), "backup/node", "node");
    cp_a(site.node_path(), "backup/node.license", "node.license");
    let restarted = Instant::now();
    let node = site.serve();
    let listening = restarted.elapsed();
    let flagged = eventually(Duration::from_secs(30), async || {
        !api_findings(&http, &site).await.is_empty()
    })
    .await;
    let detected = restarted.elapsed();
    assert!(
        flagged,
        "the restore was not flagged within 30 s: {}",
        node.stderr()
    );
    // By the checkpoint report sent at start (the node counts it once it has checked
    // the receipt), not by a renewal (the restored license has seconds left: its first
    // renewal comes after half of them).
    let reported = eventually(Duration::from_secs(5), async || {
        reports(&http, &node).await >= 1
    })
    .await;
    let state = renewal_state(&http, &node).await;
    assert!(reported, "{state}");
    assert_eq!(state["renewals"], 0, "{state}");
    eprintln!(
        "restored node directory flagged {:.2} s after the restart (serve listening after {:.2} s; the server held checkpoint {acknowledged} of the ledger before the stop)",
        detected.as_secs_f64(),
        listening.as_secs_f64()
    );

    // The vendor sees it in `admin usage`: the ledger went backwards behind the
    // checkpoint the server acknowledged before the stop.
    let findings = site.findings();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].contains("went-backwards"), "{findings:?}");
    let table = site.admin(&["usage"]);
    assert!(table.contains("LEDGER FLAGGED"), "{table}");
    // The requests the backup does not hold were reported before the stop: the vendor
    // still counts them.
    let usage: Value = serde_json::from_str(&site.admin(&["--json", "usage"])).unwrap();
    assert!(
        usage["nodes"][0]["requests"].as_u64().unwrap() >= 3,
        "{usage}"
    );
    // The node went on serving (flagged, not refused), and reports on from the restored
    // ledger without further findings.
    chat(&http, &node).await;
    reports_pass(&http, &node, 2).await;
    assert_eq!(site.findings().len(), 1, "{:?}", site.findings());
}

/// POST a checkpoint report document to the license server: (status, body).
async fn post_report(http: &reqwest::Client, site: &Site, document: String) -> (u16, String) {
    let response = http
        .post(format!("{}/v1/checkpoints", site.vendor.url()))
        .header("content-type", "application/json")
        .body(document)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_reports_replayed_out_of_the_skew_window_or_not_from_the_enrolled_node_are_refused(
) {
    use leasehold::node::NodeIdentity;
    use leasehold::protocol::checkpoint::{sign_report, CheckpointReceiptBody};
    use leasehold::protocol::{open_answer, Expected, LedgerPosition, LicenseRef, UsageCheckpoint};

    let site = Site::new("1h", "1h");
    let http = client();
    // The node fetches its license and reports once; then the operator, who holds the
    // node key, crafts reports of its own.
    let mut node = site.serve();
    reports_pass(&http, &node, 1).await;
    node.stop();
    let identity = NodeIdentity::load(&site.node_path().join("node")).unwrap();
    let license: Value =
        serde_json::from_slice(&std::fs::read(site.node_path().join("node.license")).unwrap())
            .unwrap();
    let license = LicenseRef {
        license_id: license["body"]["license_id"].as_str().unwrap().to_string(),
        serial: license["body"]["serial"].as_u64().unwrap(),
    };
    let usage = UsageCheckpoint {
        since: None,
        requests: 1_000,
        prompt_tokens: 0,
        completion_tokens: 0,
        ledger: Some(LedgerPosition {
            ledger_id: [7; 32],
            seq: 1_000,
            hash: [7; 32],
            reported: None,
        }),
        tpm_rollbacks: None,
    };
    let report = |license: LicenseRef, sent_at: chrono::DateTime<chrono::Utc>| {
        sign_report(&identity, "tiny", license, usage.clone(), sent_at)
    };
    let now = chrono::Utc::now();

    // Sent 10 minutes ago (a captured report replayed) or 10 minutes ahead: refused.
    for sent_at in [
        now - chrono::Duration::minutes(10),
        now + chrono::Duration::minutes(10),
    ] {
        let (status, body) =
            post_report(&http, &site, report(license.clone(), sent_at).0.render()).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("more than 300 s"), "{body}");
    }
    // Another license id than the server issued to this node: refused.
    let other = LicenseRef {
        license_id: "00".repeat(16),
        serial: 1,
    };
    let (status, body) = post_report(&http, &site, report(other, now).0.render()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("names license"), "{body}");
    // Signed by a key that is not the enrolled node's (a node id that is not its
    // key's, or a signature that does not match): refused.
    let stranger_dir = TempDir::new().unwrap();
    let (stranger, _) = NodeIdentity::load_or_create(&stranger_dir.path().join("node")).unwrap();
    let (document, _) = sign_report(&stranger, "tiny", license.clone(), usage.clone(), now);
    let (status, body) = post_report(&http, &site, document.render()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no enrollment"), "{body}");
    // The node's report under the stranger's signature, or under the stranger's key.
    let mut forged = report(license.clone(), now).0;
    forged.signature = document.signature;
    let (status, body) = post_report(&http, &site, forged.render()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not signed by the node key"), "{body}");
    forged.signer = document.signer;
    let (status, body) = post_report(&http, &site, forged.render()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not signed by the node key"), "{body}");
    assert_eq!(
        site.findings(),
        Vec::<String>::new(),
        "refused reports record nothing"
    );

    // Control: the same report sent now is taken (and, naming another ledger, flagged),
    // and its receipt verifies as the node verifies it.
    let (document, nonce) = report(license, now);
    let (status, body) = post_report(&http, &site, document.render()).await;
    assert_eq!(status, 200, "{body}");
    let node_id = identity.public().node_id();
    let (receipt, _) = open_answer::<CheckpointReceiptBody>(
        body.as_bytes(),
        &leasehold::license::TrustRoots::compiled_in(),
        &Expected {
            node_id: &node_id,
            nonce,
            scope: Some((ORG, "tiny")),
        },
    )
    .unwrap();
    assert_eq!(receipt.acknowledged.seq, 1_000);
    let findings = site.findings();
    assert!(
        findings.len() == 1 && findings[0].contains("replaced"),
        "{findings:?}"
    );
    // The same report replayed (within the window): refused, and it records nothing.
    let (status, body) = post_report(&http, &site, document.render()).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("received before"), "{body}");
    assert_eq!(site.findings(), findings, "a replay records nothing");
}
