//! What the license-mandated watermark costs.
//!
//!     cargo run --example bench_watermark -- MODEL.gguf [THREADS] [ROUNDS]
//!
//! 1. Speed: one engine (the real serving path: sealed model decrypted into memory,
//!    continuous-batching engine), one model load; rounds alternate between no
//!    safeguards and the watermark (gamma 0.25, delta 2.0, context 1), switched with
//!    `Engine::set_safeguards` on the loaded model, so both see the same process, the
//!    same weights and the same machine state. Each round generates 4 answers of up to
//!    200 tokens (temperature 0.7, fixed seeds). Prints tokens/s with and without, and
//!    their ratio (target ≥ 0.95).
//! 2. Perplexity: the model scores a fixed English text (public domain, below) token by
//!    token, once with its own distribution and once with the watermark's bias under 8
//!    keys. The difference is what the bias does to the probability the model gives
//!    natural text: the watermark's distortion of the distribution.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use leasehold::crypto::ContentKey;
use leasehold::runtime::engine::{
    Engine, EngineConfig, Event, GenerateRequest, Prompt, SamplingParams,
};
use leasehold::runtime::safeguards::{Safeguards, Watermark};
use leasehold::seal;
use leasehold::watermark::{self, Params, WatermarkKey};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

/// Jane Austen, "Pride and Prejudice" (1813), chapter 1, opening.
const FIXED_TEXT: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered as the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. Bennet made no answer. \"Do not you want to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was invitation enough. \"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a young man of large fortune from the north of England; that he came down on Monday in a chaise and four to see the place, and was so much delighted with it that he agreed with Mr. Morris immediately; that he is to take possession before Michaelmas, and some of his servants are to be in the house by the end of next week.\"";

const TOPICS: [&str; 4] = [
    "a lighthouse keeper and a storm",
    "the history of the bicycle",
    "a library that is open only at night",
    "a dragon afraid of heights",
];

fn params() -> Params {
    Params::parse("gamma=0.25,delta=2.0").unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--perplexity") {
        perplexity(&args[2]);
        return;
    }
    let model = args
        .get(1)
        .expect("usage: bench_watermark MODEL.gguf [THREADS] [ROUNDS]");
    let threads: i32 = args.get(2).map_or(2, |t| t.parse().unwrap());
    let rounds: usize = args.get(3).map_or(6, |r| r.parse().unwrap());
    speed(model, threads, rounds);
    // llama.cpp's backend is process-global and already taken by the engine: score
    // the text in a fresh process.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--perplexity", model])
        .status()
        .unwrap();
    assert!(status.success());
}

fn speed(model: &str, threads: i32, rounds: usize) {
    let dir = tempfile::TempDir::new().unwrap();
    let sealed = dir.path().join("m.sealed");
    let key = ContentKey::generate();
    seal::seal_file(
        std::path::Path::new(model),
        "bench",
        &sealed,
        &key,
        1 << 20,
        &seal::no_progress,
        || Ok(()),
    )
    .unwrap();
    let engine = Engine::start(EngineConfig {
        ctx: 1024,
        threads,
        parallel: 1,
        batch: 512,
        ..EngineConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        engine
            .load(sealed, key, Arc::new(Safeguards::none()), None)
            .await
            .unwrap()
            .unwrap();
        // Warm-up.
        generate(&engine, TOPICS[0], 0, 32).await;
        let mut totals = [(0u64, 0f64); 2]; // [plain, watermark]: tokens, seconds
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut line = format!("round {round}:");
            for mode in order {
                let guards = if mode == 0 {
                    Safeguards::none()
                } else {
                    Safeguards {
                        watermark: Some(Watermark {
                            key: WatermarkKey::from_bytes([round as u8 + 1; 32]),
                            params: params(),
                        }),
                        filter: None,
                    }
                };
                engine.set_safeguards(Arc::new(guards));
                let started = Instant::now();
                let mut tokens = 0;
                for (i, topic) in TOPICS.iter().enumerate() {
                    tokens += generate(&engine, topic, (round * 10 + i) as u32, 200).await;
                }
                let secs = started.elapsed().as_secs_f64();
                totals[mode].0 += tokens;
                totals[mode].1 += secs;
                line.push_str(&format!(
                    "  {} {:.1} tokens/s ({tokens} tokens)",
                    ["plain", "watermark"][mode],
                    tokens as f64 / secs
                ));
            }
            println!("{line}");
        }
        let plain = totals[0].0 as f64 / totals[0].1;
        let marked = totals[1].0 as f64 / totals[1].1;
        println!(
            "generation, {rounds} rounds x 4 answers (threads {threads}): plain {plain:.1} tokens/s, watermark {marked:.1} tokens/s, ratio {:.3}",
            marked / plain
        );
    });
    engine.shutdown();
}

