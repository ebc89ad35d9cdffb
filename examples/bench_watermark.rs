//! What the license-mandated watermark costs, and how well it is found.
//!
//!     cargo run --example bench_watermark -- MODEL.gguf [--watermark SPEC] [--threads N]
//!         [--rounds R] [--answers N] [--only speed|power|fixed]
//!
//! SPEC is `--watermark`'s spelling (default `gamma=0.25,delta=2.0`, the KGW scheme;
//! e.g. `scheme=tournament,depth=8,context=2`).
//!
//! 1. Speed: one engine (the real serving path: sealed model decrypted into memory,
//!    continuous-batching engine), one model load; rounds alternate between no
//!    safeguards and the watermark, switched with `Engine::set_safeguards` on the loaded
//!    model, so both see the same process, the same weights and the same machine
//!    state. Each round generates 4 answers of up to 200 tokens (temperature 0.7, fixed
//!    seeds). Prints tokens/s with and without, and their ratio.
//! 2. Power and quality: N answers (default 100) of up to 200 tokens at temperature 1.0
//!    with the watermark (10 keys, N/10 answers each) and N/2 without. In a fresh
//!    process (llama.cpp's backend is process-global) the plain model then scores them:
//!    the detector's verdicts (p < 1e-4) on each marked answer as generated, after 10 %
//!    and 25 % of its tokens are replaced by random ones, and cut to its middle half;
//!    false positives on the unmarked answers under 1,000 (answer, key) pairs; and the
//!    perplexity the plain model gives the marked and the unmarked answers (a
//!    distortion-free watermark leaves it unchanged).
//! 3. The fixed text: the model scores a fixed English text token by token, with its own
//!    distribution and with the watermarked sampler's under 8 keys (KGW: the biased
//!    logits; tournament: the tournament's distribution, per key and averaged over 16,
//!    64 and 256 keys, which a distortion-free scheme leaves equal to the model's).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use leasehold::crypto::ContentKey;
use leasehold::runtime::engine::{
    Engine, EngineConfig, Event, GenerateRequest, Prompt, SamplingParams,
};
use leasehold::runtime::safeguards::{Safeguards, Watermark};
use leasehold::seal;
use leasehold::watermark::{self, kgw, tournament, Params, WatermarkKey};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

/// Jane Austen, "Pride and Prejudice" (1813), chapter 1, opening.
const FIXED_TEXT: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered as the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. Bennet made no answer. \"Do not you want to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and I have no objection to hearing it.\" This was invitation enough. \"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a young man of large fortune from the north of England; that he came down on Monday in a chaise and four to see the place, and was so much delighted with it that he agreed with Mr. Morris immediately; that he is to take possession before Michaelmas, and some of his servants are to be in the house by the end of next week.\"";

const TOPICS: [&str; 20] = [
    "a lighthouse keeper and a storm",
    "the history of the bicycle",
    "a library that is open only at night",
    "a dragon afraid of heights",
    "a chess game between two old friends",
    "the first winter on a new planet",
    "a baker who can taste colours",
    "how bridges are built",
    "a cat that runs a hotel",
    "the last day of a travelling circus",
    "a violin found in an attic",
    "the migration of birds",
    "a robot learning to garden",
    "a detective who hates coffee",
    "the invention of the printing press",
    "a village under the sea",
    "two rival ice cream shops",
    "a letter delivered fifty years late",
    "mountain climbers lost in fog",
    "a clock that runs backwards",
];

/// Detection's significance level for the power and false-positive figures.
const ALPHA: f64 = 1e-4;

struct Options {
    model: String,
    spec: String,
    threads: i32,
    rounds: usize,
    answers: usize,
    only: Option<String>,
}

