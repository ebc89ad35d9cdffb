//! Cold start and token throughput: the sealed route (`serve`: open the sealed file,
//! decrypt into a memfd in parallel, load through /proc/self/fd/N) against llama.cpp
//! loading the plaintext GGUF directly, same process, same threads, alternating runs.
//!
//!     cargo run --example bench_runtime -- MODEL.gguf [THREADS] [RUNS]
//!
//! Runs alternate plain and sealed. Prints medians: time to ready (model + context), time to first token (a 32-token
//! prompt), prompt processing (512 tokens) and generation (128 tokens) in tokens/s.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leasehold::crypto::ContentKey;
use leasehold::runtime::weights::DecryptedWeights;
use leasehold::seal::{self, SealedModel};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

struct Sample {
    ready: Duration,
    first_token: Duration,
    pp_tps: f64,
    tg_tps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run(
    backend: &LlamaBackend,
    path: &Path,
    threads: i32,
    start: Instant,
    measure_speed: bool,
) -> (Duration, Duration, f64, f64) {
    let model = LlamaModel::load_from_file(
        backend,
        path,
        &LlamaModelParams::default().with_use_mmap(true),
    )
    .unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(backend, params).unwrap();
    let ready = start.elapsed();
    let vocab = model.vocab();
    let prompt = vocab.tokenize(b"The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away, there lived", true, false);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, t) in prompt.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i + 1 == prompt.len())
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let _ = sampler.sample(&ctx, batch.n_tokens() - 1);
    let first_token = start.elapsed();
    if !measure_speed {
        return (ready, first_token, 0.0, 0.0);
    }
    // pp512
    ctx.clear_kv_cache();
    batch.clear();
    let filler: Vec<LlamaToken> = (0..512).map(|i| prompt[i % prompt.len()]).collect();
    for (i, t) in filler.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i == 511).unwrap();
    }
    let t = Instant::now();
    ctx.decode(&mut batch).unwrap();
    let pp = 512.0 / t.elapsed().as_secs_f64();
    // tg128
    ctx.clear_kv_cache();
    let mut token = prompt[0];
    let t = Instant::now();
    for i in 0..128 {
        batch.clear();
        batch.add(token, i, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
        token = sampler.sample(&ctx, 0);
    }
    let tg = 128.0 / t.elapsed().as_secs_f64();
    (ready, first_token, pp, tg)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plain = PathBuf::from(
        args.get(1)
            .expect("usage: bench_runtime MODEL.gguf [THREADS] [RUNS]"),
    );
    let threads: i32 = args.get(2).map_or(2, |t| t.parse().unwrap());
    let runs: usize = args.get(3).map_or(5, |t| t.parse().unwrap());
    let dir = tempfile::TempDir::new().unwrap();
    let sealed_path = dir.path().join("m.sealed");
    let key = ContentKey::generate();
    seal::seal_file(
        &plain,
        "bench",
        &sealed_path,
        &key,
        seal::header::DEFAULT_SEGMENT,
        &seal::no_progress,
        || Ok(()),
    )
    .unwrap();
    // llama.cpp's CPU kernels for this machine, checked as `serve` loads them.
    let kernels = leasehold::runtime::backends::load().unwrap();
    eprintln!("CPU kernels: {}", kernels.variant);
    // (load() has silenced llama.cpp's own logging.)
    let backend = LlamaBackend::init().unwrap();
    // Warm the page cache for both files.
    let _ = std::fs::read(&plain).unwrap();
    let _ = std::fs::read(&sealed_path).unwrap();

    let mut plain_samples = Vec::new();
    let mut sealed_samples = Vec::new();
    let mut decrypt_times = Vec::new();
    for _ in 0..runs {
        let speed = true;
        let start = Instant::now();
        let (ready, first_token, pp_tps, tg_tps) = run(&backend, &plain, threads, start, speed);
        plain_samples.push(Sample {
            ready,
            first_token,
            pp_tps,
            tg_tps,
        });

        let start = Instant::now();
        let sealed = SealedModel::open(&sealed_path).unwrap();
        let weights = DecryptedWeights::decrypt(&sealed, &key, &seal::no_progress).unwrap();
        decrypt_times.push(start.elapsed().as_secs_f64());
        let (ready, first_token, pp_tps, tg_tps) =
            run(&backend, &weights.path(), threads, start, speed);
        sealed_samples.push(Sample {
            ready,
            first_token,
            pp_tps,
            tg_tps,
        });
        weights.wipe();
    }
    let size = std::fs::metadata(&plain).unwrap().len() as f64;
    let report = |name: &str, s: &[Sample]| {
        let ready = median(s.iter().map(|x| x.ready.as_secs_f64()).collect());
        let first = median(s.iter().map(|x| x.first_token.as_secs_f64()).collect());
        let pp = median(s.iter().map(|x| x.pp_tps).collect());
        let tg = median(s.iter().map(|x| x.tg_tps).collect());
        println!("{name:8} ready {ready:.3} s  first token {first:.3} s  pp512 {pp:.1} t/s  tg128 {tg:.1} t/s");
        (ready, first, pp, tg)
    };
    println!(
        "model {} ({:.1} MB), {threads} threads, {runs} runs, medians; rayon threads {}",
        plain.display(),
        size / 1e6,
        rayon::current_num_threads()
    );
    let (pr, pf, ppp, ptg) = report("plain", &plain_samples);
    let (sr, sf, spp, stg) = report("sealed", &sealed_samples);
    println!(
        "tokens/s sealed/plain: pp512 {:.3}, tg128 {:.3}",
        spp / ppp,
        stg / ptg
    );
    let decrypt = median(decrypt_times);
    println!("sealed/plain: ready {:.2}x, first token {:.2}x; decrypt into memfd {decrypt:.3} s ({:.2} s per GB, {:.0} MB/s); sealed overhead {:.3} s ({:.2} s per GB)",
        sr / pr, sf / pf, decrypt / size * 1e9, size / decrypt / 1e6, sr - pr, (sr - pr) / size * 1e9);
}
