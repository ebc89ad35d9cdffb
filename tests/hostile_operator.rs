//! The license held against a hostile operator: root on the node, no binary patching,
//! only `rm`, `cp`, the clock (Debian's `faketime`, as an operator would run it), a
//! copy of old files and the HTTP API. Each test performs one attack from issue 13 on
//! real `leasehold` processes and checks that it fails.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::node::{faketime_command, get_json, get_text, NodeSite, Server};
use serde_json::{json, Value};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `leasehold serve` for `license` on the site, under `faketime -f spec`; its output
/// once it exits (it is expected to refuse).
fn serve_faked(site: &NodeSite, spec: &str, license: &str) -> Output {
    let args = NodeSite::serve_args(license, &[]);
    faketime_command(spec, &args)
        .current_dir(site.path())
        .output()
        .expect("run faketime")
}

async fn one_completion(server: &Server) {
    let http = reqwest::Client::new();
    let response = http
        .post(server.url("/v1/completions"))
        .json(&json!({"prompt": "hello", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn license_id(site: &NodeSite, license: &str) -> String {
    let out = site.ok(&["inspect", license, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["license"]["license_id"].as_str().unwrap().to_string()
}

fn state_file(site: &NodeSite) -> std::path::PathBuf {
    site.path().join("node/state.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_trusted_time_state_and_winding_the_clock_back_is_refused() {
    let site = NodeSite::new(None);
    site.issue("l.license", "+1h", &[]);
    let mut server = site.serve("l.license", &[]);
    one_completion(&server).await;
    server.stop();

    // Positive control: the state is there, and a clock an hour back is caught by it.
    assert!(state_file(&site).exists());
    let out = serve_faked(&site, "-30m", "l.license");
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));

    // The attack: delete the state, wind the clock back into the license's window.
    std::fs::remove_file(state_file(&site)).unwrap();
    let out = serve_faked(&site, "-30m", "l.license");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(
        err.contains("state.json") && err.contains("fresh license"),
        "says what was removed and how to recover: {err}"
    );
    // Without faking the clock too: a missing state is never a fresh start.
    let out = common::node::leasehold(
        site.path(),
        &["inspect", "l.license", "--node-dir", "node", "--json"],
    );
    assert_eq!(out.status.code(), Some(13));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "trusted-time-lost", "{v}");
    let check = common::node::leasehold(
        site.path(),
        &[
            "check",
            "--license",
            "l.license",
            "--sealed",
            "m.sealed",
            "--node-dir",
            "node",
        ],
    );
    assert_eq!(check.status.code(), Some(13), "{}", stderr(&check));
    assert!(
        !state_file(&site).exists(),
        "a refused start writes no state"
    );

    // Recovery: a license issued after everything the node recorded.
    std::thread::sleep(Duration::from_millis(1100));
    site.issue("fresh.license", "+1h", &[]);
    let mut server = site.serve("fresh.license", &[]);
    assert!(
        server.stderr().contains("re-established"),
        "{}",
        server.stderr()
    );
    server.stop();
    assert!(state_file(&site).exists());
    // ... and the old license is still refused with the clock wound back.
    let out = serve_faked(&site, "-30m", "l.license");
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
}

/// Debian's `faketime` run the default way fakes the process's monotonic clock too
/// (libfaketime hooks the C library's `clock_gettime`). Slowed to a tenth, a license
/// of 8 s would last 80 s of real time if the node trusted that clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_clock_slowed_by_faketime_does_not_slow_the_lapse() {
    // Positive control: the preload really slows what a C-library program sees as
    // its monotonic clock (measured against /proc/uptime, which it does not hook).
    let control = std::process::Command::new("python3")
        .args([
            "-c",
            "import time\nu=lambda: float(open('/proc/uptime').read().split()[0])\n\
             a, u0 = time.monotonic(), u()\nwhile u() - u0 < 1.0: pass\n\
             print(time.monotonic() - a)",
        ])
        .env("LD_PRELOAD", common::node::libfaketime())
        .env("FAKETIME", "+0 x0.1")
        .output()
        .unwrap();
    let seen: f64 = String::from_utf8_lossy(&control.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("control: {control:?}"));
    assert!(
        seen < 0.5,
        "faketime did not slow the monotonic clock: {seen}"
    );

    let site = NodeSite::new(None);
    let issued = Instant::now();
    site.issue("l.license", "+8s", &["--grace", "0s"]);
    let mut command = faketime_command("+0 x0.1", &NodeSite::serve_args("l.license", &[]));
    command.env_remove("FAKETIME_DONT_FAKE_MONOTONIC");
    let server = Server::start_command(site.path(), command);
    one_completion(&server).await;
    let http = reqwest::Client::new();
    loop {
        let status = http
            .post(server.url("/v1/completions"))
            .json(&json!({"prompt": "hello", "max_tokens": 1}))
            .send()
            .await
            .unwrap()
            .status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            issued.elapsed() < Duration::from_secs(30),
            "still serving 30 s after an 8 s license was issued: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let license: Value = get_json(&reqwest::Client::new(), &server.url("/v1/license")).await;
    assert_eq!(license["phase"], "lapsed", "{license}");
}

#[test]
fn a_license_seen_lapsing_is_never_served_again_whatever_the_clock_says() {
    let site = NodeSite::new(None);
    let issued = Instant::now();
    site.issue("short.license", "+5s", &[]);
    let mut server = site.serve("short.license", &["--exit-on-lapse"]);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(12));
    assert!(server.stderr().contains("lapsed"), "{}", server.stderr());

    // Set the clock back to 2 s after the license was issued: inside its window, and
    // within the rollback tolerance, so only the node's memory can refuse it.
    let back = issued.elapsed().as_secs() as i64 - 2;
    let spec = format!("-{back}s");
    let out = serve_faked(&site, &spec, "short.license");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(err.contains("saw this license lapse"), "{err}");

    // And after deleting the node's state: trusted time is lost, still refused.
    std::fs::remove_file(state_file(&site)).unwrap();
    let out = serve_faked(&site, &spec, "short.license");
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_clock_between_restarts_gains_nothing() {
    let site = NodeSite::new(None);
    site.issue("l.license", "+20s", &[]);
    // The wall clock frozen one second after issue, at every start.
    let frozen = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let http = reqwest::Client::new();
    let mut seconds_left = Vec::new();
    let mut refused = None;
    for _ in 0..10 {
        let args = NodeSite::serve_args("l.license", &[]);
        // A start that is refused exits with its code; one that serves announces itself.
        let probe = faketime_command(&frozen, &["inspect", "l.license", "--node-dir", "node"])
            .current_dir(site.path())
            .output()
            .unwrap();
        if !matches!(probe.status.code(), Some(0) | Some(10)) {
            let mut command = faketime_command(&frozen, &args);
            refused = command
                .current_dir(site.path())
                .output()
                .unwrap()
                .status
                .code();
            break;
        }
        let mut server = Server::start_command(site.path(), faketime_command(&frozen, &args));
        let state = get_json(&http, &server.url("/v1/license")).await;
        seconds_left.push(state["seconds_left"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_secs(3)).await;
        server.stop();
    }
    // Each start sees less time left than the one before, by at least the 3 s served:
    // the wall clock stood still, trusted time did not.
    for pair in seconds_left.windows(2) {
        assert!(
            pair[1] <= pair[0] - 3,
            "time served must count: seconds left at each start {seconds_left:?}"
        );
    }
    assert_eq!(
        refused,
        Some(12),
        "the 20 s license ends after at most 20 s served: {seconds_left:?}"
    );
    assert!(seconds_left.len() <= 7, "{seconds_left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_serial_put_back_after_a_renewal_is_refused() {
    let site = NodeSite::new(None);
    site.issue("old.license", "+1h", &["--serial", "1"]);
    let id = license_id(&site, "old.license");
    std::fs::copy(
        site.path().join("old.license"),
        site.path().join("node.license"),
    )
    .unwrap();
    let mut server = site.serve("node.license", &[]);
    // The vendor renews by file: same license id, higher serial; SIGHUP takes it over.
    site.issue(
        "node.license",
        "+2h",
        &["--serial", "2", "--license-id", &id],
    );
    server.signal("HUP");
    let http = reqwest::Client::new();
    assert!(
        common::node::eventually(Duration::from_secs(10), async || {
            get_json(&http, &server.url("/v1/license")).await["serial"] == 2
        })
        .await
    );
    server.stop();

    // The attack: put the older license back (it is still valid) and restart.
    std::fs::copy(
        site.path().join("old.license"),
        site.path().join("node.license"),
    )
    .unwrap();
    let out = common::node::leasehold(site.path(), &NodeSite::serve_args("node.license", &[]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(19), "{err}");
    assert!(err.contains("superseded"), "{err}");
}

/// Request ids of the ledger's `admitted` records.
fn admitted_ids(ledger: &Path) -> Vec<String> {
    let bytes = std::fs::read(ledger).unwrap();
    leasehold::ledger::record::each(&bytes)
        .flatten()
        .filter_map(|p| match p.body.entry {
            leasehold::ledger::record::Entry::Admitted { request_id, .. } => Some(request_id),
            _ => None,
        })
        .collect()
}

/// Open a streaming chat completion; the response id once the first token arrived.
async fn stream_until_first_token(
    http: &reqwest::Client,
    base: &str,
) -> (String, reqwest::Response) {
    let mut response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": 400,
            "temperature": 0.8,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    loop {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        // The first chunk carries the role; one with content is a token.
        for line in seen.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                return (v["id"].as_str().unwrap().to_string(), response);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_leaves_a_record_of_every_stream_that_got_a_token() {
    let Some((model, _python)) = common::demo_prerequisites() else {
        return;
    };
    let site = NodeSite::new(Some(&model));
    site.issue("l.license", "+1h", &[]);
    let server = site.serve("l.license", &["--parallel", "8"]);
    let http = reqwest::Client::new();
    let streams = futures_util::future::join_all(
        (0..8).map(|_| stream_until_first_token(&http, &server.base)),
    )
    .await;
    // Every stream has received a token: kill the node at once, mid-answer.
    server.signal("KILL");
    let ids: Vec<String> = streams.iter().map(|(id, _)| id.clone()).collect();
    let mut cut = 0;
    for (_, mut response) in streams {
        let mut rest = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        cut += usize::from(!rest.contains("[DONE]"));
    }
    assert!(
        cut > 0,
        "the kill must cut some streams for this test to mean anything"
    );

    let admitted = admitted_ids(&site.path().join("node/usage.ledger"));
    for id in &ids {
        assert!(
            admitted.contains(id),
            "stream {id} got tokens but has no ledger record"
        );
    }
    // The auditor sees them as interrupted requests.
    let out = site.ok(&["audit", "report", "node/usage.ledger", "--format", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["totals"]["interrupted"].as_u64().unwrap() >= cut as u64,
        "{report}"
    );
    assert_eq!(report["totals"]["requests"].as_u64(), Some(8), "{report}");
}

/// Let this test process open `n` more sockets than the default soft limit allows.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_do_not_stop_health_and_are_cut_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_open_files_limit();
    let site = NodeSite::new(None);
    site.issue("l.license", "+1h", &[]);
    let server = site.serve("l.license", &["--header-timeout", "3s"]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Each connection sends the start of a request and then nothing (slowloris).
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let opened = Instant::now();
    let http = reqwest::Client::new();
    let asked = Instant::now();
    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "health took {:?}",
        asked.elapsed()
    );
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "checked while all 1000 are open"
    );
    // The server closes every one of them at its header deadline; the test ends itself.
    let cut = futures_util::future::join_all(slow.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
    }))
    .await;
    let closed = cut.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        closed, 1000,
        "every slow connection is closed by the server"
    );
    assert!(opened.elapsed() < Duration::from_secs(10));
    let metrics = get_text(&http, &server.url("/metrics")).await;
    assert!(
        metrics.contains("leasehold_http_connections 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_queue_get_503_with_retry_after() {
    let site = NodeSite::new(None);
    site.issue("l.license", "+1h", &[]);
    let server = site.serve("l.license", &["--parallel", "1", "--queue", "1"]);
    let http = reqwest::Client::new();
    let long = || {
        http.post(server.url("/v1/completions"))
            .json(&json!({"prompt": "a", "max_tokens": 1500}))
            .send()
    };
    let answers = futures_util::future::join_all((0..8).map(|_| long())).await;
    let mut statuses: Vec<u16> = Vec::new();
    for a in answers {
        let a = a.unwrap();
        statuses.push(a.status().as_u16());
        if a.status() == 503 {
            assert!(a.headers().get("retry-after").is_some());
            let v: Value = a.json().await.unwrap();
            assert_eq!(v["error"]["code"], "queue_full", "{v}");
        }
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    // Each refusal is in the ledger.
    let bytes = std::fs::read(site.path().join("node/usage.ledger")).unwrap();
    let refused = leasehold::ledger::record::each(&bytes)
        .flatten()
        .filter(|p| {
            matches!(&p.body.entry, leasehold::ledger::record::Entry::Request { outcome, .. }
                if outcome.as_string() == "refused:queue_full")
        })
        .count();
    assert_eq!(refused, statuses.iter().filter(|s| **s == 503).count());
}

#[test]
fn a_public_listen_needs_api_keys_and_admin_tokens_need_16_characters() {
    let site = NodeSite::new(None);
    site.issue("l.license", "+1h", &[]);
    let mut args = NodeSite::serve_args("l.license", &[]);
    args[8] = "0.0.0.0:0";
    let out = common::node::leasehold(site.path(), &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--api-key-file") && err.contains("--allow-unauthenticated"),
        "{err}"
    );

    std::fs::write(site.path().join("admin.txt"), "short-token\n").unwrap();
    let out = common::node::leasehold(
        site.path(),
        &NodeSite::serve_args("l.license", &["--admin-token-file", "admin.txt"]),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("16 characters"), "{err}");

    // With the explicit opt-out, a public listen starts.
    args.push("--allow-unauthenticated");
    let mut server = Server::start(site.path(), &args);
    server.stop();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The memory and /proc tests act as root and as another user, as an operator can.
fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("LEASEHOLD_REQUIRE_ALL").is_none(),
        "these tests run as root (scripts/test.sh in CI does)"
    );
    eprintln!("skipped: needs root");
    false
}

/// A prober running as `nobody`: watches /proc/PID/fd of the process whose pid
/// appears in `pid_file` until `stop_file` exists, and reports what it could see.
const PROBER: &str = r#"
import json, os, sys, time
pid_file, stop_file = sys.argv[1], sys.argv[2]
seen = {"listed": 0, "denied": 0, "memfd_seen": 0, "memfd_read": 0}
while not os.path.exists(pid_file):
    time.sleep(0.0005)
pid = open(pid_file).read().strip()
while not os.path.exists(stop_file):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        seen["listed"] += 1
    except PermissionError:
        seen["denied"] += 1
        continue
    except FileNotFoundError:
        break
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "memfd:" in link:
            seen["memfd_seen"] += 1
            try:
                with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                    if f.read(4096):
                        seen["memfd_read"] += 1
            except OSError:
                pass
print(json.dumps(seen))
"#;

/// A process of `nobody` holding a memfd with data: what the prober must be able to
/// read (the positive control).
const MEMFD_HOLDER: &str = r#"
import os, sys, time
fd = os.memfd_create("control")
os.write(fd, b"plaintext" * 1000)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(30)
"#;

fn as_nobody(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    c
}

fn prober(dir: &Path) -> std::process::Child {
    as_nobody("/usr/bin/python3")
        .args(["-c", PROBER, "pid", "stop"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn prober_report(child: std::process::Child, dir: &Path) -> Value {
    std::fs::write(dir.join("stop"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prober: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_same_user_process_cannot_open_the_weights_memfd_of_a_starting_node() {
    let Some((model, _)) = common::demo_prerequisites() else {
        return;
    };
    if !root_or_skip() {
        return;
    }
    let site = NodeSite::new(Some(&model));
    site.issue("l.license", "+1h", &[]);
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(site.path())
        .status()
        .unwrap();
    assert!(chown.success());

    // Positive control: the prober reads another nobody process's memfd.
    let control_dir = site.path().join("control");
    std::fs::create_dir(&control_dir).unwrap();
    std::process::Command::new("chown")
        .args(["65534:65534"])
        .arg(&control_dir)
        .status()
        .unwrap();
    let probe = prober(&control_dir);
    let mut holder = as_nobody("/usr/bin/python3")
        .args(["-c", MEMFD_HOLDER])
        .arg(control_dir.join("pid"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let report = prober_report(probe, &control_dir);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        report["memfd_read"].as_u64().unwrap() > 0,
        "control: {report}"
    );

    // The attack: the same prober on `serve` (as nobody too), from its first instant.
    let probe = prober(site.path());
    let mut command = as_nobody(env!("CARGO_BIN_EXE_leasehold"));
    command.args(NodeSite::serve_args("l.license", &[]));
    let pid_file = site.path().join("pid");
    // Start it and publish its pid at once (setpriv execs leasehold in place).
    let mut server = Server::start_command_with(site.path(), command, |pid| {
        std::fs::write(&pid_file, pid.to_string()).unwrap()
    });
    one_completion_blocking(&server);
    let report = prober_report(probe, site.path());
    server.stop();
    assert_eq!(report["memfd_seen"], 0, "{report}");
    assert_eq!(report["memfd_read"], 0, "{report}");
    assert!(report["denied"].as_u64().unwrap() > 0, "{report}");
}

fn one_completion_blocking(server: &Server) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(one_completion(server));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lapse_no_block_of_the_plaintext_is_left_in_the_process_memory() {
    let Some((model, _)) = common::demo_prerequisites() else {
        return;
    };
    if !root_or_skip() {
        return;
    }
    let blocks = common::plaintext::IdentifyingBlocks::of(std::fs::read(&model).unwrap());
    let site = NodeSite::new(Some(&model));
    site.issue("l.license", "+20s", &[]);
    let server = site.serve("l.license", &[]);
    one_completion(&server).await;
    // Positive control: while serving, the scan finds the weights (in the memfd map).
    let (found, _) = blocks.find_in_process(server.pid(), 32);
    assert!(
        found.is_some(),
        "the scan must find the weights while they are loaded"
    );
    assert!(server.holds_weights());

    let http = reqwest::Client::new();
    assert!(
        common::node::eventually(Duration::from_secs(60), async || {
            http.get(server.url("/health"))
                .send()
                .await
                .unwrap()
                .status()
                == 503
        })
        .await
    );
    assert!(
        common::node::eventually(Duration::from_secs(10), async || !server.holds_weights()).await
    );
    let (found, scanned) = blocks.find_in_process(server.pid(), 32);
    assert!(scanned > 10 << 20, "scanned {scanned} bytes");
    assert!(
        found.is_none(),
        "a block of the model's plaintext survived the wipe: {found:?}"
    );
}
