//! The command line as a user meets it: real files, real exit codes, real messages.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{Duration, Utc};
use common::node::leasehold;
use common::*;
use leasehold::node::{trusted_time, NodeIdentity};
use tempfile::TempDir;

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A working directory with an enrolled node (this machine), a sealed synthetic model.
struct Site {
    dir: TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("model.gguf"), synthetic_gguf(300_000, 3)).unwrap();
        let site = Site { dir };
        site.ok(&[
            "enroll",
            "--node-dir",
            "node",
            "--out",
            "node.enroll",
            "--use-case",
            "tests",
        ]);
        site.ok(&[
            "seal",
            "model.gguf",
            "--model-id",
            "demo-model",
            "--out",
            "m.sealed",
            "--key-out",
            "m.key",
        ]);
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        leasehold(self.path(), args)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_eq!(
            code(&out),
            0,
            "leasehold {args:?}\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// Run a command that must fail with `expected` and say `needle` on stderr.
    fn fails(&self, args: &[&str], expected: i32, needle: &str) -> Output {
        let out = self.run(args);
        assert_eq!(
            code(&out),
            expected,
            "leasehold {args:?}\nstderr: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "leasehold {args:?}: no '{needle}' in\n{}",
            stderr(&out)
        );
        out
    }

    fn issue(&self, out: &str, expires: &str, extra: &[&str]) {
        let root = repo_path("keys/demo/root.key");
        let mut args = issue_args(
            root.to_str().unwrap(),
            "node.enroll",
            "m.sealed",
            "m.key",
            expires,
            out,
        );
        args.extend_from_slice(extra);
        self.ok(&args);
    }
}

/// Arguments of `leasehold issue` for licensee "Example Org".
fn issue_args<'a>(
    key: &'a str,
    enrollment: &'a str,
    sealed: &'a str,
    content_key: &'a str,
    expires: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "issue",
        "--key",
        key,
        "--enrollment",
        enrollment,
        "--sealed",
        sealed,
        "--content-key",
        content_key,
        "--licensee",
        "Example Org",
        "--expires",
        expires,
        "--out",
        out,
    ]
}

