//! File writing that never leaves a half-written output and never overwrites a key.
//!
//! Every output goes to a temporary file in the destination directory, is fsynced, and
//! then takes its final name in one step: `rename` for documents that may be replaced,
//! `link` (which fails when the name exists) for secrets that must never be overwritten.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for secret files (keys): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// Mode for public files.
pub const PUBLIC_MODE: u32 = 0o644;

/// Errors writing or reading files, each naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path} already exists; refusing to overwrite it (move it away first if you really mean to replace it)")]
    AlreadyExists { path: PathBuf },
    #[error(
        "{path} is {size} bytes, larger than the {limit} bytes a {what} may be; it is not a {what}"
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl FsError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        FsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How an output may treat an existing file of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Replace an existing file atomically (documents: licenses, enrollments, state).
    Allowed,
    /// Fail if the file exists (keys).
    Never,
}

/// A temporary file beside its destination that becomes the destination on [`commit`].
/// Dropped without commit, it is removed.
///
/// [`commit`]: PendingFile::commit
pub struct PendingFile {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Create the temporary file with `mode` in `dest`'s directory.
    pub fn create(dest: &Path, mode: u32) -> Result<Self, FsError> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let mut suffix = [0u8; 6];
        crate::crypto::random::fill(&mut suffix);
        let temp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| FsError::io(&temp, e))?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::io(&temp, e))?;
        Ok(PendingFile {
            file,
            temp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync the data, give it its final name, fsync the directory.
    pub fn commit(mut self, replace: Replace) -> Result<(), FsError> {
        self.file
            .sync_all()
            .map_err(|e| FsError::io(&self.temp, e))?;
        match replace {
            Replace::Allowed => {
                fs::rename(&self.temp, &self.dest).map_err(|e| FsError::io(&self.dest, e))?
            }
            Replace::Never => {
                fs::hard_link(&self.temp, &self.dest).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        FsError::AlreadyExists {
                            path: self.dest.clone(),
                        }
                    } else {
                        FsError::io(&self.dest, e)
                    }
                })?;
                let _ = fs::remove_file(&self.temp);
            }
        }
        self.committed = true;
        sync_dir(parent_dir(&self.dest));
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Write `bytes` to `dest` atomically with `mode`.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32, replace: Replace) -> Result<(), FsError> {
    if replace == Replace::Never && dest.exists() {
        return Err(FsError::AlreadyExists {
            path: dest.to_path_buf(),
        });
    }
    let mut pending = PendingFile::create(dest, mode)?;
    pending
        .file_mut()
        .write_all(bytes)
        .map_err(|e| FsError::io(dest, e))?;
    pending.commit(replace)
}

/// Read a whole file, refusing files larger than `limit` bytes before reading them.
pub fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FsError> {
    let file = File::open(path).map_err(|e| FsError::io(path, e))?;
    let size = file.metadata().map_err(|e| FsError::io(path, e))?.len();
    if size > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            what,
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` keeps the bound even if the file grows while we read it.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FsError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            what,
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: some filesystems refuse fsync on directories.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
