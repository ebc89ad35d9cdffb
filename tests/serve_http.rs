//! `leasehold serve` over real HTTP on loopback, with the tiny test model: the API,
//! its limits, keys, the lapse and the renewal, and refusals at start.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::node::{eventually, get_json, get_text, leasehold, post_json, NodeSite};
use leasehold::node::{trusted_time, NodeIdentity};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_openai_api_and_reports_the_license() {
    let site = NodeSite::new(None);
    site.issue(
        "x.license",
        "+1h",
        &["--grace", "5m", "--cap", "concurrent=4"],
    );
    let server = site.serve("x.license", &[]);
    let http = client();

    let models: Value = get_json(&http, &server.url("/v1/models")).await;
    assert_eq!(models["data"][0]["id"], "tiny");

    let response = http.get(server.url("/v1/license")).send().await.unwrap();
    assert_eq!(response.headers()["x-leasehold-license-phase"], "serving");
    let license: Value = response.json().await.unwrap();
    assert_eq!(license["phase"], "serving");
    assert_eq!(license["licensee"], "Example Org");
    assert_eq!(license["caps"]["concurrent"], 4);
    assert!(license["seconds_left"].as_i64().unwrap() > 3500);

    let chat = post_json(
        &http,
        &server.url("/v1/chat/completions"),
        &chat_body("hello", 8),
    )
    .await;
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert!(chat["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    let completion = post_json(
        &http,
        &server.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "once upon", "max_tokens": 5}),
    )
    .await;
    assert_eq!(completion["object"], "text_completion");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let mut body = chat_body("stream please", 6);
    body["stream"] = json!(true);
    let text = http
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let last: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(last["usage"]["completion_tokens"].as_u64().is_some());

    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_with_clear_messages() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let server = site.serve("x.license", &["--ctx", "64"]);
    let http = client();
    let post = |body: Vec<u8>| {
        http.post(server.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |r: reqwest::Response, status: u16| async move {
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
        v
    };

    let huge = json!({"messages": [{"role": "user", "content": "x".repeat(2 << 20)}]});
    let v = check(post(huge.to_string().into_bytes()).await.unwrap(), 400).await;
    assert_eq!(v["error"]["code"], "request_too_large");

    check(post(b"{not json".to_vec()).await.unwrap(), 400).await;

    let v = check(
        post(chat_body("hi", 100_000).to_string().into_bytes())
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["param"], "max_tokens");

    let v = check(
        post(
            chat_body(&"many words ".repeat(200), 4)
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    let mut other = chat_body("hi", 4);
    other["model"] = json!("gpt-4");
    let v = check(post(other.to_string().into_bytes()).await.unwrap(), 404).await;
    assert_eq!(v["error"]["code"], "model_not_found");

    // Still serving after all that.
    assert_eq!(
        post(chat_body("hi", 2).to_string().into_bytes())
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_the_admin_token_are_required_when_configured() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    std::fs::write(site.path().join("keys.txt"), "# clients\nk-alpha\nk-beta\n").unwrap();
    std::fs::write(site.path().join("admin.txt"), "admin-secret-0123456789\n").unwrap();
    let server = site.serve(
        "x.license",
        &[
            "--api-key-file",
            "keys.txt",
            "--admin-token-file",
            "admin.txt",
        ],
    );
    let http = client();
    let chat = |key: Option<&'static str>| {
        let mut r = http
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("hi", 2));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(chat(None).await.unwrap().status(), 401);
    assert_eq!(chat(Some("k-gamma")).await.unwrap().status(), 401);
    assert_eq!(chat(Some("k-beta")).await.unwrap().status(), 200);
    // The license endpoint stays public for monitoring (phase, time left), but who
    // holds the license and for which model only a client with a key learns; the same
    // for /metrics. The signed attestation needs a key.
    let public: Value = get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(public["phase"], "serving");
    assert!(
        public["licensee"].is_null() && public["model_id"].is_null(),
        "{public}"
    );
    let keyed: Value = http
        .get(server.url("/v1/license"))
        .bearer_auth("k-alpha")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keyed["licensee"], "Example Org");
    let metrics = get_text(&http, &server.url("/metrics")).await;
    assert!(metrics.contains("leasehold_license_seconds_left"));
    assert!(
        !metrics.contains("Example Org") && !metrics.contains("model_id="),
        "{metrics}"
    );
    let metrics = http
        .get(server.url("/metrics"))
        .bearer_auth("k-beta")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("licensee=\"Example Org\""), "{metrics}");
    let attestation = http
        .get(server.url("/v1/license/attestation"))
        .send()
        .await
        .unwrap();
    assert_eq!(attestation.status(), 401);
    let license = std::fs::read(site.path().join("x.license")).unwrap();
    let admin = http
        .post(server.url("/admin/license"))
        .bearer_auth("k-alpha")
        .body(license.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
    // The same license again is not a renewal (serial not higher): refused, still serving.
    let admin = http
        .post(server.url("/admin/license"))
        .bearer_auth("admin-secret-0123456789")
        .body(license)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 422);
    let v: Value = admin.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not higher"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapse_wipes_the_weights_and_a_renewal_brings_service_back() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let mut server = site.serve("x.license", &[]);
    let http = client();
    let chat_url = server.url("/v1/chat/completions");
    let chat = || http.post(&chat_url).json(&chat_body("hi", 2)).send();
    assert!(server.holds_weights());
    assert_eq!(chat().await.unwrap().status(), 200);
    // Once serving, a renewal to a short lease: its clock starts now, not before the
    // (possibly slow) start.
    site.issue("x.license", "+3s", &["--grace", "4s"]);
    server.signal("HUP");

    // Grace: still serving, and every response says so.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let r = chat().await.unwrap();
            r.status() == 200
                && r.headers()["x-leasehold-license-phase"] == "grace"
                && r.headers().contains_key("warning")
        })
        .await,
        "no grace phase seen"
    );
    // Lapsed: 403 license_expired, weights gone.
    assert!(
        eventually(Duration::from_secs(10), async || chat()
            .await
            .unwrap()
            .status()
            == 403)
        .await,
        "did not lapse"
    );
    let refused: Value = chat().await.unwrap().json().await.unwrap();
    assert_eq!(refused["error"]["code"], "license_expired");
    let license: Value = get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(license["phase"], "lapsed");
    assert_eq!(
        http.get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert!(
        eventually(Duration::from_secs(5), async || !server.holds_weights()).await,
        "a memfd is still mapped or open after lapse"
    );
    assert!(
        server.wait_exit(Duration::from_millis(100)).is_none(),
        "the process stays up for a renewal"
    );

    // A renewal (higher serial) through SIGHUP: service returns without a restart.
    tokio::time::sleep(Duration::from_millis(5)).await;
    site.issue("x.license", "+1h", &[]);
    server.signal("HUP");
    assert!(
        eventually(Duration::from_secs(30), async || chat()
            .await
            .unwrap()
            .status()
            == 200)
        .await,
        "service did not come back after SIGHUP: {}",
        server.stderr()
    );
    assert!(server.holds_weights());
    let license: Value = get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(license["phase"], "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_on_lapse_exits_with_the_expired_code() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+3s", &[]);
    let mut server = site.serve("x.license", &["--exit-on-lapse"]);
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(12),
        "{}",
        server.stderr()
    );
}