/// Generate one answer; its completion tokens.
async fn generate(engine: &Engine, topic: &str, seed: u32, max_tokens: u32) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            // Raw text: not every model has a chat template (Gemma 3's GGUF here has none).
            prompt: Prompt::Text(format!("Here is a long story about {topic}.\n\n")),
            params: SamplingParams {
                max_tokens,
                temperature: 0.7,
                top_p: 1.0,
                seed: Some(seed),
                stop: vec![],
            },
            events: tx,
        })
        .unwrap();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Finished {
                completion_tokens, ..
            } => return u64::from(completion_tokens),
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    panic!("the engine stopped");
}

/// Mean negative log-likelihood of `next` under `logits`.
fn nll(logits: &[f32], next: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    f64::from(max) + sum.ln() - f64::from(logits[next])
}

fn perplexity(model_path: &str) {
    // llama.cpp's CPU kernels for this machine, checked as `serve` loads them.
    let kernels = leasehold::runtime::backends::load().unwrap();
    eprintln!("CPU kernels: {}", kernels.variant);
    // (load() has silenced llama.cpp's own logging.)
    let backend = LlamaBackend::init().unwrap();
    let model =
        LlamaModel::load_from_file(&backend, model_path, &LlamaModelParams::default()).unwrap();
    let tokens = model.vocab().tokenize(FIXED_TEXT.as_bytes(), true, false);
    let n = tokens.len();
    let mut ctx = model
        .new_context(
            &backend,
            LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(1024))
                .with_n_batch(1024)
                .with_n_ubatch(1024),
        )
        .unwrap();
    let mut batch = LlamaBatch::new(1024, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], true).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let ids: Vec<i32> = tokens.iter().map(|t| t.0).collect();
    let p = params();
    let keys: Vec<WatermarkKey> = (1..=8u8)
        .map(|k| WatermarkKey::from_bytes([k; 32]))
        .collect();
    let (mut plain, mut marked, mut green) = (0f64, 0f64, 0usize);
    let mut biased = Vec::new();
    for i in 0..n - 1 {
        let logits = ctx.get_logits_ith(i as i32);
        let next = ids[i + 1] as usize;
        plain += nll(logits, next);
        for key in &keys {
            let seed = key.step_seed(&ids[..=i], &p);
            biased.clear();
            biased.extend_from_slice(logits);
            watermark::bias(&mut biased, seed, &p);
            marked += nll(&biased, next);
            green += usize::from(watermark::is_green(seed, ids[i + 1], &p));
        }
    }
    let scored = (n - 1) as f64;
    let ppl_plain = (plain / scored).exp();
    let ppl_marked = (marked / (scored * keys.len() as f64)).exp();
    println!(
        "perplexity of a fixed text ({} tokens, Pride and Prejudice ch. 1): plain {ppl_plain:.2}, with the watermark's bias (gamma 0.25, delta 2.0; mean over 8 keys) {ppl_marked:.2} (+{:.1} %); {:.1} % of its tokens green",
        n,
        (ppl_marked / ppl_plain - 1.0) * 100.0,
        green as f64 * 100.0 / (scored * keys.len() as f64)
    );
}
