//! Packaging: the .deb built by `scripts/package.sh` (from the binary under test) and
//! checked with dpkg's own tools, its systemd units checked by `systemd-analyze`, and
//! the container and Kubernetes files checked against the binary's real flags.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
        "missing {missing:?}: run scripts/setup.sh"
    );
    eprintln!("skipped: {missing:?} not installed (scripts/setup.sh installs them)");
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

/// Build the .deb into `dir` from the binary these tests run.
fn build_deb(dir: &Path) -> PathBuf {
    run(Command::new(repo_path("scripts/package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_leasehold"), "--out"])
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
    assert!(text(&run(Command::new(&bin).arg("--version"))).starts_with("leasehold "));
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
    let mut command = "";
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
            let name = rest.split('=').next().unwrap();
            if !command.is_empty() {
                assert_env_names_flags(name, command);
            }
        }
    }

    // Kubernetes: every document parses; workloads run unprivileged, probe /health,
    // and configure leasehold only through environment names that are real flags.
    let dir = repo_path("packaging/k8s");
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut workloads = 0;
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = dir.join(resource.as_str().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
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
                for env in container["env"].as_sequence().unwrap() {
                    assert_env_names_flags(env["name"].as_str().unwrap(), command);
                }
            }
        }
    }
    assert_eq!(workloads, 2, "a node and a license server workload");
}
