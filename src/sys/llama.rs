//! llama.cpp through its C API, where llama-cpp-2 has no safe wrapper (part of [`super`],
//! the one module allowed to use `unsafe`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

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

/// One tensor of a GGUF file: its name and where its bytes lie in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    /// Absolute offset of the first byte in the file.
    pub offset: u64,
    pub size: u64,
}

/// The tensor table of the GGUF file at `path`, read by ggml's own GGUF parser (the one
/// llama.cpp loads with; metadata only, no tensor data).
pub fn gguf_tensor_table(path: &Path) -> Result<Vec<GgufTensor>, String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let params = llama_cpp_sys_2::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: `c_path` is NUL-terminated and outlives the call; with a null `ctx` and
    // `no_alloc` ggml reads only the header and the tensor table, into a context it
    // returns (or null on a malformed file), freed below.
    let ctx = unsafe { llama_cpp_sys_2::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return Err(format!("ggml cannot read {} as GGUF", path.display()));
    }
    // SAFETY: `ctx` is the live context just returned; every id passed is in
    // 0..gguf_get_n_tensors, and each name is a NUL-terminated string owned by `ctx`,
    // copied before `ctx` is freed; `ctx` is freed once, after its last use.
    let table = unsafe {
        let base = llama_cpp_sys_2::gguf_get_data_offset(ctx) as u64;
        let table = (0..llama_cpp_sys_2::gguf_get_n_tensors(ctx))
            .map(|id| GgufTensor {
                name: std::ffi::CStr::from_ptr(llama_cpp_sys_2::gguf_get_tensor_name(ctx, id))
                    .to_string_lossy()
                    .into_owned(),
                offset: base + llama_cpp_sys_2::gguf_get_tensor_offset(ctx, id) as u64,
                size: llama_cpp_sys_2::gguf_get_tensor_size(ctx, id) as u64,
            })
            .collect();
        llama_cpp_sys_2::gguf_free(ctx);
        table
    };
    Ok(table)
}

/// A weight tensor a decode read, and the address its data was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightRead {
    pub name: String,
    pub address: usize,
}

/// The raw `llama_model` behind llama-cpp-2's `LlamaModel`.
fn model_pointer(model: &llama_cpp_2::model::LlamaModel) -> *mut llama_cpp_sys_2::llama_model {
    // llama-cpp-2 (pinned to =0.1.160 in Cargo.toml) defines `LlamaModel` as a struct
    // whose only field is `Ptr<llama_model>`, a #[repr(transparent)] NonNull, and gives
    // no accessor for it. The size check stops the build if that changes.
    const _: () = assert!(
        std::mem::size_of::<llama_cpp_2::model::LlamaModel>()
            == std::mem::size_of::<*mut llama_cpp_sys_2::llama_model>()
    );
    // SAFETY: by the layout above, the first (and only) pointer-sized word of a
    // `LlamaModel` is its non-null `llama_model` pointer; it is copied out, not moved,
    // and used only while `model` is borrowed.
    unsafe { std::mem::transmute_copy::<_, *mut llama_cpp_sys_2::llama_model>(model) }
}

/// Can `model`'s memory drop a sequence's tail and keep its head? Not recurrent or
/// hybrid state (one state per sequence, not one cell per token).
pub fn sequences_can_drop_their_tail(model: &llama_cpp_2::model::LlamaModel) -> bool {
    let model = model_pointer(model);
    // SAFETY: `model` is the live model the caller borrows for the call; these read-only
    // queries take a const pointer and keep nothing.
    unsafe {
        !llama_cpp_sys_2::llama_model_is_recurrent(model)
            && !llama_cpp_sys_2::llama_model_is_hybrid(model)
    }
}

/// The attention window of `model`'s sliding-window layers, in tokens (0: it has none).
/// Those layers' KV cells older than the window are dropped as a sequence grows.
pub fn sliding_window(model: &llama_cpp_2::model::LlamaModel) -> u32 {
    let model = model_pointer(model);
    // SAFETY: as above, a read-only query of the live, borrowed model.
    let n_swa = unsafe { llama_cpp_sys_2::llama_model_n_swa(model) };
    n_swa.max(0) as u32
}

