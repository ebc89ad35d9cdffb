//! The one module allowed to use `unsafe`: memory maps of files, and (in [`llama`], with
//! the `inference` feature) loading llama.cpp's CPU-kernel modules and the few calls
//! into llama.cpp that llama-cpp-2 does not wrap.
//!
//! Memory-mapping a file is `unsafe` in Rust because another process could change the
//! file underneath the mapping. Every map made here is of a file leasehold opened itself
//! and whose contents are authenticated (sealed segments) or written only by this process.
//! Loading a shared object runs its code: the modules loaded here are sealed memfds
//! holding bytes whose SHA-256 matched the one this build compiled in
//! (`runtime::backends`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapMut};

/// Map a file read-only.
pub fn map_readonly(file: &File) -> io::Result<Mmap> {
    // SAFETY: the mapping is read-only; sealed data read through it is authenticated
    // segment by segment, so a concurrent change is detected, not trusted.
    unsafe { Mmap::map(file) }
}

/// Map an anonymous memory file (memfd) read-write.
pub fn map_memfd(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the memfd was created by this process, has no name in any filesystem and
    // is not shared with another process, so nothing else can change it under the map.
    unsafe { MmapMut::map_mut(file) }
}

/// Map a file read-write; the caller has sized it and holds the only handle.
pub fn map_writable(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the file is a fresh temporary file created by this process (not yet
    // renamed into place), so no other process is expected to write it concurrently.
    unsafe { MmapMut::map_mut(file) }
}

#[cfg(feature = "inference")]
mod llama;
#[cfg(feature = "inference")]
pub use llama::*;