fn options(args: &[String]) -> Options {
    let mut o = Options {
        model: args
            .get(1)
            .expect("usage: bench_watermark MODEL.gguf [--watermark SPEC] [--threads N] [--rounds R] [--answers N] [--only speed|power|fixed]")
            .clone(),
        spec: "gamma=0.25,delta=2.0".into(),
        threads: 2,
        rounds: 6,
        answers: 100,
        only: None,
    };
    let mut i = 2;
    while i + 1 < args.len() {
        let v = args[i + 1].clone();
        match args[i].as_str() {
            "--watermark" => o.spec = v,
            "--threads" => o.threads = v.parse().unwrap(),
            "--rounds" => o.rounds = v.parse().unwrap(),
            "--answers" => o.answers = v.parse().unwrap(),
            "--only" => o.only = Some(v),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--score") => return score(&args[2], &args[3]),
        Some("--fixed") => return fixed_text(&args[2], &args[3]),
        _ => {}
    }
    let o = options(&args);
    let params = Params::parse(&o.spec).unwrap();
    println!("watermark: {} ({})", params.describe(), o.spec);
    let wants = |phase: &str| o.only.as_deref().is_none_or(|only| only == phase);
    if wants("speed") || wants("power") {
        run_engine(&o, params, wants("speed"), wants("power"));
    }
    if wants("fixed") {
        // llama.cpp's backend is process-global and already taken by the engine: score
        // in a fresh process.
        child(&["--fixed", &o.model, &o.spec]);
    }
}

fn child(args: &[&str]) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The i-th bench key (any 32 bytes do; these are reproducible).
fn bench_key(i: usize) -> WatermarkKey {
    WatermarkKey::from_bytes(leasehold::crypto::sha256(&[
        b"bench_watermark key",
        &(i as u64).to_le_bytes(),
    ]))
}

fn marked(key: usize, params: Params) -> Arc<Safeguards> {
    Arc::new(Safeguards {
        watermark: Some(Watermark {
            key: bench_key(key),
            params,
        }),
        filter: None,
    })
}

fn run_engine(o: &Options, params: Params, speed: bool, power: bool) {
    let dir = tempfile::TempDir::new().unwrap();
    let sealed = dir.path().join("m.sealed");
    let key = ContentKey::generate();
    seal::seal_file(
        std::path::Path::new(&o.model),
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
        threads: o.threads,
        parallel: 4,
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
        generate(&engine, TOPICS[0], 0, 32, 0.7).await;
        if speed {
            speed_rounds(&engine, o, params).await;
        }
        if power {
            let file = dir.path().join("answers.json");
            let answers = power_answers(&engine, o.answers, params).await;
            std::fs::write(&file, serde_json::to_vec(&answers).unwrap()).unwrap();
            child(&["--score", &o.model, file.to_str().unwrap()]);
        }
    });
    engine.shutdown();
}

