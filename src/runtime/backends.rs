//! llama.cpp's native code: only the libraries this build made, and the best CPU
//! kernels this machine can run.
//!
//! llama.cpp is linked as shared libraries (libllama, libggml, libggml-base), and its
//! CPU kernels come as one module per CPU generation (`libggml-cpu-x64` ...
//! `libggml-cpu-sapphirerapids`), chosen at start as llama.cpp's own releases do: each
//! module scores this CPU (0 when it uses an instruction the CPU lacks) and the highest
//! wins. A library is code inside the process that holds the plaintext weights, so
//! before any key is unwrapped:
//!
//! - every llama.cpp library mapped into the process must be the file this build made:
//!   its SHA-256 is compiled in (build.rs), and the file is checked by the inode the
//!   mapping uses, so a library replaced on disk is refused;
//! - each CPU module is read, checked against its compiled-in SHA-256, copied into a
//!   sealed anonymous memory file, and loaded from there: what runs is what was checked.
//!   A module added to the directory that this build did not make is never loaded.
//!
//! The modules are looked for in `../lib/leasehold/backends` beside the executable (an
//! installed package), then in the directory the build put them in (dev and tests).
//! `LEASEHOLD_CPU_KERNELS=VARIANT` (e.g. `haswell`) loads that module instead of the
//! best; it is checked the same way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use rustix::fs::{MemfdFlags, SealFlags};
use sha2::{Digest as _, Sha256};

include!(concat!(env!("OUT_DIR"), "/native_libs.rs"));

/// Modules never picked on their own (`LEASEHOLD_CPU_KERNELS` can still name them):
/// llama.cpp's AMX kernels, only in the `sapphirerapids` module, crash at this llama.cpp
/// version on the first prompt of a Q4_1 model (SIGILL in the AMX tile code here; a
/// native llama-server build of llama.cpp 0.25.3 crashes the same way, SIGSEGV in
/// `ggml_backend_amx_mul_mat`). The next best module has the same AVX-512 kernels.
const LEFT_OUT: &[&str] = &["libggml-cpu-sapphirerapids"];

/// The environment variable that names the CPU module to load.
pub const CPU_KERNELS_ENV: &str = "LEASEHOLD_CPU_KERNELS";

/// Why the native libraries were refused.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{path} is not the library this leasehold build was made with (its SHA-256 differs): the installation was modified or mixed with another version. Reinstall leasehold")]
    Modified { path: PathBuf },
    #[error("{path} is mapped into this process, but this leasehold build made no library of that name: refusing to run code it did not build next to the weights. Start leasehold without LD_PRELOAD or similar")]
    Unknown { path: PathBuf },
    #[error("{path} was replaced on disk after it was loaded; restart leasehold once the installation is complete")]
    Replaced { path: PathBuf },
    #[error(
        "no CPU kernel module found in {dirs}: the installation is incomplete. Reinstall leasehold"
    )]
    NoModules { dirs: String },
    #[error("this CPU cannot run any of leasehold's CPU kernel modules ({tried}); the supported minimum is an x86-64 CPU")]
    NoVariant { tried: String },
    #[error("{CPU_KERNELS_ENV}={wanted}: this CPU cannot run that module (it needs instructions the CPU lacks); unset it to pick the best one")]
    Unsupported { wanted: String },
    #[error(
        "{CPU_KERNELS_ENV}={wanted}: this build has no such CPU kernel module; it has {known}"
    )]
    UnknownVariant { wanted: String, known: String },
    #[error("cannot load the CPU kernel module {name}: {detail}")]
    Load { name: String, detail: String },
    #[error("cannot check the native libraries: {0}")]
    Io(String),
}

/// The CPU kernels in use.
#[derive(Debug, Clone)]
pub struct CpuKernels {
    /// The module's name without `libggml-cpu-` (`haswell`, `icelake`, ...).
    pub variant: String,
    /// Its score for this CPU (higher: more of the CPU's instructions used).
    pub score: i32,
    /// The directory it was loaded from.
    pub dir: PathBuf,
}

fn known(table: &[(&str, [u8; 32])], stem: &str) -> Option<[u8; 32]> {
    table.iter().find(|(s, _)| *s == stem).map(|(_, h)| *h)
}

/// A library's stem: its file name up to `.so` (`libggml-base.so.0.26.0` ->
/// `libggml-base`).
fn stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.contains(".so")
        .then(|| name.split(".so").next().unwrap_or(name).to_string())
}

fn is_llama_library(stem: &str) -> bool {
    stem.starts_with("libllama") || stem.starts_with("libggml")
}

/// Check every llama.cpp library mapped into this process against the SHA-256 this
/// build compiled in, by the inode the mapping uses.
pub fn verify_linked() -> Result<(), NativeError> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| NativeError::Io(format!("/proc/self/maps: {e}")))?;
    // path -> (device as (major, minor), inode) of its mapping
    let mut mapped: BTreeMap<PathBuf, (Option<(u64, u64)>, u64)> = BTreeMap::new();
    for mapping in super::maps::file_mappings(&maps) {
        let path = PathBuf::from(mapping.path);
        let Some(stem) = stem(&path) else { continue };
        if !is_llama_library(&stem) {
            continue;
        }
        mapped.insert(path, (mapping.device, mapping.inode));
    }
    for (path, (device, inode)) in &mapped {
        let stem = stem(path).unwrap_or_default();
        let Some(expected) = known(LINKED, &stem) else {
            return Err(NativeError::Unknown { path: path.clone() });
        };
        let file = File::open(path).map_err(|_| NativeError::Replaced { path: path.clone() })?;
        let meta = file
            .metadata()
            .map_err(|e| NativeError::Io(format!("{}: {e}", path.display())))?;
        let ours = (
            u64::from(rustix::fs::major(meta.dev())),
            u64::from(rustix::fs::minor(meta.dev())),
        );
        if meta.ino() != *inode || *device != Some(ours) {
            return Err(NativeError::Replaced { path: path.clone() });
        }
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|e| NativeError::Io(format!("{}: {e}", path.display())))?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != expected {
            return Err(NativeError::Modified { path: path.clone() });
        }
    }
    Ok(())
}

