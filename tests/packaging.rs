//! Packaging: the .deb built by `scripts/package.sh` and checked with dpkg's own
//! tools, its systemd units checked by `systemd-analyze`, and the container and
//! Kubernetes files checked against the binary's real flags.
//!
//! A package never holds a binary that trusts the demo root. The tests here therefore
//! build a vendor binary once, as a vendor would (`--no-default-features`, a root of
//! their own), and package that: see [`vendor_binary`].

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::node::NodeSite;
use common::repo_path;
use serde::Deserialize as _;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Missing tools skip the test, except under LEASEHOLD_REQUIRE_ALL (scripts/test.sh).
fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("LEASEHOLD_REQUIRE_ALL").is_none(),
        "missing {missing:?}: run scripts/setup.sh --test"
    );
    eprintln!("skipped: {missing:?} not installed (scripts/setup.sh --test installs them)");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vendor's build of leasehold: without the `demo-root` feature, trusting one test
/// root (`test-vendor.pub`, its secret key beside it) instead of `keys/roots/`.
struct VendorBuild {
    binary: PathBuf,
    root_key: PathBuf,
    root_key_id: String,
}

/// Build the vendor binary once per test process (and, as cargo caches it, once per
/// target directory). It is a separate package that depends on this crate with
/// `default-features = false` (and the `tpm` and `inference` features, as
/// scripts/release-binary.sh builds) and calls `leasehold::cli::main`, built in the target
/// directory and profile of this test run, so every dependency, llama.cpp included,
/// is reused and only this crate is compiled again. `LEASEHOLD_ROOTS_DIR` (read by
/// build.rs) points it at the test root. The package lives at a fixed place in the
/// target directory: a changing path would recompile the crate on every run.
fn vendor_binary() -> &'static VendorBuild {
    static BUILD: OnceLock<VendorBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        let test_binary = Path::new(env!("CARGO_BIN_EXE_leasehold"));
        let profile_dir = test_binary.parent().unwrap();
        let target = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev",
            other => other,
        };
        let dir = target.join("leasehold-vendor-build");
        let roots = dir.join("roots");
        std::fs::create_dir_all(&roots).unwrap();
        let root_key = dir.join("test-vendor.key");
        if !root_key.exists() {
            run(Command::new(test_binary)
                .args(["keygen", "--out"])
                .arg(dir.join("test-vendor")));
        }
        let public = std::fs::read(dir.join("test-vendor.pub")).unwrap();
        write_if_changed(&roots.join("test-vendor.pub"), &public);

        // Every dependency must resolve exactly as in `cargo test` for its build to be
        // reused: the same versions (this crate's lock file), the same profiles, and the
        // same features, so this crate's dev-dependencies are the package's own
        // dependencies too (without them cargo's feature resolution differs and
        // llama.cpp is compiled again, ~10 min on 2 cores).
        let manifest: toml_edit::DocumentMut = std::fs::read_to_string(repo_path("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let mut package: toml_edit::DocumentMut = format!(
            "[package]\nname = \"leasehold-vendor-build\"\nversion = \"0.0.0\"\n\
             edition = \"2021\"\npublish = false\n\n\
             [[bin]]\nname = \"leasehold-vendor\"\npath = \"main.rs\"\n\n\
             [dependencies]\nleasehold = {{ path = {:?}, default-features = false, features = [\"tpm\", \"inference\"] }}\n\n\
             [workspace]\n",
            repo_path("").to_str().unwrap()
        )
        .parse()
        .unwrap();
        if let Some(dev) = manifest.get("dev-dependencies").and_then(|d| d.as_table()) {
            for (name, spec) in dev.iter() {
                package["dependencies"][name] = spec.clone();
            }
        }
        if let Some(profile) = manifest.get("profile") {
            package["profile"] = profile.clone();
        }
        let package = package.to_string();
        write_if_changed(&dir.join("Cargo.toml"), package.as_bytes());
        write_if_changed(
            &dir.join("main.rs"),
            b"fn main() -> std::process::ExitCode {\n    leasehold::cli::main()\n}\n",
        );
        // The link arguments leasehold's build.rs gives its own binaries (they do not
        // reach a binary of another package): find llama.cpp's libraries beside an
        // installed copy, else where this build put them.
        let lib_dir = leasehold::runtime::backends::build_backends_dir()
            .parent()
            .unwrap()
            .join("lib");
        write_if_changed(
            &dir.join("build.rs"),
            format!(
                "fn main() {{\n    println!(\"cargo:rustc-link-arg=-Wl,--disable-new-dtags\");\n    \
                 println!(\"cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/leasehold\");\n    \
                 println!(\"cargo:rustc-link-arg=-Wl,-rpath,{}\");\n}}\n",
                lib_dir.display()
            )
            .as_bytes(),
        );
        // This crate's lock file, so the dependencies resolve to the same versions.
        write_if_changed(
            &dir.join("Cargo.lock"),
            &std::fs::read(repo_path("Cargo.lock")).unwrap(),
        );
        let started = Instant::now();
        run(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["build", "--offline", "--quiet", "--profile", profile])
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(target)
                .env("LEASEHOLD_ROOTS_DIR", &roots),
        );
        eprintln!(
            "vendor build (no demo root, test root) ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let key_id = leasehold::crypto::keyfile::read_public_key(&dir.join("test-vendor.pub"))
            .unwrap()
            .key_id();
        VendorBuild {
            binary: profile_dir.join("leasehold-vendor"),
            root_key,
            root_key_id: key_id,
        }
    })
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).unwrap();
    }
}

