//! llama.cpp's libraries and CPU-kernel modules, swapped as a hostile operator would:
//! with `cp` and a text editor on an installed copy (`bin/leasehold` beside
//! `lib/leasehold/`, as the .deb and the container lay it out), never by patching the
//! binary. A library is code in the process that holds the plaintext weights.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::node::NodeSite;

/// An installed copy: bin/leasehold, lib/leasehold/lib*.so.0 and
/// lib/leasehold/backends/libggml-cpu-*.so, copied from this build.
struct Install {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Install {
    fn new() -> Install {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let backends = leasehold::runtime::backends::build_backends_dir();
        let libs = backends.parent().unwrap().join("lib");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/leasehold/backends")).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_leasehold"), root.join("bin/leasehold")).unwrap();
        for entry in std::fs::read_dir(&libs).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // The SONAME links (libllama.so.0 ...), copied as the files they name.
            if name.ends_with(".so.0") {
                std::fs::copy(entry.path(), root.join("lib/leasehold").join(&name)).unwrap();
            }
        }
        for entry in std::fs::read_dir(backends).unwrap().flatten() {
            std::fs::copy(
                entry.path(),
                root.join("lib/leasehold/backends").join(entry.file_name()),
            )
            .unwrap();
        }
        Install { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The installed binary, without the library path `cargo test` sets (so it finds its
    /// libraries as an installed one does: through ../lib/leasehold).
    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(self.path("bin/leasehold"));
        command
            .args(args)
            .current_dir(dir)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LEASEHOLD_LOG");
        command
    }

    /// `check` with files that do not exist: the libraries are checked before anything
    /// else, so a refusal is exit 25 and anything else got past them.
    fn check(&self) -> Output {
        self.check_command().output().unwrap()
    }

    fn check_command(&self) -> Command {
        self.command(
            self.root.as_path(),
            &[
                "check",
                "--license",
                "none.license",
                "--sealed",
                "none.sealed",
                "--node-dir",
                "none",
            ],
        )
    }
}

/// Append to a file, as an operator would patch it: ld.so still loads an ELF file with
/// bytes after its end.
fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `check` got past the libraries to the missing node directory (exit 1).
fn passed_the_libraries(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(
        stderr(out).contains("none holds no node identity"),
        "{}",
        stderr(out)
    );
}

#[test]
fn an_installed_copy_loads_its_own_libraries_and_the_best_cpu_kernels() {
    let Some((model, _)) = common::demo_prerequisites() else {
        return;
    };
    let install = Install::new();
    let site = NodeSite::new(Some(&model));
    site.issue("x.license", "+1h", &[]);
    // A file that is no library at all, named like a kernel module: never loaded (the
    // binary loads only the modules this build made).
    std::fs::write(
        install.path("lib/leasehold/backends/libggml-cpu-rogue.so"),
        b"not an ELF file",
    )
    .unwrap();
    let out = install
        .command(
            site.path(),
            &NodeSite::run_args(
                "x.license",
                &[
                    "--prompt",
                    "Hello",
                    "--max-tokens",
                    "4",
                    "--temperature",
                    "0",
                ],
            ),
        )
        .env("LEASEHOLD_LOG", "info")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let kernels = log
        .lines()
        .find(|l| l.contains("CPU kernels: "))
        .unwrap_or_else(|| panic!("no CPU kernels line in {log}"));
    assert!(
        kernels.contains(
            &install
                .path("bin/../lib/leasehold/backends")
                .display()
                .to_string()
        ),
        "{kernels}"
    );
    assert!(!kernels.contains("rogue"), "{kernels}");
}

#[test]
fn a_modified_cpu_kernel_module_is_refused() {
    let install = Install::new();
    // Positive control: unmodified, `check` gets past the libraries to the missing files.
    passed_the_libraries(&install.check());
    append(
        &install.path("lib/leasehold/backends/libggml-cpu-x64.so"),
        b"\0patched",
    );
    let out = install.check();
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("libggml-cpu-x64.so is not the library this leasehold build was made with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_modified_libllama_is_refused_installed_preloaded_or_not_loaded_at_all() {
    let install = Install::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("libllama.so.0");
    std::fs::copy(install.path("lib/leasehold/libllama.so.0"), &copy).unwrap();
    append(&copy, b"\0patched");
    // Through LD_LIBRARY_PATH: not loaded at all (the binary's RPATH comes first).
    let out = install
        .check_command()
        .env("LD_LIBRARY_PATH", elsewhere.path())
        .output()
        .unwrap();
    passed_the_libraries(&out);
    // Preloaded, it takes libllama's place: refused.
    let out = install
        .check_command()
        .env("LD_PRELOAD", &copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("libllama.so.0 is not the library"),
        "{}",
        stderr(&out)
    );

    append(
        &install.path("lib/leasehold/libggml-base.so.0"),
        b"\0patched",
    );
    let out = install.check();
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("libggml-base.so.0 is not the library"),
        "{}",
        stderr(&out)
    );
}
