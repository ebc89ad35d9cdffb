//! Attack 6 of issue 13, cloning the machine, performed with real processes: a node is
//! enrolled and licensed on this machine, then `leasehold check` runs as it would on a
//! clone, a copy of this disk in another box of the same model: the same machine-id,
//! host name, CPU and memory, but the other box's board UUID, disk serial and NIC. The
//! other box is simulated by bind-mounting other values over the sysfs files those
//! components are read from, in a private mount namespace (root, `unshare`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::node::{leasehold, NodeSite};
use serde_json::Value;

/// Where each readable clone-resistant component of this machine is read from.
fn sources(fingerprint: &Value) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for component in fingerprint["components"].as_array().unwrap() {
        let kind = component["kind"].as_str().unwrap();
        let raw: Vec<&str> = component["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["raw"].as_str().unwrap())
            .collect();
        // The files hold the raw value, in another case for UUIDs and MACs.
        let file_holds = |path: &Path| {
            std::fs::read_to_string(path).is_ok_and(|text| {
                let text = text.trim();
                raw.contains(&text) || raw.contains(&text.to_ascii_lowercase().as_str())
            })
        };
        let candidates: Vec<PathBuf> = match kind {
            "product-uuid" => vec![PathBuf::from("/sys/class/dmi/id/product_uuid")],
            "root-disk-serial" => std::fs::read_dir("/sys/block")
                .unwrap()
                .flatten()
                .flat_map(|disk| {
                    ["wwid", "device/wwid", "serial", "device/serial"].map(|f| disk.path().join(f))
                })
                .collect(),
            "default-route-mac" => std::fs::read_dir("/sys/class/net")
                .unwrap()
                .flatten()
                .map(|interface| interface.path().join("address"))
                .collect(),
            _ => continue,
        };
        for path in candidates.into_iter().filter(|p| file_holds(p)) {
            found.push((kind.to_string(), path));
        }
    }
    found
}

/// `leasehold check` in a private mount namespace with `mounts` (fake file, over) bound.
fn check_with(site: &NodeSite, mounts: &[(PathBuf, PathBuf)]) -> Output {
    let mut script = String::new();
    for (fake, over) in mounts {
        script.push_str(&format!(
            "mount --bind '{}' '{}' || exit 99\n",
            fake.display(),
            over.display()
        ));
    }
    script.push_str(&format!(
        "exec '{}' check --license node.license --sealed m.sealed --node-dir node\n",
        env!("CARGO_BIN_EXE_leasehold")
    ));
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(site.path())
        .output()
        .unwrap()
}

#[test]
fn a_copy_of_the_disk_in_another_box_of_the_same_model_is_refused() {
    let root = is_root();
    let unshare = Command::new("unshare").arg("--version").output().is_ok();
    if !(root && unshare) {
        assert!(
            std::env::var_os("LEASEHOLD_REQUIRE_ALL").is_none(),
            "this test runs as root with unshare (util-linux)"
        );
        eprintln!("skipped: needs root and unshare");
        return;
    }
    let site = NodeSite::new(None);
    let fingerprint: Value =
        serde_json::from_slice(&leasehold(site.path(), &["fingerprint", "--json"]).stdout).unwrap();
    let sources = sources(&fingerprint);
    if sources.is_empty() {
        // Nothing here tells this box from another of its model: the default policy
        // cannot refuse a clone, and the operator is told so.
        let human = leasehold(site.path(), &["fingerprint"]);
        let text = String::from_utf8_lossy(&human.stdout);
        assert!(
            text.contains("warning: the policy requires none of"),
            "{text}"
        );
        eprintln!("skipped: no clone-resistant component is readable on this machine");
        return;
    }
    site.issue("node.license", "+30d", &[]);

    // Positive control: the same values mounted over their files change nothing.
    let work = tempfile::tempdir().unwrap();
    let same: Vec<(PathBuf, PathBuf)> = sources
        .iter()
        .enumerate()
        .map(|(i, (_, path))| {
            let copy = work.path().join(format!("same-{i}"));
            std::fs::copy(path, &copy).unwrap();
            (copy, path.clone())
        })
        .collect();
    let out = check_with(&site, &same);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The clone: every component of this box reads as another box's.
    let other: Vec<(PathBuf, PathBuf)> = sources
        .iter()
        .enumerate()
        .map(|(i, (kind, path))| {
            let fake = work.path().join(format!("other-{i}"));
            let value = match kind.as_str() {
                "default-route-mac" => "3c:ec:ef:12:34:56",
                "product-uuid" => "4c4c4544-0000-1111-2222-333344445555",
                _ => "CLONE-BOX-DISK-0001",
            };
            std::fs::write(&fake, format!("{value}\n")).unwrap();
            (fake, path.clone())
        })
        .collect();
    let out = check_with(&site, &other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(14), "{stderr}");
    assert!(stderr.contains("required component(s) differ"), "{stderr}");
    let kinds: Vec<&str> = sources.iter().map(|(kind, _)| kind.as_str()).collect();
    for kind in kinds {
        assert!(stderr.contains(kind), "{kind} not named: {stderr}");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