fn rfc(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn quickstart_flow_inspect_and_check_succeed() {
    let site = Site::new();
    site.issue(
        "x.license",
        "+30d",
        &["--grace", "1h", "--cap", "requests-per-day=100"],
    );
    let out = site.ok(&["inspect", "x.license", "--node-dir", "node"]);
    let text = stdout(&out);
    assert!(text.contains("Example Org"), "{text}");
    assert!(text.contains("demo-model"));
    assert!(text.contains("requests-per-day=100"));
    assert!(text.contains("DEMO ROOT"));
    assert!(text.contains("verdict: valid"));

    let out = site.ok(&["inspect", "x.license", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["verdict"], "valid");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["license"]["licensee"], "Example Org");
    assert_eq!(json["license"]["caps"]["requests_per_day"], 100);

    let out = site.ok(&[
        "check",
        "--license",
        "x.license",
        "--sealed",
        "m.sealed",
        "--node-dir",
        "node",
    ]);
    assert!(stdout(&out).contains("can serve model 'demo-model' now"));
}

#[test]
fn inspect_exit_codes_name_each_verdict() {
    let site = Site::new();
    let now = Utc::now();
    site.issue(
        "expired.license",
        &rfc(now - Duration::days(1)),
        &["--not-before", &rfc(now - Duration::days(3))],
    );
    site.issue(
        "grace.license",
        &rfc(now - Duration::minutes(1)),
        &[
            "--not-before",
            &rfc(now - Duration::days(3)),
            "--grace",
            "1h",
        ],
    );
    site.issue("future.license", "+30d", &["--not-before", "+2d"]);
    site.issue("good.license", "+30d", &[]);

    let verdict = |file: &str, node: &str| {
        let out = site.run(&["inspect", file, "--node-dir", node, "--json"]);
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        (code(&out), json["verdict"].as_str().unwrap().to_string())
    };
    assert_eq!(verdict("good.license", "node"), (0, "valid".into()));
    assert_eq!(verdict("grace.license", "node"), (10, "in-grace".into()));
    assert_eq!(
        verdict("future.license", "node"),
        (11, "not-yet-valid".into())
    );
    assert_eq!(verdict("expired.license", "node"), (12, "expired".into()));

    // Another node on this very machine: other keys.
    site.ok(&["enroll", "--node-dir", "node2", "--out", "node2.enroll"]);
    assert_eq!(
        verdict("good.license", "node2"),
        (14, "wrong-machine".into())
    );

    // A flipped byte.
    let mut bytes = std::fs::read(site.path().join("good.license")).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(site.path().join("edited.license"), &bytes).unwrap();
    assert_eq!(verdict("edited.license", "node"), (15, "tampered".into()));

    // The node has seen a time far ahead of the clock: the clock was wound back.
    let identity = NodeIdentity::load(&site.path().join("node")).unwrap();
    trusted_time::record(&identity, now + Duration::days(40)).unwrap();
    assert_eq!(
        verdict("good.license", "node"),
        (13, "clock-rolled-back".into())
    );
    site.fails(
        &[
            "check",
            "--license",
            "good.license",
            "--sealed",
            "m.sealed",
            "--node-dir",
            "node",
        ],
        13,
        "clock rolled back",
    );
}

#[test]
fn an_edited_node_state_is_refused_not_believed() {
    let site = Site::new();
    site.issue("x.license", "+30d", &[]);
    let state = site.path().join("node/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let year = Utc::now().format("%Y").to_string();
    std::fs::write(&state, text.replacen(&year, "2000", 1)).unwrap();
    site.fails(
        &["inspect", "x.license", "--node-dir", "node"],
        1,
        "not a valid node state",
    );
}

#[test]
fn check_names_a_damaged_or_different_sealed_model() {
    let site = Site::new();
    site.issue("x.license", "+30d", &[]);
    let sealed = std::fs::read(site.path().join("m.sealed")).unwrap();

    std::fs::write(
        site.path().join("short.sealed"),
        &sealed[..sealed.len() - 10],
    )
    .unwrap();
    site.fails(
        &[
            "check",
            "--license",
            "x.license",
            "--sealed",
            "short.sealed",
            "--node-dir",
            "node",
        ],
        20,
        "truncated",
    );

    let mut flipped = sealed.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 1;
    std::fs::write(site.path().join("flipped.sealed"), &flipped).unwrap();
    site.fails(
        &[
            "check",
            "--license",
            "x.license",
            "--sealed",
            "flipped.sealed",
            "--node-dir",
            "node",
        ],
        20,
        "failed authentication",
    );

    std::fs::write(site.path().join("other.gguf"), synthetic_gguf(5000, 9)).unwrap();
    site.ok(&[
        "seal",
        "other.gguf",
        "--model-id",
        "other-model",
        "--out",
        "o.sealed",
        "--key-out",
        "o.key",
    ]);
    let out = site.run(&[
        "check",
        "--license",
        "x.license",
        "--sealed",
        "o.sealed",
        "--node-dir",
        "node",
        "--json",
    ]);
    assert_eq!(code(&out), 21);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["ok"], false);
    assert!(json["message"].as_str().unwrap().contains("other-model"));
}

#[test]
fn keygen_writes_a_private_secret_and_never_overwrites() {
    let dir = TempDir::new().unwrap();
    let out = leasehold(dir.path(), &["keygen", "--out", "vendor"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let secret = dir.path().join("vendor.key");
    let public = dir.path().join("vendor.pub");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .contains("ed25519-public:"));
    let before = std::fs::read(&secret).unwrap();
    let out = leasehold(dir.path(), &["keygen", "--out", "vendor"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

#[test]
fn seal_refuses_non_gguf_and_an_existing_key() {
    let site = Site::new();
    std::fs::write(site.path().join("readme.txt"), "hello").unwrap();
    site.fails(
        &[
            "seal",
            "readme.txt",
            "--model-id",
            "x",
            "--out",
            "r.sealed",
            "--key-out",
            "r.key",
        ],
        1,
        "not a GGUF model",
    );
    assert!(!site.path().join("r.key").exists());

    let before = std::fs::read(site.path().join("m.key")).unwrap();
    site.fails(
        &[
            "seal",
            "model.gguf",
            "--model-id",
            "x",
            "--out",
            "m2.sealed",
            "--key-out",
            "m.key",
        ],
        1,
        "refusing to overwrite",
    );
    assert_eq!(std::fs::read(site.path().join("m.key")).unwrap(), before);
    assert_eq!(
        std::fs::metadata(site.path().join("m.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn enroll_again_reuses_the_identity() {
    let site = Site::new();
    let node_key = std::fs::read(site.path().join("node/node.key")).unwrap();
    let out = site.ok(&["enroll", "--node-dir", "node", "--out", "again.enroll"]);
    assert!(stdout(&out).contains("reused node identity"));
    assert_eq!(
        std::fs::read(site.path().join("node/node.key")).unwrap(),
        node_key
    );
    for f in ["node.key", "unwrap.key"] {
        let mode = std::fs::metadata(site.path().join("node").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn issue_refuses_a_key_that_is_not_a_root() {
    let site = Site::new();
    site.ok(&["keygen", "--out", "rogue"]);
    site.fails(
        &issue_args(
            "rogue.key",
            "node.enroll",
            "m.sealed",
            "m.key",
            "+1d",
            "r.license",
        ),
        1,
        "not a root compiled into this build",
    );
    assert!(!site.path().join("r.license").exists());
}

#[test]
fn certified_issuer_flow_through_the_cli() {
    let site = Site::new();
    site.ok(&["keygen", "--out", "issuer"]);
    let root = repo_path("keys/demo/root.key");
    site.ok(&[
        "certify-issuer",
        "--root",
        root.to_str().unwrap(),
        "--issuer-pub",
        "issuer.pub",
        "--org",
        "Example Org",
        "--model",
        "demo-model",
        "--valid-until",
        "+90d",
        "--max-lease",
        "7d",
        "--out",
        "issuer.cert",
    ]);
    let by_issuer = |expires, out| {
        let mut args = issue_args(
            "issuer.key",
            "node.enroll",
            "m.sealed",
            "m.key",
            expires,
            out,
        );
        args.extend_from_slice(&["--issuer-cert", "issuer.cert"]);
        args
    };
    site.ok(&by_issuer("+2d", "i.license"));
    let out = site.ok(&[
        "check",
        "--license",
        "i.license",
        "--sealed",
        "m.sealed",
        "--node-dir",
        "node",
    ]);
    assert!(
        stdout(&out).contains("certified by root"),
        "{}",
        stdout(&out)
    );
    // Beyond the certificate's maximum lease: refused at issue time with the reason.
    site.fails(&by_issuer("+30d", "long.license"), 1, "maximum lease");
}

#[test]
fn help_documents_exit_codes_and_usage_errors_exit_2() {
    let dir = TempDir::new().unwrap();
    let out = leasehold(dir.path(), &["inspect", "--help"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    for line in [
        "13  clock rolled back",
        "14  wrong machine",
        "15  tampered",
        "10  in grace",
    ] {
        assert!(text.contains(line), "missing '{line}' in --help");
    }
    let out = leasehold(dir.path(), &["inspect", "--no-such-flag"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn missing_node_directory_says_how_to_enroll() {
    let site = Site::new();
    site.issue("x.license", "+30d", &[]);
    site.fails(
        &[
            "check",
            "--license",
            "x.license",
            "--sealed",
            "m.sealed",
            "--node-dir",
            "nowhere",
        ],
        1,
        "leasehold enroll --node-dir nowhere",
    );
}

/// The real demo model, when the test command fetched it (scripts/test.sh does).
#[test]
fn real_demo_model_seals_and_checks() {
    let Some(model) = std::env::var_os("LEASEHOLD_DEMO_MODEL").map(PathBuf::from) else {
        eprintln!("LEASEHOLD_DEMO_MODEL not set: run scripts/test.sh to include the real model");
        return;
    };
    let site = Site::new();
    site.ok(&[
        "seal",
        model.to_str().unwrap(),
        "--model-id",
        "smollm2-135m",
        "--out",
        "s.sealed",
        "--key-out",
        "s.key",
    ]);
    let root = repo_path("keys/demo/root.key");
    site.ok(&issue_args(
        root.to_str().unwrap(),
        "node.enroll",
        "s.sealed",
        "s.key",
        "+1d",
        "s.license",
    ));
    let out = site.ok(&[
        "check",
        "--license",
        "s.license",
        "--sealed",
        "s.sealed",
        "--node-dir",
        "node",
    ]);
    assert!(
        stdout(&out).contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    );
}

#[test]
fn oversize_license_and_tampered_enrollment_are_clear_errors() {
    let site = Site::new();
    std::fs::write(site.path().join("huge.license"), vec![b'{'; 1 << 20]).unwrap();
    site.fails(&["inspect", "huge.license"], 1, "larger than the");

    let mut enrollment = std::fs::read(site.path().join("node.enroll")).unwrap();
    let i = enrollment.len() / 3;
    enrollment[i] ^= 0x01;
    std::fs::write(site.path().join("bad.enroll"), &enrollment).unwrap();
    let root = repo_path("keys/demo/root.key");
    site.fails(
        &issue_args(
            root.to_str().unwrap(),
            "bad.enroll",
            "m.sealed",
            "m.key",
            "+1d",
            "bad.license",
        ),
        1,
        "bad.enroll cannot be used",
    );
    assert!(!site.path().join("bad.license").exists());
}

#[test]
fn enrollment_can_pin_the_component_set() {
    let site = Site::new();
    site.ok(&[
        "enroll",
        "--node-dir",
        "node",
        "--out",
        "pinned.enroll",
        "--bind",
        "machine-id,hostname",
        "--require",
        "machine-id",
        "--min-others",
        "1",
    ]);
    let enrollment = leasehold::node::enrollment::verify(
        &std::fs::read(site.path().join("pinned.enroll")).unwrap(),
    )
    .unwrap();
    let kinds: Vec<_> = enrollment
        .hardware
        .components
        .iter()
        .map(|c| c.kind.name())
        .collect();
    assert_eq!(kinds, ["machine-id", "hostname"]);
    assert_eq!(enrollment.hardware.policy.min_others, 1);

    // A policy that cannot be met is refused with the reason.
    site.fails(
        &[
            "enroll",
            "--node-dir",
            "node",
            "--out",
            "x.enroll",
            "--bind",
            "machine-id",
            "--min-others",
            "3",
        ],
        1,
        "policy",
    );
}

/// The license server's and the vendor's build (`--no-default-features --features
/// demo-root`, run by .ci/run): no llama.cpp in the process, and the node's commands
/// refused with a message that says where they are.
#[cfg(not(feature = "inference"))]
#[test]
fn a_build_without_inference_loads_no_llama_cpp_and_says_where_serve_is() {
    let binary = env!("CARGO_BIN_EXE_leasehold");
    let ldd = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap();
    let linked = stdout(&ldd);
    assert!(ldd.status.success(), "{linked}");
    for library in ["libllama", "libggml", "libgomp", "libtss2"] {
        assert!(!linked.contains(library), "{library} linked:\n{linked}");
    }
    let dir = TempDir::new().unwrap();
    for args in [
        &["serve", "--license", "x.license"][..],
        &["run", "--prompt", "hi"],
        &["watermark", "detect", "--help"],
    ] {
        let out = leasehold(dir.path(), args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("needs the inference runtime (llama.cpp)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let version = leasehold(dir.path(), &["--version"]);
    assert!(stdout(&version).contains("no inference runtime in this build"));
    // What this build is for still works.
    for args in [
        &["license-server", "--help"][..],
        &["admin", "--help"],
        &["seal", "--help"],
    ] {
        assert_eq!(code(&leasehold(dir.path(), args)), 0, "{args:?}");
    }
}