#[test]
fn refusals_at_start_use_the_documented_exit_codes() {
    let site = NodeSite::new(None);
    let now = Utc::now();
    let rfc = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    site.issue(
        "expired.license",
        &rfc(now - chrono::Duration::hours(1)),
        &["--not-before", &rfc(now - chrono::Duration::days(1))],
    );
    site.issue("good.license", "+1h", &[]);
    let serve = |license: &str, node: &str| {
        leasehold(
            site.path(),
            &[
                "serve",
                "--license",
                license,
                "--sealed",
                "m.sealed",
                "--node-dir",
                node,
                "--listen",
                "127.0.0.1:0",
            ],
        )
    };
    let expect = |out: std::process::Output, code: i32, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(needle), "no '{needle}' in {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("serving model"));
    };
    expect(serve("expired.license", "node"), 12, "expired");

    site.ok(&["enroll", "--node-dir", "node2", "--out", "node2.enroll"]);
    expect(serve("good.license", "node2"), 14, "wrong machine");

    let mut bytes = std::fs::read(site.path().join("good.license")).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(site.path().join("tampered.license"), bytes).unwrap();
    expect(serve("tampered.license", "node"), 15, "tampered");

    let identity = NodeIdentity::load(&site.path().join("node")).unwrap();
    trusted_time::record(&identity, now + chrono::Duration::days(30)).unwrap();
    expect(serve("good.license", "node"), 13, "clock rolled back");
}

#[test]
fn run_answers_one_prompt_and_refuses_an_expired_license() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let args = |license: &'static str| {
        NodeSite::run_args(
            license,
            &[
                "--prompt",
                "hello",
                "--max-tokens",
                "8",
                "--temperature",
                "0",
            ],
        )
    };
    let out = leasehold(site.path(), &args("x.license"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.ends_with(b"\n"));

    let now = Utc::now();
    let rfc = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    site.issue(
        "old.license",
        &rfc(now - chrono::Duration::hours(1)),
        &["--not-before", &rfc(now - chrono::Duration::days(1))],
    );
    let out = leasehold(site.path(), &args("old.license"));
    assert_eq!(out.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
}
