//! A tiny random-weight llama model written as GGUF, for tests: 2 layers, dim 64, a
//! byte-level SentencePiece vocabulary (`<0x00>`…`<0xFF>`, type 6) plus ChatML control
//! tokens and a ChatML chat template. llama.cpp loads it in milliseconds. Its output is
//! noise, which is all a test of plumbing needs. A Q4_0 variant (dim 256) has matrices
//! llama.cpp's x86 CPU kernels repack.

const N_HEAD: u32 = 4;
const N_LAYER: u32 = 2;
const ALIGN: usize = 32;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

enum Value {
    U32(u32),
    F32(f32),
    Str(String),
    StrArray(Vec<String>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_kv(out: &mut Vec<u8>, key: &str, value: &Value) {
    put_str(out, key);
    match value {
        Value::U32(v) => {
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::F32(v) => {
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Str(v) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, v);
        }
        Value::StrArray(v) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                put_str(out, s);
            }
        }
        Value::F32Array(v) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Value::I32Array(v) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// The GGUF bytes of a tiny llama model with weights drawn from `seed` (F32, dim 64).
pub fn tiny_llama(seed: u64) -> Vec<u8> {
    llama(seed, 64, 128, false, None)
}

/// A tiny model with a sliding-window layer (F32, dim 64): llama.cpp's `olmo2`
/// architecture with `window` tokens of attention in its first layer and full
/// attention in its second, so its KV cache is split as Gemma 3's is.
pub fn tiny_sliding_window(seed: u64, window: u32) -> Vec<u8> {
    llama(seed, 64, 128, false, Some(window))
}

/// A tiny llama whose matrices are Q4_0 (dim 256, feed-forward 512), norms first: on x86
/// llama.cpp repacks the layers' matrices (rows a multiple of 8) into its own buffers,
/// and uses the embeddings and the output matrix (263 rows) in place.
pub fn tiny_llama_q4_0(seed: u64) -> Vec<u8> {
    llama(seed, 256, 512, true, None)
}

const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_Q4_0: u32 = 2;

/// An f32 in [2^-14, 2^15) as IEEE half-precision bits (truncated).
fn f16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    (((bits >> 16) & 0x8000) as u16) | ((exp as u16) << 10) | (((bits >> 13) & 0x3ff) as u16)
}

/// `window`: an `olmo2` model (post-norms, query and key norms) whose first layer
/// attends to the last `window` tokens only; `None`: a llama.
fn llama(seed: u64, n_embd: u64, n_ff: u64, q4_0: bool, window: Option<u32>) -> Vec<u8> {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u32 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for special in ["<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    let n_vocab = tokens.len() as u64;
    let scores = vec![0.0f32; tokens.len()];

    let arch = if window.is_some() { "olmo2" } else { "llama" };
    let key = |name: &str| format!("{arch}.{name}");
    let mut kvs = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        (
            "general.name".to_string(),
            Value::Str("leasehold tiny test model".into()),
        ),
        (key("context_length"), Value::U32(4096)),
        (key("embedding_length"), Value::U32(n_embd as u32)),
        (key("block_count"), Value::U32(N_LAYER)),
        (key("feed_forward_length"), Value::U32(n_ff as u32)),
        (key("attention.head_count"), Value::U32(N_HEAD)),
        (key("attention.head_count_kv"), Value::U32(N_HEAD)),
        (
            key("rope.dimension_count"),
            Value::U32((n_embd as u32) / N_HEAD),
        ),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("llama".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::StrArray(tokens)),
        ("tokenizer.ggml.scores".to_string(), Value::F32Array(scores)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::I32Array(types),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
        (
            "tokenizer.chat_template".to_string(),
            Value::Str(CHATML.into()),
        ),
    ];
    if let Some(window) = window {
        kvs.push((key("attention.sliding_window"), Value::U32(window)));
        // Every second layer has full attention, beginning with the second.
        kvs.push((key("attention.sliding_window_pattern"), Value::U32(2)));
    }

    // (name, dims in ggml order, is a norm)
    let mut tensors: Vec<(String, Vec<u64>, bool)> = vec![
        ("token_embd.weight".into(), vec![n_embd, n_vocab], false),
        ("output_norm.weight".into(), vec![n_embd], true),
        ("output.weight".into(), vec![n_embd, n_vocab], false),
    ];
    for l in 0..N_LAYER {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        let norms = if window.is_some() {
            [
                "attn_q_norm",
                "attn_k_norm",
                "post_attention_norm",
                "post_ffw_norm",
            ]
            .as_slice()
        } else {
            ["attn_norm", "ffn_norm"].as_slice()
        };
        for norm in norms {
            tensors.push((p(norm), vec![n_embd], true));
        }
        tensors.push((p("attn_q"), vec![n_embd, n_embd], false));
        tensors.push((p("attn_k"), vec![n_embd, n_embd], false));
        tensors.push((p("attn_v"), vec![n_embd, n_embd], false));
        tensors.push((p("attn_output"), vec![n_embd, n_embd], false));
        tensors.push((p("ffn_gate"), vec![n_embd, n_ff], false));
        tensors.push((p("ffn_down"), vec![n_ff, n_embd], false));
        tensors.push((p("ffn_up"), vec![n_embd, n_ff], false));
    }

    if q4_0 {
        // Norms first, so the repacked matrices lie in one run of pages.
        tensors.sort_by_key(|(_, _, is_norm)| !is_norm);
    }
    let quantized = |is_norm: bool| q4_0 && !is_norm;
    let size = |dims: &[u64], is_norm: bool| {
        let n = dims.iter().product::<u64>();
        if quantized(is_norm) {
            n / 32 * 18
        } else {
            n * 4
        }
    };

    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        put_kv(&mut out, k, v);
    }
    let mut offset = 0u64;
    let mut data_offsets = Vec::new();
    for (name, dims, is_norm) in &tensors {
        put_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let kind = if quantized(*is_norm) {
            GGML_TYPE_Q4_0
        } else {
            GGML_TYPE_F32
        };
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        data_offsets.push(offset);
        offset += size(dims, *is_norm).div_ceil(ALIGN as u64) * ALIGN as u64;
    }
    while out.len() % ALIGN != 0 {
        out.push(0);
    }
    let data_start = out.len();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for ((_, dims, is_norm), start) in tensors.iter().zip(data_offsets) {
        out.resize(data_start + start as usize, 0);
        if quantized(*is_norm) {
            // Q4_0 blocks: an f16 scale, then 32 four-bit values (value = (q - 8) * d),
            // d chosen so each output keeps about unit scale.
            let d = 1.0 / (21.25 * dims[0] as f32).sqrt();
            for _ in 0..dims.iter().product::<u64>() / 32 {
                out.extend_from_slice(&f16_bits(d).to_le_bytes());
                out.extend_from_slice(&next().to_le_bytes());
                out.extend_from_slice(&next().to_le_bytes());
            }
            continue;
        }
        for _ in 0..dims.iter().product::<u64>() {
            let v = if *is_norm {
                1.0f32
            } else {
                let r = (next() >> 40) as f32 / (1u64 << 24) as f32;
                (r - 0.5) * 0.2
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    while out.len() % ALIGN != 0 {
        out.push(0);
    }
    out
}