/// Decode one token in a throw-away context of `model` and report every weight tensor
/// its graph reads, with the address llama.cpp reads it from: inside the weights' memfd
/// mapping when llama.cpp uses the file's pages in place, elsewhere when it copied them
/// into a buffer of its own (the CPU kernels' repacked layouts).
///
/// The graph is not computed: ggml's scheduler asks the eval callback about every node
/// of a split before computing it (the callback records their sources), and the abort
/// callback then stops the computation after the first node. A full decode here cost
/// 80 ms of start-up for a 1B model (its first decode reads every weight).
pub fn weights_read_by_one_decode(
    model: &llama_cpp_2::model::LlamaModel,
    threads: i32,
) -> Result<Vec<WeightRead>, String> {
    struct Seen {
        names: std::collections::HashSet<String>,
        reads: Vec<WeightRead>,
    }
    unsafe extern "C" fn observe(
        node: *mut llama_cpp_sys_2::ggml_tensor,
        ask: bool,
        user_data: *mut std::os::raw::c_void,
    ) -> bool {
        if !ask || node.is_null() || user_data.is_null() {
            return false;
        }
        // SAFETY: ggml calls this during the decode below, on the decoding thread, with a
        // node of the graph being computed; `user_data` is the `Seen` that outlives the
        // decode and nothing else touches while it runs. A node's non-null sources and
        // their view sources are live tensors of that graph or of the model; their names
        // are NUL-terminated within the 64-byte array.
        unsafe {
            let seen = &mut *user_data.cast::<Seen>();
            for &src in &(*node).src {
                if src.is_null() {
                    continue;
                }
                let tensor = if (*src).view_src.is_null() {
                    src
                } else {
                    (*src).view_src
                };
                let buffer = (*tensor).buffer;
                if buffer.is_null()
                    || llama_cpp_sys_2::ggml_backend_buffer_get_usage(buffer)
                        != llama_cpp_sys_2::GGML_BACKEND_BUFFER_USAGE_WEIGHTS
                {
                    continue;
                }
                let name = std::ffi::CStr::from_ptr((*tensor).name.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                if seen.names.insert(name.clone()) {
                    seen.reads.push(WeightRead {
                        name,
                        address: (*tensor).data as usize,
                    });
                }
            }
        }
        // Never ask for the node's result: every node is asked about before any runs.
        false
    }
    unsafe extern "C" fn stop(_: *mut std::os::raw::c_void) -> bool {
        true
    }

    let mut seen = Seen {
        names: std::collections::HashSet::new(),
        reads: Vec::new(),
    };
    let model = model_pointer(model);
    // SAFETY: plain data returned by value.
    let mut params = unsafe { llama_cpp_sys_2::llama_context_default_params() };
    params.n_ctx = 256;
    params.n_batch = 1;
    params.n_ubatch = 1;
    params.n_seq_max = 1;
    params.n_threads = threads.max(1);
    params.n_threads_batch = threads.max(1);
    params.no_perf = true;
    params.cb_eval = Some(observe);
    params.cb_eval_user_data = std::ptr::from_mut(&mut seen).cast();
    params.abort_callback = Some(stop);
    params.abort_callback_data = std::ptr::null_mut();
    // SAFETY: `model` is the live model borrowed by the caller for the whole call; the
    // context made from it is freed before returning, so `seen` (its callback data)
    // outlives every callback; `token` outlives the decode that reads it.
    let status = unsafe {
        let ctx = llama_cpp_sys_2::llama_init_from_model(model, params);
        if ctx.is_null() {
            return Err("llama.cpp could not create a context to probe the weights".into());
        }
        let mut token: llama_cpp_sys_2::llama_token = 0;
        let status = llama_cpp_sys_2::llama_decode(
            ctx,
            llama_cpp_sys_2::llama_batch_get_one(&raw mut token, 1),
        );
        llama_cpp_sys_2::llama_free(ctx);
        status
    };
    // 2: aborted, as asked (0 if a backend does not check the abort callback).
    if status != 2 && status != 0 {
        return Err(format!(
            "the probe decode failed (llama_decode returned {status})"
        ));
    }
    Ok(seen.reads)
}

/// The raw `llama_context_params` behind llama-cpp-2's `LlamaContextParams`, for the
/// settings it has no setter for (`swa_full`).
pub fn raw_context_params(
    params: &mut llama_cpp_2::context::params::LlamaContextParams,
) -> &mut llama_cpp_sys_2::llama_context_params {
    // llama-cpp-2 (=0.1.160) defines `LlamaContextParams` as a struct whose only field is
    // the `llama_context_params` it passes to llama.cpp. The size check stops the build
    // if that changes.
    const _: () = assert!(
        std::mem::size_of::<llama_cpp_2::context::params::LlamaContextParams>()
            == std::mem::size_of::<llama_cpp_sys_2::llama_context_params>()
    );
    // SAFETY: by the layout above the struct is exactly its one field, so the pointer to
    // it points to a valid, aligned `llama_context_params`, borrowed mutably for as long
    // as `params` is.
    unsafe { &mut *std::ptr::from_mut(params).cast::<llama_cpp_sys_2::llama_context_params>() }
}