/// Where this build put the CPU modules (dev and test builds load them from there; its
/// sibling `lib` holds the linked libraries). Packaging copies both from there.
pub fn build_backends_dir() -> &'static Path {
    Path::new(BUILD_BACKENDS_DIR)
}

/// Where the CPU modules are: beside an installed binary, else where the build put them.
fn module_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("../lib/leasehold/backends")))
    {
        dirs.push(bin);
    }
    dirs.push(PathBuf::from(BUILD_BACKENDS_DIR));
    dirs
}

/// A checked module, in a sealed memfd (kept open for the life of the process).
struct Module {
    name: String,
    memfd: File,
}

impl Module {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()))
    }
}

/// Read `path`, check it against `expected`, and copy it into a sealed memfd.
fn checked_module(name: &str, path: &Path, expected: [u8; 32]) -> Result<Module, NativeError> {
    let bytes =
        std::fs::read(path).map_err(|e| NativeError::Io(format!("{}: {e}", path.display())))?;
    if <[u8; 32]>::from(Sha256::digest(&bytes)) != expected {
        return Err(NativeError::Modified {
            path: path.to_path_buf(),
        });
    }
    let io = |e: std::io::Error| NativeError::Io(format!("memfd for {name}: {e}"));
    // EXEC (Linux 6.3+) asks for an executable memfd where the kernel defaults to
    // non-executable ones; older kernels reject the flag and make them executable.
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = rustix::fs::memfd_create(name, flags | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create(name, flags))
        .map_err(|e| io(e.into()))?;
    let mut memfd = File::from(fd);
    memfd.write_all(&bytes).map_err(io)?;
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(|e| io(e.into()))?;
    Ok(Module {
        name: name.to_string(),
        memfd,
    })
}

/// Check the linked libraries, then pick, check and load the best CPU module. Once per
/// process, before llama.cpp is initialised.
pub fn load() -> Result<CpuKernels, NativeError> {
    verify_linked()?;
    crate::sys::silence_llama_logs();
    let dirs = module_dirs();
    let Some(dir) = dirs.iter().find(|d| {
        CPU_VARIANTS
            .iter()
            .any(|(s, _)| d.join(format!("{s}.so")).is_file())
    }) else {
        return Err(NativeError::NoModules {
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let variant = |stem: &str| stem.trim_start_matches("libggml-cpu-").to_string();
    let wanted = std::env::var(CPU_KERNELS_ENV)
        .ok()
        .filter(|w| !w.is_empty());
    if let Some(w) = &wanted {
        if !CPU_VARIANTS.iter().any(|(s, _)| variant(s) == *w) {
            return Err(NativeError::UnknownVariant {
                wanted: w.clone(),
                known: CPU_VARIANTS
                    .iter()
                    .map(|(s, _)| variant(s))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let mut best: Option<(i32, Module)> = None;
    let mut tried = Vec::new();
    for (stem, expected) in CPU_VARIANTS {
        match &wanted {
            Some(w) if *w != variant(stem) => continue,
            None if LEFT_OUT.contains(stem) => continue,
            _ => {}
        }
        let path = dir.join(format!("{stem}.so"));
        if !path.is_file() {
            continue;
        }
        let module = checked_module(stem, &path, *expected)?;
        let score = crate::sys::backend_module_score(&module.path()).map_err(|detail| {
            NativeError::Load {
                name: stem.to_string(),
                detail,
            }
        })?;
        tried.push(variant(stem));
        if score > 0 && best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, module));
        }
    }
    let Some((score, module)) = best else {
        return Err(match wanted {
            Some(wanted) => NativeError::Unsupported { wanted },
            None => NativeError::NoVariant {
                tried: tried.join(", "),
            },
        });
    };
    if !crate::sys::load_backend_module(&module.path()) {
        return Err(NativeError::Load {
            name: module.name.clone(),
            detail: "llama.cpp refused it (ggml_backend_load)".into(),
        });
    }
    let kernels = CpuKernels {
        variant: module.name.trim_start_matches("libggml-cpu-").to_string(),
        score,
        dir: dir.clone(),
    };
    // The module stays mapped for the life of the process; so does its memfd.
    std::mem::forget(module);
    Ok(kernels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_stems() {
        assert_eq!(
            stem(Path::new("/x/libggml-base.so.0.26.0")).as_deref(),
            Some("libggml-base")
        );
        assert_eq!(
            stem(Path::new("libggml-cpu-icelake.so")).as_deref(),
            Some("libggml-cpu-icelake")
        );
        assert_eq!(stem(Path::new("/usr/lib/locale/C.utf8")), None);
        assert!(is_llama_library("libllama-common"));
        assert!(!is_llama_library("libgomp"));
    }

    #[test]
    fn the_build_compiled_in_the_libraries_and_modules() {
        assert!(LINKED.iter().any(|(s, _)| *s == "libllama"));
        assert!(CPU_VARIANTS.iter().any(|(s, _)| *s == "libggml-cpu-x64"));
    }
}
