//! HTTP load on a running node: 1, 4 and 8 concurrent clients, each sending chat
//! completions back to back. Prints total generated tokens/s and p50/p99 latency.
//!
//!     cargo run --example bench_http -- BASE_URL MODEL [MAX_TOKENS] [REQUESTS_PER_CLIENT]
//!
//! scripts/bench.sh starts `leasehold serve` and runs this against it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .expect("usage: bench_http BASE_URL MODEL [MAX_TOKENS] [REQUESTS]")
        .clone();
    let model = args.get(2).expect("model id").clone();
    let max_tokens: u64 = args.get(3).map_or(128, |v| v.parse().unwrap());
    let per_client: usize = args.get(4).map_or(4, |v| v.parse().unwrap());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    println!("{base} model {model}, max_tokens {max_tokens}, {per_client} requests per client");
    for clients in [1usize, 4, 8] {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let http = http.clone();
                let url = format!("{base}/v1/chat/completions");
                let model = model.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for r in 0..per_client {
                        let body = json!({
                            "model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": (c * 100 + r) as u64,
                            "messages": [{"role": "user", "content": format!("Tell me a story about lighthouse number {}.", c * 100 + r)}],
                        });
                        let t = Instant::now();
                        let v: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
                        let tokens = v["usage"]["completion_tokens"].as_u64().expect("usage in every response");
                        out.push((t.elapsed().as_secs_f64(), tokens));
                    }
                    out
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut tokens = 0u64;
        for t in tasks {
            for (latency, n) in t.await.unwrap() {
                latencies.push(latency);
                tokens += n;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{clients} client(s): {} requests, {tokens} tokens in {wall:.1} s = {:.1} tokens/s total; latency p50 {:.2} s, p99 {:.2} s",
            latencies.len(),
            tokens as f64 / wall,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
}