async fn speed_rounds(engine: &Engine, o: &Options, params: Params) {
    let mut totals = [(0u64, 0f64); 2]; // [plain, watermark]: tokens, seconds
    for round in 0..o.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut line = format!("round {round}:");
        for mode in order {
            engine.set_safeguards(if mode == 0 {
                Arc::new(Safeguards::none())
            } else {
                marked(round, params)
            });
            let started = Instant::now();
            let mut tokens = 0;
            // One at a time: the single-stream speed.
            for (i, topic) in TOPICS[..4].iter().enumerate() {
                tokens += generate(engine, topic, (round * 10 + i) as u32, 200, 0.7)
                    .await
                    .0;
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
        "speed, {} rounds x 4 answers (threads {}): plain {plain:.1} tokens/s, watermark {marked:.1} tokens/s, ratio {:.3}",
        o.rounds,
        o.threads,
        marked / plain
    );
}

/// `n` marked answers (10 keys) and `n / 2` unmarked ones, at temperature 1.0.
async fn power_answers(engine: &Engine, n: usize, params: Params) -> serde_json::Value {
    let started = Instant::now();
    let mut marked_answers = Vec::new();
    let per_key = n.div_ceil(10);
    for k in 0..10 {
        engine.set_safeguards(marked(1000 + k, params));
        let jobs = (0..per_key).map(|j| {
            let i = k * per_key + j;
            async move {
                let topic = TOPICS[i % TOPICS.len()];
                let (_, text) = generate(engine, topic, 5000 + i as u32, 200, 1.0).await;
                serde_json::json!({"key": 1000 + k, "prompt": prompt(topic), "text": text})
            }
        });
        marked_answers.extend(futures_util::future::join_all(jobs).await);
    }
    engine.set_safeguards(Arc::new(Safeguards::none()));
    let jobs = (0..n / 2).map(|i| async move {
        let topic = TOPICS[i % TOPICS.len()];
        let (_, text) = generate(engine, topic, 9000 + i as u32, 200, 1.0).await;
        serde_json::json!({"prompt": prompt(topic), "text": text})
    });
    let plain_answers = futures_util::future::join_all(jobs).await;
    println!(
        "generated {} marked and {} unmarked answers at temperature 1.0 in {:.0} s",
        marked_answers.len(),
        plain_answers.len(),
        started.elapsed().as_secs_f64()
    );
    serde_json::json!({
        "spec": serde_json::to_value(params).unwrap(),
        "marked": marked_answers,
        "plain": plain_answers,
    })
}

fn prompt(topic: &str) -> String {
    // Raw text: not every model has a chat template (Gemma 3's GGUF here has none).
    format!("Here is a long story about {topic}.\n\n")
}

/// Generate one answer: its completion tokens and text.
async fn generate(
    engine: &Engine,
    topic: &str,
    seed: u32,
    max_tokens: u32,
    temperature: f32,
) -> (u64, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt: Prompt::Text(prompt(topic)),
            params: SamplingParams {
                max_tokens,
                temperature,
                top_p: 1.0,
                seed: Some(seed),
                stop: vec![],
            },
            events: tx,
        })
        .unwrap();
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Finished {
                completion_tokens, ..
            } => return (u64::from(completion_tokens), text),
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    panic!("the engine stopped");
}

/// Negative log-likelihood of `next` under `logits`.
fn nll(logits: &[f32], next: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    f64::from(max) + sum.ln() - f64::from(logits[next])
}

/// Called per position: the logits before it, its token id, the ids before it.
type PerPosition<'a> = dyn FnMut(&[f32], usize, &[i32]) + 'a;

struct Scorer {
    model: LlamaModel,
    backend: LlamaBackend,
}

impl Scorer {
    fn load(path: &str) -> Scorer {
        // llama.cpp's CPU kernels for this machine, checked as `serve` loads them.
        let kernels = leasehold::runtime::backends::load().unwrap();
        eprintln!("CPU kernels: {}", kernels.variant);
        let backend = LlamaBackend::init().unwrap();
        let model =
            LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default()).unwrap();
        Scorer { model, backend }
    }

    /// The tokens of generated text, as the detector reads them.
    fn text_tokens(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Per position of `tokens` (after the first), `f(logits before it, its id, the ids
    /// before it)`.
    fn each_logits(&self, tokens: &[i32], f: &mut PerPosition<'_>) {
        let n = tokens.len();
        let mut ctx = self
            .model
            .new_context(
                &self.backend,
                LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(n.max(16) as u32))
                    .with_n_batch(n as u32)
                    .with_n_ubatch(n as u32),
            )
            .unwrap();
        let mut batch = LlamaBatch::new(n, 1);
        for (i, t) in tokens.iter().enumerate() {
            batch
                .add(llama_cpp_2::token::LlamaToken(*t), i as i32, &[0], true)
                .unwrap();
        }
        ctx.decode(&mut batch).unwrap();
        for i in 0..n - 1 {
            f(
                ctx.get_logits_ith(i as i32),
                tokens[i + 1] as usize,
                &tokens[..=i],
            );
        }
    }

    /// Over the answer tokens of `text` after `prompt`: the summed NLL of the tokens
    /// drawn, their count, and, when `marking` is given, at each of those steps the
    /// model's entropy `Σ p(x)(−ln p(x))` and the watermarked sampler's expected NLL
    /// `Σ p'(x)(−ln p(x))` under that key (steps whose context this answer already used
    /// are unmarked, as in the engine). The expectations carry none of the noise of which
    /// token happened to be drawn.
    fn answer_nll(
        &self,
        prompt: &str,
        text: &str,
        marking: Option<(&WatermarkKey, &Params)>,
    ) -> AnswerScore {
        let mut tokens: Vec<i32> = self
            .model
            .vocab()
            .tokenize(prompt.as_bytes(), true, false)
            .into_iter()
            .map(|t| t.0)
            .collect();
        let from = tokens.len();
        tokens.extend(self.text_tokens(text));
        let mut score = AnswerScore::default();
        let (mut weights, mut bits, mut probs) =
            (Vec::new(), tournament::Scratch::default(), Vec::new());
        let mut used = std::collections::HashSet::new();
        let mut at = 0usize;
        self.each_logits(&tokens, &mut |logits, next, previous| {
            at += 1;
            if at < from {
                return;
            }
            score.nll += nll(logits, next);
            score.tokens += 1;
            let Some((key, params)) = marking else {
                return;
            };
            softmax(logits, &mut probs);
            let seed = params.step_seed(key, previous);
            let fresh = used.insert(seed);
            marked_distribution(logits, seed, params, fresh, &mut weights, &mut bits);
            let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
            for (p, w) in probs.iter().zip(&weights) {
                if *p > 0.0 {
                    score.entropy -= p * p.ln();
                    score.expected_marked -= f64::from(*w) / total * p.ln();
                }
            }
        });
        score
    }
}

