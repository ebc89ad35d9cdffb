//! Compile the trust roots into the binary, and the SHA-256 of llama.cpp's shared
//! libraries and CPU-kernel modules (see `native_libraries`).
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
    // Only the inference runtime links llama.cpp.
    if std::env::var_os("CARGO_FEATURE_INFERENCE").is_some() {
        native_libraries();
    }
}

fn sha256(path: &Path) -> [u8; 32] {
    use sha2::Digest;
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    sha2::Sha256::digest(bytes).into()
}

/// The regular `lib*.so*` files of a directory (not the version symlinks), sorted, each
/// with its stem: the name up to `.so` (`libggml-base.so.0.26.0` -> `libggml-base`).
fn libraries_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split(".so").next()?.to_string();
            (name.starts_with("lib") && name.contains(".so")).then(|| (stem, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// llama.cpp is built as shared libraries (libllama, libggml, libggml-base) plus one
/// CPU-kernel module per CPU generation, which `serve` picks at start. A library is code
/// in the process that holds the plaintext weights, so the binary loads only the files
/// this build made: their SHA-256 is compiled in (`src/runtime/backends.rs` checks the
/// linked libraries and loads the chosen module from the bytes it checked).
///
/// The binary finds the libraries in `../lib/leasehold/` beside itself (an installed
/// package: /usr/bin and /usr/lib/leasehold), and in dev and test builds in
/// llama-cpp-sys-2's output directory (its RPATH).
fn native_libraries() {
    let backends = PathBuf::from(std::env::var("DEP_LLAMA_BACKENDS_DIR").expect(
        "llama-cpp-sys-2 did not say where its backend modules are (its dynamic-backends feature is off?)",
    ));
    let out = backends.parent().expect("backends dir has a parent");
    let lib_dir = out.join("lib");
    let mut code = String::new();
    for (name, dir) in [("LINKED", &lib_dir), ("CPU_VARIANTS", &backends)] {
        let libs = libraries_in(dir);
        assert!(!libs.is_empty(), "no libraries in {}", dir.display());
        writeln!(code, "pub(crate) const {name}: &[(&str, [u8; 32])] = &[").unwrap();
        for (stem, path) in libs {
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(code, "    ({stem:?}, {:?}),", sha256(&path)).unwrap();
        }
        code.push_str("];\n");
    }
    writeln!(
        code,
        "pub(crate) const BUILD_BACKENDS_DIR: &str = {:?};",
        backends.to_str().expect("a UTF-8 build path")
    )
    .unwrap();
    let generated = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("native_libs.rs");
    std::fs::write(generated, code).unwrap();

    // DT_RPATH, not DT_RUNPATH: it also serves libllama's own dependencies (libggml,
    // libggml-base), and LD_LIBRARY_PATH does not come before it.
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/leasehold");
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
}
