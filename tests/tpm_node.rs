//! A node whose unwrap key lives in a TPM, through the CLI as an operator runs it, against
//! real software TPMs (`swtpm`, one per "machine", started by the test): enroll with
//! `--tpm`, a license issued to it, `serve` the demo model and answer a chat; the node
//! directory copied to a machine with another TPM unwraps nothing there while the
//! original keeps serving; a cleared TPM is named, with what to do.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::node::{leasehold_env, NodeSite, Server};
use common::swtpm::Swtpm;
use serde_json::{json, Value};

/// `check` of the site's license, model and node directory.
const CHECK: [&str; 7] = [
    "check",
    "--license",
    "x.license",
    "--sealed",
    "m.sealed",
    "--node-dir",
    "node",
];

fn ok(out: Output, what: &str) -> String {
    common::vendor::ok(&out, what)
}

fn failed(out: Output, what: &str) -> (i32, String) {
    assert!(
        !out.status.success(),
        "{what} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `leasehold ARGS` in `dir` with `TCTI` naming `tpm`.
fn with_tpm(dir: &Path, tpm: &Swtpm, args: &[&str]) -> Output {
    let tcti = tpm.tcti();
    leasehold_env(dir, args, &[("TCTI", Path::new(&tcti))])
}

async fn chat(server: &Server) -> Value {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let response = http
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A node site whose node directory was enrolled with `--tpm` on `tpm`, its model
/// sealed (the demo model when set, else the tiny one) and a license issued to it.
fn tpm_site(tpm: &Swtpm) -> (NodeSite, tempfile::TempDir) {
    let (model, _) = common::demo_prerequisites().unzip();
    let scratch = tempfile::tempdir().unwrap();
    // NodeSite enrolls a file-key node; the TPM node gets its own directory.
    let site = NodeSite::new(model.as_deref());
    std::fs::remove_dir_all(site.path().join("node")).unwrap();
    let started = Instant::now();
    let stdout = ok(
        leasehold_env(
            site.path(),
            &[
                "enroll",
                "--node-dir",
                "node",
                "--out",
                "node.enroll",
                "--tpm",
                "--tcti",
                &tpm.tcti(),
            ],
            &[],
        ),
        "enroll --tpm",
    );
    eprintln!("enroll --tpm took {:?}:\n{stdout}", started.elapsed());
    assert!(stdout.contains("unwrap key        tpm (swtpm:"), "{stdout}");
    assert!(stdout.contains("P-256"), "{stdout}");
    let node = site.path().join("node");
    assert!(node.join("unwrap.tpm").exists());
    assert!(
        !node.join("unwrap.key").exists(),
        "no unwrap secret in the node directory"
    );
    assert!(stdout.contains("signing key       tpm (swtpm:"), "{stdout}");
    assert!(node.join("node.key.tpm").exists());
    assert!(
        !node.join("node.key").exists(),
        "no signing seed in clear in the node directory"
    );
    assert!(
        stdout.contains("state counter     TPM NV index 0x0138"),
        "{stdout}"
    );
    // The TPM's endorsement key is a bound component the default policy requires.
    let enrollment: Value =
        serde_json::from_str(&std::fs::read_to_string(site.path().join("node.enroll")).unwrap())
            .unwrap();
    let hardware = &enrollment["body"]["hardware"];
    assert!(
        hardware["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "tpm-ek"),
        "{hardware}"
    );
    assert!(
        hardware["policy"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("tpm-ek")),
        "{hardware}"
    );
    let seed_file = std::fs::read_to_string(node.join("node.key.tpm")).unwrap();
    assert!(seed_file.contains("leasehold TPM sealed signing key v1"));
    site.issue("x.license", "+1h", &[]);
    (site, scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_node_serves_and_a_copy_of_its_directory_on_another_tpm_unwraps_nothing() {
    let states = tempfile::tempdir().unwrap();
    let first = Swtpm::start(&states.path().join("first"));
    let (site, _scratch) = tpm_site(&first);

    let inspect = ok(
        with_tpm(site.path(), &first, &["inspect", "x.license"]),
        "inspect",
    );
    assert!(
        inspect.contains("P-256, which the node's enrollment says is held in its TPM"),
        "{inspect}"
    );
    let inspected: Value = serde_json::from_str(&ok(
        with_tpm(
            site.path(),
            &first,
            &["inspect", "x.license", "--node-dir", "node", "--json"],
        ),
        "inspect --node-dir --json",
    ))
    .unwrap();
    assert_eq!(inspected["verdict"], "valid", "{inspected}");
    for key in ["signing", "unwrap"] {
        let location = inspected["node_keys"][key].as_str().unwrap();
        assert!(location.starts_with("tpm (swtpm:"), "{inspected}");
    }
    let counter = inspected["node_keys"]["state_counter"].as_str().unwrap();
    let counter_file = std::fs::read_to_string(site.path().join("node/counter.tpm")).unwrap();
    assert!(counter_file.contains(counter), "{counter_file}");
    ok(
        with_tpm(site.path(), &first, &CHECK),
        "check on the enrolled machine",
    );

    let model = site.model_id.clone();
    let tcti = first.tcti();
    let server = Server::start_env(
        site.path(),
        &NodeSite::serve_args("x.license", &[]),
        &[("TCTI", Path::new(&tcti))],
    );
    let answer = chat(&server).await;
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    assert_eq!(answer["model"], model.as_str());

    // `fingerprint` shows the TPM's endorsement key as a component, required by default.
    let fingerprint: Value = serde_json::from_str(&ok(
        with_tpm(site.path(), &first, &["fingerprint", "--json"]),
        "fingerprint --json",
    ))
    .unwrap();
    let ek = fingerprint["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "tpm-ek")
        .unwrap_or_else(|| panic!("no tpm-ek: {fingerprint}"));
    assert_eq!(ek["required_by_default"], true, "{ek}");
    assert_eq!(ek["values"][0]["raw"].as_str().unwrap().len(), 64, "{ek}");

    // The operator copies the whole node directory, license and model to another
    // machine (here: the same box with another TPM, so only the TPM differs).
    let clone = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(site.path().join("."))
        .arg(clone.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let second = Swtpm::start(&states.path().join("second"));
    for command in ["check", "run"] {
        let mut args = CHECK.to_vec();
        args[0] = command;
        if command == "run" {
            args.extend(["--prompt", "hello", "--max-tokens", "2", "--threads", "1"]);
        }
        let (code, stderr) = failed(with_tpm(clone.path(), &second, &args), command);
        eprintln!("{command} on the clone: exit {code}: {stderr}");
        assert_eq!(code, 14, "wrong machine");
        assert!(stderr.contains("another machine's TPM"), "{stderr}");
        assert!(stderr.contains("re-enroll"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // The original machine keeps serving.
    let again = chat(&server).await;
    assert!(again["choices"][0]["message"]["content"].is_string());
}

#[test]
fn a_cleared_tpm_or_none_at_all_is_named_with_what_to_do() {
    let states = tempfile::tempdir().unwrap();
    let state = states.path().join("tpm");
    let tpm = Swtpm::start(&state);
    let (site, _scratch) = tpm_site(&tpm);
    tpm.stop();
    let check = CHECK;

    // The TPM is gone (no process answers at its address).
    let port = common::swtpm::free_port_pair();
    let gone = format!("swtpm:host=127.0.0.1,port={port}");
    let (_, stderr) = failed(
        leasehold_env(site.path(), &check, &[("TCTI", Path::new(&gone))]),
        "check without its TPM",
    );
    eprintln!("no TPM: {stderr}");
    assert!(stderr.contains(&format!("no TPM at {gone}")), "{stderr}");

    // The TPM cleared: its state removed, so its seeds are new.
    std::fs::remove_dir_all(&state).unwrap();
    let cleared = Swtpm::start(&state);
    let (_, stderr) = failed(
        with_tpm(site.path(), &cleared, &check),
        "check after a clear",
    );
    eprintln!("cleared: {stderr}");
    assert!(stderr.contains("cleared"), "{stderr}");
    assert!(stderr.contains("re-enroll this node"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn enroll_tpm_auto_keeps_file_keys_without_a_tpm_and_tpm_on_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // No TCTI named and no /dev/tpmrm0 on a test machine: auto means file keys.
    if !Path::new("/dev/tpmrm0").exists() {
        let out = leasehold_env(
            dir.path(),
            &[
                "enroll",
                "--node-dir",
                "auto",
                "--out",
                "auto.enroll",
                "--tpm",
                "auto",
            ],
            &[],
        );
        let stdout = ok(out, "enroll --tpm auto");
        assert!(stdout.contains("unwrap key        file"), "{stdout}");
        assert!(dir.path().join("auto/unwrap.key").exists());
    }
    let port = common::swtpm::free_port_pair();
    let nowhere = format!("swtpm:host=127.0.0.1,port={port}");
    let (code, stderr) = failed(
        leasehold_env(
            dir.path(),
            &[
                "enroll",
                "--node-dir",
                "on",
                "--out",
                "on.enroll",
                "--tpm",
                "--tcti",
                &nowhere,
            ],
            &[],
        ),
        "enroll --tpm with no TPM there",
    );
    eprintln!("enroll --tpm, no TPM: exit {code}: {stderr}");
    assert!(stderr.contains(&format!("no TPM at {nowhere}")), "{stderr}");
    assert!(
        !dir.path().join("on/node.key").exists(),
        "no half-made node identity is left behind"
    );
}

/// A started vendor entitling one node (`lease`, `grace`), and a node enrolled through
/// it with `--tpm` on a fresh swtpm (its state in the returned directory), approved.
fn vendor_and_tpm_node(
    lease: &str,
    grace: &str,
) -> (
    tempfile::TempDir,
    Swtpm,
    common::vendor::Vendor,
    common::vendor::Node,
) {
    use common::vendor::{Node, Vendor, ORG};
    let states = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&states.path().join("tpm"));
    let tcti = tpm.tcti();
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(1, lease, grace);
    let node = Node::new(&vendor);
    let url = vendor.url();
    let enrolled = common::vendor::ok(
        &vendor.client(
            node.path(),
            &[
                "enroll",
                "--node-dir",
                "node",
                "--server",
                &url,
                "--org",
                ORG,
                "--model",
                "tiny",
                "--tpm",
                "--tcti",
                &tcti,
            ],
        ),
        "enroll --tpm --server",
    );
    let id = enrolled.lines().last().unwrap().trim().to_string();
    vendor.admin_ok(&["approve", &id]);
    (states, tpm, vendor, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_node_enrolls_with_the_license_server_and_renews_short_leases() {
    use common::vendor::{as_strs, serve_args};
    let (_states, tpm, vendor, node) = vendor_and_tpm_node("8s", "4s");
    let tcti = tpm.tcti();
    let url = vendor.url();

    let args = serve_args(&url);
    let server = Server::start_env(node.path(), &as_strs(&args), &[("TCTI", Path::new(&tcti))]);
    let license: Value =
        serde_json::from_slice(&std::fs::read(node.path().join("node.license")).unwrap()).unwrap();
    assert_eq!(
        license["body"]["node"]["unwrap_suite"],
        "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
    );
    assert_eq!(
        license["body"]["content_key"]["suite"],
        license["body"]["node"]["unwrap_suite"]
    );

    // Leases of 8 s renewed at about half: after 20 s of serving, several renewals,
    // each a license wrapped to the TPM's key, and every request answered.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let state_file = node.path().join("node/state.json");
    let mut removed = false;
    while started.elapsed() < Duration::from_secs(20) {
        // Halfway, the state is removed under the running node: the next renewal's
        // signed time makes it again, and serving goes on.
        if !removed && started.elapsed() > Duration::from_secs(8) {
            std::fs::remove_file(&state_file).unwrap();
            removed = true;
        }
        let response = http
            .post(server.url("/v1/chat/completions"))
            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let state: Value = common::node::get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(state["phase"], "serving", "{state}");
    let serial = state["serial"].as_u64().unwrap();
    assert!(serial >= 3, "renewed leases: serial {serial}");
    assert_eq!(state["renewal"]["consecutive_failures"], 0, "{state}");
    assert!(state_file.exists(), "the removed state was made again");
}

/// `cp -a FROM TO`, as an operator restores a backup.
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_of_a_tpm_node_directory_is_refused_as_rolled_back() {
    let states = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&states.path().join("tpm"));
    let (site, _scratch) = tpm_site(&tpm);
    let node = site.path().join("node");
    assert!(node.join("counter.tpm").exists());
    ok(
        with_tpm(site.path(), &tpm, &CHECK),
        "check before the backup",
    );

    // The operator backs up the whole node directory (keys, state, ledger)...
    let backup = site.path().join("node.backup");
    copy_dir(&node, &backup);

    // ...serves for a while and stops: the node's state moves the TPM's counter.
    let tcti = tpm.tcti();
    let mut server = Server::start_env(
        site.path(),
        &NodeSite::serve_args("x.license", &[]),
        &[("TCTI", Path::new(&tcti))],
    );
    chat(&server).await;
    server.stop();

    // ...then restores the backup, to rewind trusted time, license memory and ledger.
    std::fs::remove_dir_all(&node).unwrap();
    copy_dir(&backup, &node);
    for command in ["check", "run"] {
        let mut args = CHECK.to_vec();
        args[0] = command;
        if command == "run" {
            args.extend(["--prompt", "hello", "--max-tokens", "2", "--threads", "1"]);
        }
        let (code, stderr) = failed(with_tpm(site.path(), &tpm, &args), command);
        eprintln!("{command} after the restore: exit {code}: {stderr}");
        assert_eq!(code, 13, "rolled back");
        assert!(stderr.contains("rolled back"), "{stderr}");
        assert!(stderr.contains("restored backup"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let mut serve = std::process::Command::new("timeout");
    serve
        .arg("120")
        .arg(env!("CARGO_BIN_EXE_leasehold"))
        .args(NodeSite::serve_args("x.license", &[]))
        .current_dir(site.path())
        .env("TCTI", &tcti);
    let (code, stderr) = failed(serve.output().unwrap(), "serve after the restore");
    assert_eq!(code, 13, "serve refuses: {stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");

    // Restoring the state file alone is the same rollback.
    std::fs::copy(backup.join("state.json"), node.join("state.json")).unwrap();
    let (code, _) = failed(with_tpm(site.path(), &tpm, &CHECK), "check");
    assert_eq!(code, 13);

    // Moving the state away does not help: on a TPM node a removed state is refused
    // (and counted) even with a license issued after everything the node recorded;
    // only the license server's time brings it back (the next test).
    std::fs::rename(
        node.join("state.json"),
        site.path().join("state.rolled-back"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    site.issue("y.license", "+1h", &[]);
    for command in ["check", "run"] {
        let mut args = CHECK.to_vec();
        args[0] = command;
        args[2] = "y.license";
        if command == "run" {
            args.extend(["--prompt", "hello", "--max-tokens", "2", "--threads", "1"]);
        }
        let (code, stderr) = failed(with_tpm(site.path(), &tpm, &args), command);
        eprintln!("{command} without the state: exit {code}: {stderr}");
        assert_eq!(code, 13, "{stderr}");
        assert!(
            stderr.contains("only the license server re-establishes it"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restore_is_counted_in_the_tpm_and_flagged_by_the_license_server() {
    use common::vendor::{as_strs, serve_args};
    let (_states, tpm, vendor, node) = vendor_and_tpm_node("30m", "10m");
    let tcti = tpm.tcti();
    let env = [("TCTI", Path::new(&tcti))];
    let url = vendor.url();
    let args = serve_args(&url);

    // Back up the enrolled node directory; serve (the first license: a state write
    // that moves the TPM's counter) and stop. (A restart within the lease writes
    // nothing the TPM's Clock does not imply, so a backup taken then is current.)
    let dir = node.path().join("node");
    let backup = node.path().join("node.backup");
    copy_dir(&dir, &backup);
    let mut server = Server::start_env(node.path(), &as_strs(&args), &env);
    server.stop();

    // Restore the backup: refused, and counted in the TPM.
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&backup, &dir);
    let mut serve = std::process::Command::new("timeout");
    serve
        .arg("120")
        .arg(env!("CARGO_BIN_EXE_leasehold"))
        .args(&args)
        .current_dir(node.path())
        .env("TCTI", &tcti);
    let (code, stderr) = failed(serve.output().unwrap(), "serve on the restored directory");
    assert_eq!(code, 13, "{stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    let usage = vendor.admin_json(&["usage"]);
    assert!(
        !usage.to_string().contains("state-rolled-back"),
        "nothing reported yet: {usage}"
    );

    // The way back: the state moved away; the license the serve fetched is newer than
    // everything the restored directory recorded, so the node starts, and its first
    // report carries the TPM's count, which the server flags.
    std::fs::rename(
        dir.join("state.json"),
        node.path().join("state.rolled-back"),
    )
    .unwrap();
    let mut server = Server::start_env(node.path(), &as_strs(&args), &env);
    let http = reqwest::Client::new();
    let flagged = common::node::eventually(Duration::from_secs(30), async || {
        let usage = vendor.admin_json(&["usage"]);
        usage["nodes"][0]["ledger_findings"]
            .as_array()
            .is_some_and(|f| {
                f.iter()
                    .any(|f| f.as_str().unwrap().contains("state-rolled-back"))
            })
    })
    .await;
    let usage = vendor.admin_json(&["usage"]);
    assert!(flagged, "{usage}");
    let findings = usage["nodes"][0]["ledger_findings"].to_string();
    eprintln!("findings after the restore: {findings}");
    // Counted twice: the restored state, then the removed one.
    assert!(
        findings.contains("refused 2 rolled-back or removed node state"),
        "{findings}"
    );
    let state: Value = common::node::get_json(&http, &server.url("/v1/license")).await;
    assert_eq!(state["phase"], "serving", "{state}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tpm_state_comes_back_from_a_renewal_by_file_once() {
    use common::vendor::{as_strs, serve_args};
    let (_states, tpm, vendor, node) = vendor_and_tpm_node("30m", "10m");
    let tcti = tpm.tcti();
    let url = vendor.url();
    let mut server = Server::start_env(
        node.path(),
        &as_strs(&serve_args(&url)),
        &[("TCTI", Path::new(&tcti))],
    );
    server.stop();
    let p = node.path();
    let state = p.join("node/state.json");
    let renew = |args: &[&str]| {
        let mut all = vec!["renew", "--node-dir", "node", "--license", "node.license"];
        all.extend_from_slice(args);
        with_tpm(p, &tpm, &all)
    };
    let check = [
        "check",
        "--license",
        "node.license",
        "--sealed",
        "m.sealed",
        "--node-dir",
        "node",
    ];

    // The state removed: refused; a renewal by file (an air-gapped site) brings it back.
    std::fs::remove_file(&state).unwrap();
    let (code, _) = failed(with_tpm(p, &tpm, &check), "check without the state");
    assert_eq!(code, 13);
    ok(renew(&["--request-out", "req.json"]), "renew --request-out");
    let kept = std::fs::read(p.join("node/renewal-pending.json")).unwrap();
    vendor.answer_renewal_file(p, "req.json", "resp.json");
    ok(renew(&["--response", "resp.json"]), "renew --response");
    assert!(state.exists(), "made afresh from the server's time");
    ok(with_tpm(p, &tpm, &check), "check after the renewal by file");

    // Once: the same response, with the pending file kept from then, does not make a
    // removed state again (the request was bound to the TPM counter, which moved).
    std::fs::remove_file(&state).unwrap();
    std::fs::write(p.join("node/renewal-pending.json"), &kept).unwrap();
    let (code, stderr) = failed(renew(&["--response", "resp.json"]), "a replayed response");
    eprintln!("replayed response: exit {code}: {stderr}");
    assert!(
        stderr.contains("answers a request written before"),
        "{stderr}"
    );
    assert!(!state.exists());
    let (code, _) = failed(with_tpm(p, &tpm, &check), "check");
    assert_eq!(code, 13);
}
