//! Operations: config files and their precedence, `config check`, Prometheus
//! `/metrics` (parsed with a text-format parser and compared with `/v1/license`), JSON
//! logs, shell completions and man pages.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::node::{get_json, leasehold, leasehold_env, post_json, NodeSite, Server};
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const CONFIG: &str = "# a node's settings
[serve]
license = \"x.license\"
sealed = \"m.sealed\"
node-dir = \"node\"
threads = 1
listen = \"127.0.0.1:PORT\"
";

#[test]
fn config_file_then_environment_then_flag() {
    let site = NodeSite::new(None);
    site.issue("x.license", "+1h", &[]);
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        site.path().join("node.toml"),
        CONFIG.replace("PORT", &file_port.to_string()),
    )
    .unwrap();
    let serve_at = |extra: &[&str], env: &[(&str, &Path)]| {
        let mut args = vec!["serve", "--config", "node.toml"];
        args.extend_from_slice(extra);
        let mut server = Server::start_env(site.path(), &args, env);
        let base = server.base.clone();
        server.stop();
        base
    };
    // The file alone: every required flag comes from it.
    assert_eq!(serve_at(&[], &[]), format!("http://127.0.0.1:{file_port}"));
    // The environment beats the file.
    let env_addr = format!("127.0.0.1:{env_port}");
    let env = [("LEASEHOLD_LISTEN", Path::new(&env_addr))];
    assert_eq!(serve_at(&[], &env), format!("http://{env_addr}"));
    // A flag beats both.
    let flag_addr = format!("127.0.0.1:{flag_port}");
    assert_eq!(
        serve_at(&["--listen", &flag_addr], &env),
        format!("http://{flag_addr}")
    );
    // LEASEHOLD_CONFIG names the file when --config does not.
    let out = leasehold_env(
        site.path(),
        &["serve", "--ledger", "other.ledger"],
        &[
            ("LEASEHOLD_CONFIG", Path::new("missing.toml")),
            ("LEASEHOLD_LISTEN", Path::new(&env_addr)),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read the config file missing.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad value in the environment is named.
    let out = leasehold_env(
        site.path(),
        &["serve", "--config", "node.toml"],
        &[("LEASEHOLD_PARALLEL", Path::new("lots"))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LEASEHOLD_PARALLEL"));
    // A batch that cannot hold one token of every sequence is a usage error.
    let out = leasehold(
        site.path(),
        &[
            "serve",
            "--config",
            "node.toml",
            "--parallel",
            "8",
            "--batch",
            "4",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--batch 4 is below --parallel 8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_names_each_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[serve]\nlisten = \"127.0.0.1:1\"\nparallel = \"many\"\nexit-on-lapse = \"yes\"\ncolour = 3\n\n[license-server]\ndb = \"sqlite:x.db\"\n\n[other]\na = 1\n",
    )
    .unwrap();
    let out = leasehold(dir.path(), &["config", "check", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "bad.toml:3: serve.parallel: invalid value 'many'",
        "bad.toml:4: serve.exit-on-lapse: a switch takes true or false",
        "bad.toml:5: serve.colour: unknown setting",
        "bad.toml:10: unknown table [other]",
    ] {
        assert!(err.contains(expected), "missing '{expected}' in:\n{err}");
    }
    // The same as JSON.
    let out = leasehold(dir.path(), &["config", "check", "bad.toml", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let lines: Vec<u64> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5, 10]);
    // A syntax error, with its line.
    std::fs::write(dir.path().join("broken.toml"), "[serve]\nlisten = \n").unwrap();
    let out = leasehold(dir.path(), &["config", "check", "broken.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.toml:2:"));
    // A good file: both tables, listed back.
    std::fs::write(
        dir.path().join("good.toml"),
        "[serve]\nlisten = \"0.0.0.0:8080\"\nparallel = 8\nexit-on-lapse = true\n[license-server]\ndb = \"postgres://u@h/db\"\n",
    )
    .unwrap();
    let out = leasehold(dir.path(), &["config", "check", "good.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sections"]["serve"]["parallel"], json!(["8"]));
    assert_eq!(v["sections"]["serve"]["exit-on-lapse"], true);
    assert_eq!(
        v["sections"]["license-server"]["db"],
        json!(["postgres://u@h/db"])
    );
}

/// Scrape `/metrics` and parse it as Prometheus text: name + sorted labels → value.
async fn scrape(http: &reqwest::Client, url: &str) -> HashMap<String, f64> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    assert!(!scrape.docs.is_empty(), "HELP lines expected");
    let mut out = HashMap::new();
    for s in scrape.samples {
        assert!(s.metric.starts_with("leasehold_"), "{}", s.metric);
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("unexpected sample {other:?}"),
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_license_endpoint() {
    let site = NodeSite::new(None);
    site.issue(
        "x.license",
        "+1h",
        &[
            "--cap",
            "requests-per-day=5",
            "--cap",
            "tokens-per-month=100000",
        ],
    );
    let mut server = site.serve("x.license", &["--log-format", "json"]);
    let http = reqwest::Client::new();
    let (mut prompt, mut completion) = (0.0, 0.0);
    for i in 0..4 {
        let body = json!({"model": "tiny", "max_tokens": 3 + i, "messages": [{"role": "user", "content": format!("hi {i}")}]});
        let v = post_json(&http, &server.url("/v1/chat/completions"), &body).await;
        prompt += v["usage"]["prompt_tokens"].as_f64().unwrap();
        completion += v["usage"]["completion_tokens"].as_f64().unwrap();
    }
    let m = scrape(&http, &server.url("/metrics")).await;
    let license = get_json(&http, &server.url("/v1/license")).await;
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
    let left = license["seconds_left"].as_f64().unwrap();
    assert!((get("leasehold_license_seconds_left{}") - left).abs() <= 2.0);
    assert_eq!(
        get("leasehold_license_serial{}"),
        license["serial"].as_f64().unwrap()
    );
    assert_eq!(get("leasehold_license_phase{phase=serving}"), 1.0);
    assert_eq!(get("leasehold_license_phase{phase=lapsed}"), 0.0);
    assert_eq!(get("leasehold_license_revoked{}"), 0.0);
    assert_eq!(get("leasehold_requests_total{outcome=ok}"), 4.0);
    assert_eq!(
        get("leasehold_tokens_total{kind=prompt,outcome=ok}"),
        prompt
    );
    assert_eq!(
        get("leasehold_tokens_total{kind=completion,outcome=ok}"),
        completion
    );
    assert!(get("leasehold_generated_tokens_total{}") >= completion);
    assert_eq!(
        get("leasehold_usage{kind=requests,window=day}"),
        license["usage"]["requests_today"].as_f64().unwrap()
    );
    assert_eq!(get("leasehold_cap_limit{cap=requests-per-day}"), 5.0);
    assert_eq!(get("leasehold_queue_depth{}"), 0.0);
    assert!(get("leasehold_ledger_seq{}") >= 4.0);
    assert_eq!(get("leasehold_ledger_lag_records{}"), 0.0);
    assert!(m.contains_key("leasehold_decode_tokens_per_second{}"));

    // Over the cap: counted by outcome, logged once as a JSON event.
    for _ in 0..3 {
        let r = http
            .post(server.url("/v1/completions"))
            .json(&json!({"model": "tiny", "prompt": "x", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        let _ = r.text().await;
    }
    let m = scrape(&http, &server.url("/metrics")).await;
    assert_eq!(
        m["leasehold_requests_total{outcome=refused:license_cap_exceeded}"],
        2.0
    );
    server.stop();
    let log = server.stderr();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    let cap_events: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("license cap reached")
        })
        .collect();
    assert_eq!(cap_events.len(), 1, "{log}");
    assert_eq!(cap_events[0]["level"], "WARN");
    assert_eq!(cap_events[0]["cap"], "requests-per-day");
    assert!(events.iter().any(|e| e["message"]
        .as_str()
        .unwrap_or("")
        .contains("weights in memory")));
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = leasehold(dir.path(), &["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("license-server") && script.contains("--ledger-prompt-hash"),
            "{shell}"
        );
    }
    let out = leasehold(dir.path(), &["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH leasehold"),
        "{page}"
    );
    let out = leasehold(dir.path(), &["man", "--out-dir", "man"]);
    assert!(out.status.success());
    for page in [
        "leasehold.1",
        "leasehold-serve.1",
        "leasehold-config-check.1",
        "leasehold-admin-revoke.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join("man").join(page)).unwrap();
        assert!(text.contains(".SH"), "{page}");
    }
    let serve = std::fs::read_to_string(dir.path().join("man/leasehold-serve.1")).unwrap();
    assert!(serve.contains("license\\-server") || serve.contains("license-server"));
}
