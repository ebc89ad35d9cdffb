//! The one module allowed to use `unsafe`: memory maps of files, and loading llama.cpp's
//! CPU-kernel modules.
//!
//! Memory-mapping a file is `unsafe` in Rust because another process could change the
//! file underneath the mapping. Every map made here is of a file leasehold opened itself
//! and whose contents are authenticated (sealed segments) or written only by this process.
//! Loading a shared object runs its code: the modules loaded here are sealed memfds
//! holding bytes whose SHA-256 matched the one this build compiled in
//! (`runtime::backends`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

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

/// The score a ggml CPU-kernel module gives this CPU (0: it uses instructions the CPU
/// lacks), from its `ggml_backend_score`; the module is unloaded again.
pub fn backend_module_score(path: &Path) -> Result<i32, String> {
    // SAFETY: loading runs the module's initialisers; `path` is a sealed memfd holding
    // bytes checked against the SHA-256 this build compiled in for the module, that is,
    // llama.cpp's own code from this build (runtime::backends::checked_module).
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // SAFETY: ggml declares `int ggml_backend_score(void)` in every CPU module
    // (ggml-backend-impl.h, GGML_BACKEND_DL_SCORE_IMPL); the function type matches, and
    // the call happens while `library` is loaded.
    let score = unsafe {
        library
            .get::<unsafe extern "C" fn() -> i32>(b"ggml_backend_score\0")
            .map(|score| score())
    };
    score.map_err(|e| format!("no ggml_backend_score: {e}"))
}

/// Register a ggml backend module with llama.cpp (`ggml_backend_load`); false when
/// llama.cpp refuses it.
pub fn load_backend_module(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: the module is a checked memfd as in `backend_module_score`; `path` is a
    // NUL-terminated string that outlives the call, which copies what it keeps.
    !unsafe { llama_cpp_sys_2::ggml_backend_load(path.as_ptr()) }.is_null()
}

/// Silence llama.cpp's and ggml's own logging (it writes to stderr), from before the
/// first module is loaded; leasehold logs what matters itself.
pub fn silence_llama_logs() {
    unsafe extern "C" fn discard(
        _level: llama_cpp_sys_2::ggml_log_level,
        _text: *const std::os::raw::c_char,
        _user_data: *mut std::os::raw::c_void,
    ) {
    }
    // SAFETY: `discard` matches ggml_log_callback and ignores its arguments; the null
    // user data is never read.
    unsafe { llama_cpp_sys_2::llama_log_set(Some(discard), std::ptr::null_mut()) }
}
