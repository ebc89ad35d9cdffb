//! The portal in a real headless Chromium (WebDriver), against a real `license-server`
//! and a real `serve`: the vendor signs in and invites an organization; the
//! organization applies; the vendor approves with a cap; a node enrolls and serves chat
//! requests; the organization's usage chart shows them; the vendor requests an audit
//! of the organization, the node answers it at its next renewal, and the report's CSV
//! download equals `leasehold audit report` on the node's ledger. Screenshots of each
//! page are saved under the target directory (`tmp/portal-screenshots/`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::node::eventually;
use common::vendor::{Node, Vendor, ADMIN_TOKEN, ORG};
use common::webdriver::{browser_prerequisites, Driver};
use serde_json::json;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_in_a_browser_from_invitation_to_the_usage_chart() {
    let Some((driver_path, browser_path)) = browser_prerequisites() else {
        return;
    };
    let shots = screenshots();
    let _ = std::fs::remove_dir_all(&shots);
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.add_model();
    let base = vendor.url();
    let driver = Driver::start(&driver_path, &browser_path).await;

    // The vendor signs in with the admin token and invites the organization.
    let staff = driver.session().await;
    staff.goto(&format!("{base}/portal/")).await;
    staff.screenshot(&shots, "01-sign-in").await;
    staff.fill("#token", ADMIN_TOKEN).await;
    staff.click("button[type=submit]").await;
    staff.wait_for_url("/portal/applications").await;
    staff.goto(&format!("{base}/portal/orgs")).await;
    staff.fill("#org", ORG).await;
    staff.click("main button[type=submit]").await;
    staff.wait_for_text("invitation-link").await;
    let link = staff.text("#invitation-link").await;
    staff.screenshot(&shots, "02-invitation").await;
    assert!(
        link.starts_with(&format!("{base}/portal/invitations/")),
        "{link}"
    );

    // The organization opens the link, makes its account and applies.
    let org = driver.session().await;
    org.goto(&link).await;
    org.screenshot(&shots, "03-accept-invitation").await;
    org.fill("#contact", "Dana Ortiz").await;
    org.click("main button[type=submit]").await;
    org.wait_for_text("access-token").await;
    let token = org.text("#access-token").await;
    assert!(token.len() >= 40);
    org.screenshot(&shots, "04-account").await;
    org.goto(&format!("{base}/portal/applications/new")).await;
    org.fill("#model_id", "tiny").await;
    org.fill("#nodes", "1").await;
    org.fill("#term_days", "90").await;
    org.select("#track", "academic").await;
    org.fill("#use_case", "Summarising support tickets for our help desk")
        .await;
    org.fill(
        "#downstream_applications",
        "An internal help-desk tool, 40 agents",
    )
    .await;
    org.fill(
        "#data_handling",
        "Prompts stay on the node; nothing is logged",
    )
    .await;
    org.fill("#security_measures", "VPN only, SSO, audit logging")
        .await;
    org.screenshot(&shots, "05-apply").await;
    org.click("main button[type=submit]").await;
    let application_url = org.wait_for_url("/portal/applications/").await;
    assert_eq!(org.text("#status").await, "submitted");
    org.screenshot(&shots, "06-submitted").await;

    // The vendor reviews it in its queue and approves with a cap of 100 requests a day.
    staff.goto(&format!("{base}/portal/applications")).await;
    assert!(staff.source().await.contains("Acme Corp"));
    staff.screenshot(&shots, "07-review-queue").await;
    staff.goto(&application_url).await;
    // A short lease: the node renews every few seconds (and answers an audit then).
    staff.fill("#lease", "20s").await;
    staff.fill("#grace", "5m").await;
    staff.fill("#caps", "requests-per-day=100").await;
    staff.screenshot(&shots, "08-review").await;
    staff.click("#approve").await;
    staff.wait_for_text(">approved</span>").await;
    staff.screenshot(&shots, "09-approved").await;
    let entitlements = vendor.admin_json(&["entitlements"]);
    assert_eq!(
        entitlements["entitlements"][0]["caps"]["requests_per_day"],
        100
    );

    // A node enrolls under the entitlement, the vendor approves it in its queue, and it
    // serves three chat requests, reporting its usage ledger every second.
    let node = Node::new(&vendor);
    let enrollment = node.enroll_ok(&vendor);
    staff.goto(&format!("{base}/portal/enrollments")).await;
    assert!(staff.source().await.contains("support chat"));
    staff.screenshot(&shots, "10-enrollments").await;
    staff.click(&format!("#approve-{enrollment}")).await;
    staff.wait_for_text("No node waits for approval").await;
    let server = node.serve_with(&vendor, &["--checkpoint-interval", "1"]);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let response = http
            .post(server.url("/v1/chat/completions"))
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // The organization's usage page charts them (today: 3 requests).
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let bar = format!("{today}: 3</title>");
    let shown = eventually(Duration::from_secs(30), async || {
        org.goto(&format!("{base}/portal/usage")).await;
        org.source().await.contains(&bar)
    })
    .await;
    assert!(
        shown,
        "the usage page never showed {bar}:\n{}",
        org.source().await
    );
    org.screenshot(&shots, "11-usage").await;
    staff
        .goto(&format!("{base}/portal/orgs/{}", ORG.replace(' ', "%20")))
        .await;
    assert!(staff.source().await.contains(&bar));
    assert!(staff.source().await.contains("cap 100"));
    staff.screenshot(&shots, "12-oversight").await;

    // The vendor requests an audit of the organization from its overview: from
    // yesterday (before the node started) until now.
    let node_dir = node.path().join("node");
    let node_id = leasehold::node::NodeIdentity::load(&node_dir)
        .unwrap()
        .public()
        .node_id();
    staff.click("#request-audit-of-org").await;
    staff.wait_for_url("/portal/audits?org=").await;
    assert_eq!(
        staff.value("#org").await,
        ORG,
        "the form names the organization"
    );
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = leasehold::format::time::rfc3339(chrono::Utc::now());
    staff.fill("#from", &yesterday).await;
    staff.fill("#to", &now).await;
    staff
        .fill("#note", "Quarterly audit <b>Q</b> & usage")
        .await;
    staff.screenshot(&shots, "13-request-audit").await;
    staff.click("#request-audit").await;
    let audit_url = staff.wait_for_url("/portal/audits/audit-").await;
    let audit_id = audit_url.rsplit('/').next().unwrap().to_string();
    assert_eq!(staff.text("#status").await, "open");
    assert_eq!(
        staff.text("#note").await,
        "Quarterly audit <b>Q</b> & usage",
        "the note is shown as typed, as text"
    );

    // The serving node answers after its next renewal (every few seconds).
    let status = format!("#node-status-{node_id}");
    let answered = eventually(Duration::from_secs(60), async || {
        staff.goto(&audit_url).await;
        staff.text(&status).await == "answered"
    })
    .await;
    let license = common::node::get_json(&http, &server.url("/v1/license")).await;
    assert!(
        answered,
        "the node never answered audit {audit_id}: {}\n/v1/license: {license}\nnode log:\n{}",
        staff.source().await,
        server.stderr()
    );
    assert_eq!(
        license["renewal"]["audit"]["audit_id"],
        audit_id.as_str(),
        "{license}"
    );
    assert!(
        license["renewal"]["audit"]["answered_at"].is_string(),
        "{license}"
    );
    assert!(
        license["renewal"]["audit"]["last_error"].is_null(),
        "{license}"
    );
    assert_eq!(staff.text("#status").await, "complete");
    staff.screenshot(&shots, "14-audit-answered").await;
    staff.goto(&format!("{base}/portal/audits")).await;
    assert!(staff.source().await.contains(&audit_id));
    staff.screenshot(&shots, "15-audits").await;
    // The organization sees it too.
    org.goto(&audit_url).await;
    assert_eq!(org.text(&status).await, "answered");
    org.screenshot(&shots, "16-audit-for-the-organization")
        .await;

    // The CSV download (with the staff session) is `audit report` on the node's ledger
    // for the audit's period exactly as stored.
    let shown = vendor.admin_json(&["audit", "show", &audit_id]);
    let (from, to) = (
        shown["from"].as_str().unwrap().to_string(),
        shown["to"].as_str().unwrap().to_string(),
    );
    assert_eq!(from, format!("{yesterday}T00:00:00Z"));
    assert_eq!(to, now);
    assert_eq!(shown["nodes"][0]["via"], "upload", "{shown}");
    assert_eq!(shown["nodes"][0]["totals"]["requests"], 3, "{shown}");
    let expected = common::vendor::ok(
        &common::audit::report(node.path(), &from, &to, "quarter", "csv"),
        "audit report",
    );
    let csv_url = format!("{audit_url}/nodes/{node_id}/report.csv");
    let session = staff.cookie("leasehold_session").await;
    let download = http
        .get(&csv_url)
        .header("cookie", format!("leasehold_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(
        download.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let csv = download.text().await.unwrap();
    assert_eq!(csv, expected);
    assert!(
        csv.lines().nth(1).is_some_and(|row| row.contains(",3,")),
        "{csv}"
    );

    for name in [
        "01-sign-in",
        "05-apply",
        "11-usage",
        "12-oversight",
        "13-request-audit",
        "14-audit-answered",
        "15-audits",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}");
    }
    staff.close().await;
    org.close().await;
    drop(server);
    vendor.stop();
}
