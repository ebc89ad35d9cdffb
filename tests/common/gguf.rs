//! A tiny random-weight llama model written as GGUF, for tests: 2 layers, dim 64, a
//! byte-level SentencePiece vocabulary (`<0x00>`…`<0xFF>`, type 6) plus ChatML control
//! tokens and a ChatML chat template. llama.cpp loads it in milliseconds. Its output is
//! noise, which is all a test of plumbing needs.

const N_EMBD: u64 = 64;
const N_FF: u64 = 128;
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

/// The GGUF bytes of a tiny llama model with weights drawn from `seed`.
pub fn tiny_llama(seed: u64) -> Vec<u8> {
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

    let kvs = vec![
        ("general.architecture", Value::Str("llama".into())),
        (
            "general.name",
            Value::Str("leasehold tiny test model".into()),
        ),
        ("llama.context_length", Value::U32(4096)),
        ("llama.embedding_length", Value::U32(N_EMBD as u32)),
        ("llama.block_count", Value::U32(N_LAYER)),
        ("llama.feed_forward_length", Value::U32(N_FF as u32)),
        ("llama.attention.head_count", Value::U32(N_HEAD)),
        ("llama.attention.head_count_kv", Value::U32(N_HEAD)),
        (
            "llama.rope.dimension_count",
            Value::U32((N_EMBD as u32) / N_HEAD),
        ),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::Str("llama".into())),
        ("tokenizer.ggml.tokens", Value::StrArray(tokens)),
        ("tokenizer.ggml.scores", Value::F32Array(scores)),
        ("tokenizer.ggml.token_type", Value::I32Array(types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.chat_template", Value::Str(CHATML.into())),
    ];

    // (name, dims in ggml order, is a norm)
    let mut tensors: Vec<(String, Vec<u64>, bool)> = vec![
        ("token_embd.weight".into(), vec![N_EMBD, n_vocab], false),
        ("output_norm.weight".into(), vec![N_EMBD], true),
        ("output.weight".into(), vec![N_EMBD, n_vocab], false),
    ];
    for l in 0..N_LAYER {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((p("attn_norm"), vec![N_EMBD], true));
        tensors.push((p("attn_q"), vec![N_EMBD, N_EMBD], false));
        tensors.push((p("attn_k"), vec![N_EMBD, N_EMBD], false));
        tensors.push((p("attn_v"), vec![N_EMBD, N_EMBD], false));
        tensors.push((p("attn_output"), vec![N_EMBD, N_EMBD], false));
        tensors.push((p("ffn_norm"), vec![N_EMBD], true));
        tensors.push((p("ffn_gate"), vec![N_EMBD, N_FF], false));
        tensors.push((p("ffn_down"), vec![N_FF, N_EMBD], false));
        tensors.push((p("ffn_up"), vec![N_EMBD, N_FF], false));
    }

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
    for (name, dims, _) in &tensors {
        put_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend_from_slice(&offset.to_le_bytes());
        data_offsets.push(offset);
        let bytes = dims.iter().product::<u64>() * 4;
        offset += bytes.div_ceil(ALIGN as u64) * ALIGN as u64;
    }
    while out.len() % ALIGN != 0 {
        out.push(0);
    }
    let data_start = out.len();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for ((_, dims, is_norm), start) in tensors.iter().zip(data_offsets) {
        out.resize(data_start + start as usize, 0);
        for _ in 0..dims.iter().product::<u64>() {
            let v = if *is_norm {
                1.0f32
            } else {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
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
