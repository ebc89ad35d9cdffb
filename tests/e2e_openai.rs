//! End to end with the real demo model (SmolLM2-135M-Instruct) and the official
//! `openai` Python client: serve, chat, stream, concurrency, no plaintext on storage,
//! grace, lapse (403, RSS drop, no memfd), renewal by SIGHUP.
//!
//! Needs LEASEHOLD_DEMO_MODEL (the GGUF) and LEASEHOLD_PYTHON (a Python with `openai`);
//! scripts/test.sh provides both.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::node::{eventually, NodeSite, Server};
use common::plaintext::{IdentifyingBlocks, BLOCK};
use serde_json::Value;

fn python(py: &Path, mode: &str, server: &Server) -> Output {
    Command::new(py)
        .arg(common::repo_path("tests/python/openai_client.py"))
        .args([mode, &server.base, "smollm2-135m"])
        .output()
        .expect("run python")
}

fn ok(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap()
}

/// Every regular file under `dirs` (not following symlinks), skipping `skip`.
fn files_under(dirs: &[PathBuf], skip: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

/// No file under the node dir, the working directory, /tmp or $TMPDIR holds a 4 KiB
/// block that identifies the model (see `common::plaintext`). A planted block must be
/// found first (positive control), so the scan is known to work.
fn assert_no_plaintext_on_storage(model: &Path, site: &NodeSite) {
    let blocks = IdentifyingBlocks::of(std::fs::read(model).unwrap());
    assert!(blocks.count() > 1000, "the model has identifying blocks");
    let mut dirs = vec![
        site.path().to_path_buf(),
        std::env::current_dir().unwrap(),
        PathBuf::from("/tmp"),
    ];
    if let Some(t) = std::env::var_os("TMPDIR") {
        dirs.push(PathBuf::from(t));
    }
    // The plaintext model we are comparing with lives in the cache; it is not an output.
    let skip = vec![
        model.to_path_buf(),
        common::repo_path("target"),
        PathBuf::from("/tmp/.X11-unix"),
    ];
    let scan = |skip: &[PathBuf]| {
        let mut scanned = 0u64;
        for file in files_under(&dirs, skip) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            scanned += bytes.len() as u64;
            if let Some((offset, block)) = blocks.find(&bytes, BLOCK) {
                return Err(format!(
                    "{} holds the model's block {block} at {offset}",
                    file.display()
                ));
            }
        }
        Ok(scanned)
    };
    // Positive control: one real block, planted at a 4 KiB boundary, is found.
    let planted = site.path().join("planted.bin");
    let mut bytes = vec![0u8; BLOCK];
    bytes.extend_from_slice(blocks.nth(blocks.count() / 2));
    std::fs::write(&planted, &bytes).unwrap();
    let found = scan(&skip);
    std::fs::remove_file(&planted).unwrap();
    assert!(
        found.as_ref().is_err_and(|e| e.contains("planted.bin")),
        "the scan must find a planted block: {found:?}"
    );
    let scanned = scan(&skip).unwrap_or_else(|e| panic!("{e}"));
    assert!(scanned > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_serves_openai_clients_lapses_and_renews() {
    let Some((model, py)) = common::demo_prerequisites() else {
        return;
    };
    let site = NodeSite::new(Some(&model));
    site.issue("x.license", "+1h", &[]);
    let server = site.serve("x.license", &["--parallel", "4", "--ctx", "1024"]);
    let http = reqwest::Client::new();

    let chat = ok(&python(&py, "chat", &server), "chat");
    assert!(!chat["text"].as_str().unwrap().trim().is_empty());
    ok(&python(&py, "stream", &server), "stream");
    let concurrent = ok(&python(&py, "concurrent", &server), "concurrent");
    assert_eq!(concurrent["completed"], 8);
    assert_no_plaintext_on_storage(&model, &site);
    let rss_serving = server.rss();
    assert!(
        server.holds_weights(),
        "the weights are in a memfd while serving"
    );

    // Switch to a short lease (a renewal: higher serial) to watch grace and lapse.
    site.issue("x.license", "+12s", &["--grace", "20s"]);
    server.signal("HUP");

    // Grace: served, and marked.
    let license = |http: reqwest::Client, url: String| async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let url = server.url("/v1/license");
    assert!(
        eventually(Duration::from_secs(40), async || license(
            http.clone(),
            url.clone()
        )
        .await["phase"]
            == "grace")
        .await,
        "never entered grace"
    );
    ok(&python(&py, "grace", &server), "grace");

    // A long stream running into the lapse ends with an error event: started when the
    // lapse is 3 s away (seconds_to_lapse), so it is running then however fast or slow
    // the steps before were.
    assert!(
        eventually(Duration::from_secs(30), async || license(
            http.clone(),
            url.clone()
        )
        .await["seconds_to_lapse"]
            .as_i64()
            .unwrap()
            <= 3)
        .await
    );
    let stream = Command::new(&py)
        .arg(common::repo_path("tests/python/openai_client.py"))
        .args(["long-stream", &server.base, "smollm2-135m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || license(
            http.clone(),
            url.clone()
        )
        .await["phase"]
            == "lapsed")
        .await,
        "never lapsed"
    );
    let cut = ok(&stream.wait_with_output().unwrap(), "long-stream");
    assert_eq!(cut["code"], "license_expired");

    ok(&python(&py, "expired", &server), "expired");
    assert!(
        eventually(Duration::from_secs(5), async || !server.holds_weights()).await,
        "memfd still present after lapse"
    );
    let model_size = std::fs::metadata(&model).unwrap().len();
    let rss_lapsed = server.rss();
    assert!(
        rss_serving >= rss_lapsed + model_size,
        "RSS fell from {rss_serving} to {rss_lapsed}, less than the model's {model_size} bytes"
    );

    // Renewal by SIGHUP brings service back, no restart.
    site.issue("x.license", "+1h", &[]);
    server.signal("HUP");
    assert!(
        eventually(Duration::from_secs(60), async || license(
            http.clone(),
            url.clone()
        )
        .await["phase"]
            == "serving")
        .await,
        "no renewal: {}",
        server.stderr()
    );
    ok(&python(&py, "chat", &server), "chat after renewal");
}