/// Build the .deb into `dir` from the vendor binary.
fn build_deb(dir: &Path) -> PathBuf {
    run(Command::new(repo_path("scripts/package.sh"))
        .arg("--binary")
        .arg(&vendor_binary().binary)
        .arg("--out")
        .arg(dir));
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb")
}

#[test]
fn the_deb_holds_binary_units_configs_man_pages_and_completions() {
    if !tools_present(&["cargo-deb", "dpkg-deb", "strip", "systemd-analyze"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(&work.path().join("out"));

    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/leasehold",
        "./usr/lib/leasehold/libllama.so.0",
        "./usr/lib/leasehold/libggml.so.0",
        "./usr/lib/leasehold/libggml-base.so.0",
        "./usr/lib/leasehold/backends/libggml-cpu-x64.so",
        "./usr/lib/leasehold/backends/libggml-cpu-haswell.so",
        "./usr/lib/systemd/system/leasehold-node.service",
        "./usr/lib/systemd/system/leasehold-license-server.service",
        "./etc/leasehold/node.toml",
        "./etc/leasehold/license-server.toml",
        "./usr/share/man/man1/leasehold.1.gz",
        "./usr/share/man/man1/leasehold-serve.1.gz",
        "./usr/share/man/man1/leasehold-license-server.1.gz",
        "./usr/share/man/man1/leasehold-config-check.1.gz",
        "./usr/share/bash-completion/completions/leasehold",
        "./usr/share/zsh/vendor-completions/_leasehold",
        "./usr/share/fish/vendor_completions.d/leasehold.fish",
        "./usr/share/doc/leasehold/copyright",
        "./usr/share/doc/leasehold/packaging.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing from:\n{listing}"
        );
    }
    // The configs are readable by root and the service group only.
    for line in listing.lines().filter(|l| l.contains("./etc/leasehold/")) {
        if line.ends_with(".toml") {
            assert!(line.starts_with("-rw-r-----"), "{line}");
        }
    }

    let info = |part: &str| text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg(part)));
    let control = info("control");
    assert!(control.contains("Package: leasehold"), "{control}");
    assert!(
        control.contains("libgomp1") && control.contains("adduser"),
        "{control}"
    );
    // The TPM support the binary links (libtss2-esys, and the loader that finds the
    // TCTIs, device and swtpm ones included).
    assert!(
        control.contains("libtss2-esys") && control.contains("libtss2-tctildr"),
        "{control}"
    );
    let conffiles = info("conffiles");
    assert!(conffiles.contains("/etc/leasehold/node.toml"));
    assert!(conffiles.contains("/etc/leasehold/license-server.toml"));
    // Maintainer scripts: the user is created; the units are installed but neither
    // enabled nor started; remove keeps state, only purge deletes it and says so.
    let postinst = info("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    let postrm = info("postrm");
    let remove = postrm
        .split("remove)")
        .nth(1)
        .and_then(|r| r.split(";;").next())
        .expect("a remove branch");
    assert!(
        !remove.contains("rm ") && remove.contains("kept /var/lib/leasehold"),
        "{remove}"
    );
    let purge = postrm.split("purge)").last().unwrap();
    assert!(
        purge.contains("rm -rf /var/lib/leasehold") && purge.contains("purge: deleting"),
        "{purge}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").args(["-n", "-c", &info(script)]));
    }

    // Unpacked: the binary runs, the shipped configs are valid.
    let root = work.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let bin = root.join("usr/bin/leasehold");
    // The packaged binary names its roots, and the demo root is not among them.
    let version = text(&run(Command::new(&bin).arg("--version")));
    assert!(version.starts_with("leasehold "), "{version}");
    assert!(
        version.contains(&format!("trusted root {}", vendor_binary().root_key_id)),
        "{version}"
    );
    assert!(
        !version.contains("DEMO") && !version.contains("demo/root.pub"),
        "{version}"
    );
    // It finds its llama.cpp libraries and CPU kernels in ../lib/leasehold (not through
    // the library path `cargo test` sets), and they are the files it was built with:
    // `check` gets past them (exit 25 otherwise) to the missing node directory.
    let out = Command::new(&bin)
        .args([
            "check",
            "--license",
            "x",
            "--sealed",
            "y",
            "--node-dir",
            "none",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .env("LEASEHOLD_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("none holds no node identity"), "{stderr}");
    for config in ["node.toml", "license-server.toml"] {
        run(Command::new(&bin)
            .args(["config", "check"])
            .arg(root.join("etc/leasehold").join(config)));
    }
    let unit = |name: &str| {
        std::fs::read_to_string(root.join("usr/lib/systemd/system").join(name)).unwrap()
    };
    let node = unit("leasehold-node.service");
    for directive in [
        "User=leasehold",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "LimitCORE=0",
        "LimitMEMLOCK=infinity",
        "ReadWritePaths=/var/lib/leasehold",
        "ExecStart=/usr/bin/leasehold serve --config /etc/leasehold/node.toml",
    ] {
        assert!(node.lines().any(|l| l == directive), "{directive}");
    }
    let server = unit("leasehold-license-server.service");
    assert!(server
        .lines()
        .any(|l| l == "ExecStart=/usr/bin/leasehold license-server --config /etc/leasehold/license-server.toml"));

    // systemd's own check of the units (the binary path pointed at the unpacked one).
    let units = work.path().join("units");
    std::fs::create_dir(&units).unwrap();
    for (name, body) in [
        ("leasehold-node.service", &node),
        ("leasehold-license-server.service", &server),
    ] {
        std::fs::write(
            units.join(name),
            body.replace("/usr/bin/leasehold", bin.to_str().unwrap()),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("leasehold-node.service"))
        .arg(units.join("leasehold-license-server.service"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn package_refuses_a_binary_that_trusts_the_demo_root() {
    if !tools_present(&["cargo-deb", "strip"]) {
        return;
    }
    // Positive control: the test binary is the default build, with the demo root.
    let demo = text(&run(
        Command::new(env!("CARGO_BIN_EXE_leasehold")).arg("--version")
    ));
    assert!(
        demo.contains("(demo/root.pub) DEMO: its secret key is public"),
        "{demo}"
    );

    let work = tempfile::tempdir().unwrap();
    let out = Command::new(repo_path("scripts/package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_leasehold"), "--out"])
        .arg(work.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("trusts the DEMO root"), "{stderr}");
    assert!(stderr.contains("--no-default-features"), "{stderr}");
    assert!(std::fs::read_dir(work.path()).unwrap().next().is_none());
}

#[test]
fn package_refuses_to_build_without_a_vendor_root() {
    if !tools_present(&["cargo-deb"]) {
        return;
    }
    // A `cargo` that only records being run: the refusal must come before any build.
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ran = work.path().join("cargo-ran");
    let fake = bin.join("cargo");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch {}\nexit 99\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let empty_roots = work.path().join("roots");
    std::fs::create_dir(&empty_roots).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    for script in ["scripts/package.sh", "scripts/release-binary.sh"] {
        let out = Command::new(repo_path(script))
            .env("PATH", &path)
            .env("LEASEHOLD_ROOTS_DIR", &empty_roots)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{script}: {stderr}");
        assert!(
            stderr.contains("holds no root public key")
                && stderr.contains("leasehold keygen --out vendor-root"),
            "{script}: {stderr}"
        );
        assert!(!ran.exists(), "{script} ran cargo");
    }
}

#[test]
fn a_vendor_build_refuses_a_license_signed_with_the_demo_root() {
    let vendor = vendor_binary();
    let version = text(&run(Command::new(&vendor.binary).arg("--version")));
    assert!(
        version.contains(&format!(
            "trusted root {} (roots/test-vendor.pub)",
            vendor.root_key_id
        )),
        "{version}"
    );
    assert!(!version.contains("DEMO"), "{version}");

    // A node enrolled and a model sealed (these do not depend on the roots); a hostile
    // licensee signs a license with the demo root's published secret key.
    let site = NodeSite::new(None);
    site.issue("demo.license", "+30d", &[]);
    let check = |binary: &Path, license: &str| {
        Command::new(binary)
            .args(["check", "--license", license, "--sealed", "m.sealed"])
            .args(["--node-dir", "node"])
            .current_dir(site.path())
            .output()
            .unwrap()
    };
    // Positive control: the default (demo-root) build accepts it.
    let accepted = check(Path::new(env!("CARGO_BIN_EXE_leasehold")), "demo.license");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    let refused = check(&vendor.binary, "demo.license");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains("does not chain to a root trusted by this build"),
        "{stderr}"
    );

    // `serve` refuses it the same way, before loading anything.
    let mut serve = Command::new(&vendor.binary)
        .args(NodeSite::serve_args("demo.license", &[]))
        .current_dir(site.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("the vendor build serves a demo-signed license");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(16));

    // The same terms signed by the vendor's root (with the vendor's build, which
    // issues only with its own roots) are accepted by the vendor build.
    run(Command::new(&vendor.binary)
        .arg("issue")
        .arg("--key")
        .arg(&vendor.root_key)
        .args(["--enrollment", "node.enroll", "--sealed", "m.sealed"])
        .args(["--content-key", "m.key", "--licensee", "Example Org"])
        .args(["--expires", "+30d", "--out", "vendor.license"])
        .current_dir(site.path()));
    let accepted = check(&vendor.binary, "vendor.license");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
}

/// `--long` flags of a `leasehold` command, from its `--help`.
fn flags_of(command: &str) -> Vec<String> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_leasehold")).args([command, "--help"]));
    text(&out)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .split(['=', '<', ' '])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `LEASEHOLD_FOO_BAR` must name a real `--foo-bar` of `command`.
fn assert_env_names_flags(env: &str, command: &str) {
    let flag = env
        .strip_prefix("LEASEHOLD_")
        .unwrap()
        .to_ascii_lowercase()
        .replace('_', "-");
    if ["log-format", "config"].contains(&flag.as_str()) {
        return;
    }
    assert!(
        flags_of(command).contains(&flag),
        "{env} is not a setting of `leasehold {command}` (no --{flag})"
    );
}

#[test]
fn container_and_kubernetes_files_match_the_binary() {
    // Containerfile: both targets, files it copies exist, env names real flags.
    let containerfile = std::fs::read_to_string(repo_path("packaging/Containerfile")).unwrap();
    for stage in ["AS build", "AS runtime", "AS node", "AS license-server"] {
        assert!(containerfile.contains(stage), "{stage}");
    }
    // The image's binary is built by the script that leaves the demo root out.
    assert!(
        containerfile.contains("RUN scripts/release-binary.sh"),
        "{containerfile}"
    );
    assert!(
        !containerfile.contains("cargo build"),
        "the Containerfile builds only through scripts/release-binary.sh"
    );
    let mut command = "";
    let mut node_env = Vec::new();
    for line in containerfile.lines() {
        if line.contains(" AS node") {
            command = "serve";
        } else if line.contains(" AS license-server") {
            command = "license-server";
        }
        if let Some(rest) = line.strip_prefix("COPY packaging/") {
            let source = rest.split_whitespace().next().unwrap();
            assert!(repo_path(&format!("packaging/{source}")).exists(), "{line}");
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let (name, value) = rest.split_once('=').unwrap();
            if !command.is_empty() {
                assert_env_names_flags(name, command);
            }
            if command == "serve" {
                node_env.push((name.to_string(), value.to_string()));
            }
        }
    }
    assert_serve_authenticates_clients("Containerfile node", &node_env);

    // Kubernetes: every document parses; workloads run unprivileged, probe /health,
    // and configure leasehold only through environment names that are real flags.
    let dir = repo_path("packaging/k8s");
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut workloads = 0;
    let (mut secrets_used, mut secrets_defined) = (Vec::new(), Vec::new());
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = dir.join(resource.as_str().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            if kind == "Secret" {
                secrets_defined.push(doc["metadata"]["name"].as_str().unwrap().to_string());
            }
            if !["Deployment", "StatefulSet"].contains(&kind.as_str()) {
                continue;
            }
            let spec = &doc["spec"]["template"]["spec"];
            for container in spec["containers"].as_sequence().unwrap() {
                let image = container["image"].as_str().unwrap();
                let command = match image {
                    "leasehold-node" => "serve",
                    "leasehold-license-server" => "license-server",
                    _ => continue,
                };
                workloads += 1;
                assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{file:?}");
                let sc = &container["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{file:?}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{file:?}");
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
                let mut env = Vec::new();
                for var in container["env"].as_sequence().unwrap() {
                    let name = var["name"].as_str().unwrap();
                    assert_env_names_flags(name, command);
                    if let Some(value) = var["value"].as_str() {
                        env.push((name.to_string(), value.to_string()));
                    }
                }
                if command != "serve" {
                    continue;
                }
                assert_serve_authenticates_clients(&format!("{file:?}"), &env);
                // The API key file comes from a Secret defined with the manifests.
                let keys = &env
                    .iter()
                    .find(|(name, _)| name == "LEASEHOLD_API_KEY_FILE")
                    .unwrap()
                    .1;
                let mount = container["volumeMounts"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|m| keys.starts_with(m["mountPath"].as_str().unwrap()))
                    .unwrap_or_else(|| panic!("{keys} is not under a volume mount"));
                let volume = spec["volumes"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                secrets_used.push(volume["secret"]["secretName"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(workloads, 2, "a node and a license server workload");
    assert!(!secrets_used.is_empty());
    for secret in &secrets_used {
        assert!(
            secrets_defined.contains(secret),
            "Secret {secret} is not defined"
        );
    }
}

/// `leasehold serve` with a workload's environment (its API key file replaced by one
/// here; its license server left out, so it fails fast on the missing license) does
/// not refuse its listen address for want of client authentication; without the key
/// file it does (the control: the address is one that needs keys).
fn assert_serve_authenticates_clients(workload: &str, env: &[(String, String)]) {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "test-client-key-0123456789\n").unwrap();
    let serve = |with_keys: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
        command
            .args(["serve", "--config"])
            .arg(repo_path("packaging/etc/node.toml"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LEASEHOLD_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            match name.as_str() {
                "LEASEHOLD_API_KEY_FILE" if with_keys => command.env(name, keys.path()),
                "LEASEHOLD_API_KEY_FILE" | "LEASEHOLD_LICENSE_SERVER" => continue,
                _ => command.env(name, value),
            };
        }
        command.output().unwrap()
    };
    const REFUSAL: &str = "no --api-key-file is given";
    let without = serve(false);
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        without.status.code() == Some(2) && stderr.contains(REFUSAL),
        "{workload}: a public listen address without keys must be refused: {stderr}"
    );
    let with = serve(true);
    let stderr = String::from_utf8_lossy(&with.stderr);
    assert!(
        !stderr.contains(REFUSAL) && with.status.code() != Some(2),
        "{workload}: {stderr}"
    );
}