#[derive(Default)]
struct AnswerScore {
    nll: f64,
    tokens: usize,
    entropy: f64,
    expected_marked: f64,
}

fn softmax(logits: &[f32], out: &mut Vec<f64>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    out.clear();
    out.extend(logits.iter().map(|l| f64::from(l - max).exp()));
    let total: f64 = out.iter().sum();
    out.iter_mut().for_each(|p| *p /= total);
}

/// The watermarked sampler's weights at temperature 1 (unnormalised) into `weights`:
/// KGW's biased softmax, or the tournament's (unless `fresh` is false: a repeated
/// context draws from the model's own distribution).
fn marked_distribution(
    logits: &[f32],
    seed: u64,
    params: &Params,
    fresh: bool,
    weights: &mut Vec<f32>,
    bits: &mut tournament::Scratch,
) {
    weights.clear();
    weights.extend_from_slice(logits);
    if let Params::Kgw(k) = params {
        kgw::bias(weights, seed, k);
    }
    let max = weights.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    for w in weights.iter_mut() {
        *w = (*w - max).exp();
    }
    if let (Params::Tournament(t), true) = (params, fresh) {
        tournament::reweight(weights, None, seed, t, bits);
    }
}

/// A small deterministic generator for the attacks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        watermark::mix(self.0)
    }
}

