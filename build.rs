//! Compile the trust roots into the binary.
//!
//! Every `keys/roots/*.pub` file is a production root (`LEASEHOLD_ROOTS_DIR`, when set
//! at build time, names another directory of them: the tests build a vendor binary
//! with a test root that way). `keys/demo/root.pub` is added only with the `demo-root`
//! feature (on by default, for the quickstart and tests); `leasehold --version` then
//! says DEMO. A build with no root at all fails: it could verify nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine;

fn read_root(path: &Path) -> [u8; 32] {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read trust root {}: {e}", path.display()));
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("{} holds no key line", path.display()));
    let encoded = line
        .strip_prefix("ed25519-public:")
        .unwrap_or_else(|| panic!("{} is not an Ed25519 public key file", path.display()));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("{}: bad base64: {e}", path.display()));
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("{}: an Ed25519 public key is 32 bytes", path.display()))
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let keys = manifest.join("keys");
    println!("cargo:rerun-if-env-changed=LEASEHOLD_ROOTS_DIR");
    let roots_dir = match std::env::var_os("LEASEHOLD_ROOTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => keys.join("roots"),
    };
    // A missing path would make cargo rerun this script, and rebuild the crate, on
    // every build: watch the directory that would hold it instead.
    let watched = if roots_dir.exists() {
        roots_dir.as_path()
    } else {
        roots_dir.parent().unwrap_or(&manifest)
    };
    println!("cargo:rerun-if-changed={}", watched.display());
    println!("cargo:rerun-if-changed=keys/demo/root.pub");

    let mut roots: Vec<(String, [u8; 32], bool)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&roots_dir) {
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            let name = format!("roots/{}", path.file_name().unwrap().to_string_lossy());
            roots.push((name, read_root(&path), false));
        }
    }
    if std::env::var_os("CARGO_FEATURE_DEMO_ROOT").is_some() {
        roots.push((
            "demo/root.pub".into(),
            read_root(&keys.join("demo/root.pub")),
            true,
        ));
        if std::env::var("PROFILE").as_deref() == Ok("release") {
            println!(
                "cargo:warning=this release build trusts the DEMO root, whose secret key is \
                 public: anyone can sign licenses it accepts. Vendors build with \
                 --no-default-features and their root in keys/roots/ (scripts/release-binary.sh)"
            );
        }
    }
    if roots.is_empty() {
        panic!(
            "no trust root to compile in: {} holds no NAME.pub. Put your root's public key \
             there (made with `leasehold keygen`), or build with the demo-root feature",
            roots_dir.display()
        );
    }

    let mut code = String::from("pub(crate) const COMPILED_ROOTS: &[CompiledRoot] = &[\n");
    for (name, key, demo) in roots {
        writeln!(
            code,
            "    CompiledRoot {{ name: {name:?}, key: {key:?}, demo: {demo} }},"
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("roots.rs");
    std::fs::write(out, code).unwrap();
}