/// Replace `fraction` of the tokens (that many positions, drawn without repetition) by
/// random vocabulary entries.
fn replace(tokens: &[i32], fraction: f64, vocab: i32, rng: &mut Rng) -> Vec<i32> {
    let mut out = tokens.to_vec();
    let mut positions: Vec<usize> = (0..out.len()).collect();
    for i in (1..positions.len()).rev() {
        positions.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let k = (tokens.len() as f64 * fraction).round() as usize;
    for &p in &positions[..k] {
        out[p] = (rng.next() % vocab as u64) as i32;
    }
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn score(model_path: &str, file: &str) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let params: Params = serde_json::from_value(v["spec"].clone()).unwrap();
    let scorer = Scorer::load(model_path);
    let vocab = scorer.model.n_vocab();
    let marked = v["marked"].as_array().unwrap();
    let plain = v["plain"].as_array().unwrap();
    let mut rng = Rng(1);

    // Power: as generated, with 10 % and 25 % of the tokens replaced, cut to the middle half.
    let mut found = [0usize; 4];
    let mut lengths = Vec::new();
    let mut p_values = Vec::new();
    for a in marked {
        let key = bench_key(a["key"].as_u64().unwrap() as usize);
        let tokens = scorer.text_tokens(a["text"].as_str().unwrap());
        lengths.push(tokens.len() as f64);
        let n = tokens.len();
        let variants = [
            tokens.clone(),
            replace(&tokens, 0.10, vocab, &mut rng),
            replace(&tokens, 0.25, vocab, &mut rng),
            tokens[n / 4..(3 * n) / 4].to_vec(),
        ];
        for (i, t) in variants.iter().enumerate() {
            let d = watermark::detect(t, &key, &params);
            if i == 0 {
                p_values.push(d.p_value);
            }
            found[i] += usize::from(d.p_value < ALPHA);
        }
    }
    lengths.sort_by(f64::total_cmp);
    p_values.sort_by(f64::total_cmp);
    let rate = |k: usize| 100.0 * k as f64 / marked.len() as f64;
    println!(
        "power ({} marked answers, tokens min {:.0} median {:.0}; detected at p < {ALPHA:e}): as generated {:.1} %, 10 % of tokens replaced {:.1} %, 25 % replaced {:.1} %, middle half {:.1} %; p-value median {:.1e}, 90th percentile {:.1e}",
        marked.len(),
        lengths[0],
        quantile(&lengths, 0.5),
        rate(found[0]),
        rate(found[1]),
        rate(found[2]),
        rate(found[3]),
        quantile(&p_values, 0.5),
        quantile(&p_values, 0.9),
    );

    // False positives: unmarked answers under enough keys for 1,000 pairs.
    let keys = 1000usize.div_ceil(plain.len().max(1));
    let (mut trials, mut false_positives, mut below_05, mut below_01) = (0usize, 0, 0, 0);
    for a in plain {
        let tokens = scorer.text_tokens(a["text"].as_str().unwrap());
        for k in 0..keys {
            let d = watermark::detect(&tokens, &bench_key(2000 + k), &params);
            trials += 1;
            false_positives += usize::from(d.p_value < ALPHA);
            below_05 += usize::from(d.p_value < 0.05);
            below_01 += usize::from(d.p_value < 0.01);
        }
    }
    println!(
        "false positives: {false_positives} of {trials} (unmarked answer, key) pairs at p < {ALPHA:e}; p < 0.05 in {:.1} %, p < 0.01 in {:.1} % (a uniform p-value: 5 % and 1 %)",
        100.0 * below_05 as f64 / trials as f64,
        100.0 * below_01 as f64 / trials as f64
    );

    // Quality: the plain model's perplexity of each set of answers, with a 95 % interval
    // of the ratio from the spread of the answers' own means; and, over the marked
    // answers' contexts, the expected NLL of the watermarked sampler against the
    // model's entropy.
    let scored = |set: &[serde_json::Value], marking: bool| -> Vec<AnswerScore> {
        set.iter()
            .map(|a| {
                let key = a
                    .get("key")
                    .map(|k| bench_key(k.as_u64().unwrap() as usize));
                scorer.answer_nll(
                    a["prompt"].as_str().unwrap(),
                    a["text"].as_str().unwrap(),
                    key.as_ref().filter(|_| marking).map(|k| (k, &params)),
                )
            })
            .filter(|s| s.tokens > 0)
            .collect()
    };
    let (marked_scores, plain_scores) = (scored(marked, true), scored(plain, false));
    let summary = |set: &[AnswerScore]| {
        let tokens: usize = set.iter().map(|s| s.tokens).sum();
        let mean = set.iter().map(|s| s.nll).sum::<f64>() / tokens as f64;
        // Standard error of the token-weighted mean, from the answers' deviations.
        let var = set
            .iter()
            .map(|s| (s.nll - mean * s.tokens as f64).powi(2))
            .sum::<f64>()
            / (tokens as f64).powi(2);
        (mean, var.sqrt(), tokens)
    };
    let ((m, se_m, n_m), (u, se_u, n_u)) = (summary(&marked_scores), summary(&plain_scores));
    let half = 1.96 * (se_m * se_m + se_u * se_u).sqrt();
    println!(
        "perplexity of the model's own answers (temperature 1.0) under the plain model: watermarked {:.3} ({n_m} tokens), unwatermarked {:.3} ({n_u} tokens), change {:+.1} % (95 % interval {:+.1} to {:+.1} %)",
        m.exp(),
        u.exp(),
        ((m - u).exp() - 1.0) * 100.0,
        ((m - u - half).exp() - 1.0) * 100.0,
        ((m - u + half).exp() - 1.0) * 100.0,
    );
    let tokens: usize = marked_scores.iter().map(|s| s.tokens).sum();
    let entropy = marked_scores.iter().map(|s| s.entropy).sum::<f64>() / tokens as f64;
    let expected = marked_scores.iter().map(|s| s.expected_marked).sum::<f64>() / tokens as f64;
    println!(
        "expected perplexity at the marked answers' {tokens} steps (each under its answer's key): model's own distribution {:.3}, watermarked sampler's {:.3}, change {:+.2} %",
        entropy.exp(),
        expected.exp(),
        ((expected - entropy).exp() - 1.0) * 100.0
    );
}

/// The probability the watermarked sampler (temperature 1) gives `next` under `key`.
fn marked_probability(
    logits: &[f32],
    next: usize,
    previous: &[i32],
    key: &WatermarkKey,
    params: &Params,
    weights: &mut Vec<f32>,
    bits: &mut tournament::Scratch,
) -> f64 {
    let seed = params.step_seed(key, previous);
    marked_distribution(logits, seed, params, true, weights, bits);
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    f64::from(weights[next]) / total
}

fn fixed_text(model_path: &str, spec: &str) {
    let params = Params::parse(spec).unwrap();
    let scorer = Scorer::load(model_path);
    let tokens: Vec<i32> = scorer
        .model
        .vocab()
        .tokenize(FIXED_TEXT.as_bytes(), true, false)
        .into_iter()
        .map(|t| t.0)
        .collect();
    let per_key: Vec<WatermarkKey> = (0..8).map(bench_key).collect();
    let averaged: Vec<WatermarkKey> = (0..256).map(|k| bench_key(100 + k)).collect();
    // −ln of the mean over the first 16, 64 and 256 keys, summed over positions.
    let mut means = [0f64; 3];
    let (mut plain, mut marked) = (0f64, 0f64);
    let (mut weights, mut bits) = (Vec::new(), tournament::Scratch::default());
    let mut n = 0usize;
    scorer.each_logits(&tokens, &mut |logits, next, previous| {
        n += 1;
        plain += nll(logits, next);
        for key in &per_key {
            let p = marked_probability(
                logits,
                next,
                previous,
                key,
                &params,
                &mut weights,
                &mut bits,
            );
            marked -= p.ln() / per_key.len() as f64;
        }
        if let Params::Tournament(_) = params {
            let each: Vec<f64> = averaged
                .iter()
                .map(|key| {
                    marked_probability(
                        logits,
                        next,
                        previous,
                        key,
                        &params,
                        &mut weights,
                        &mut bits,
                    )
                })
                .collect();
            for (sum, k) in means.iter_mut().zip([16usize, 64, 256]) {
                *sum -= (each[..k].iter().sum::<f64>() / k as f64).ln();
            }
        }
    });
    let n = n as f64;
    let (ppl_plain, ppl_marked) = ((plain / n).exp(), (marked / n).exp());
    println!(
        "perplexity of a fixed text ({} tokens, Pride and Prejudice ch. 1) at temperature 1: plain {ppl_plain:.2}; under the watermarked sampler ({}), per key (mean over 8 keys) {ppl_marked:.2} ({:+.1} %)",
        tokens.len(),
        params.describe(),
        (ppl_marked / ppl_plain - 1.0) * 100.0,
    );
    if let Params::Tournament(_) = params {
        // The log of a finite average of the keys' probabilities is biased low (Jensen),
        // by about the probabilities' spread over keys / (2 × keys): the excess shrinks
        // as 1/keys towards the model's own perplexity.
        let line: Vec<String> = means
            .iter()
            .zip([16, 64, 256])
            .map(|(sum, k)| {
                let ppl = (sum / n).exp();
                format!(
                    "{k} keys {ppl:.2} ({:+.1} %)",
                    (ppl / ppl_plain - 1.0) * 100.0
                )
            })
            .collect();
        println!(
            "  the tournament's next-token probabilities averaged over keys: {}",
            line.join(", ")
        );
    }
}
