//! Shared by the benchmark examples: percentiles, and concurrent chat clients against a
//! running node (`#[path = "support/load.rs"] mod load;`).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `p` quantile (0..=1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What a round of client load did.
pub struct Load {
    pub requests: usize,
    pub tokens: u64,
    pub wall: f64,
    /// Sorted, seconds.
    pub latencies: Vec<f64>,
}

impl Load {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.wall
    }

    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.wall
    }

    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// `clients` clients, each sending `per_client` chat completions back to back (the
/// same prompts and seeds every time it is called).
pub async fn chat_clients(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    clients: usize,
    per_client: usize,
    max_tokens: u64,
) -> Load {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let http = http.clone();
            let url = format!("{base}/v1/chat/completions");
            let model = model.to_string();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for r in 0..per_client {
                    let body = json!({
                        "model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": (c * 100 + r) as u64,
                        "messages": [{"role": "user", "content": format!("Tell me a story about lighthouse number {}.", c * 100 + r)}],
                    });
                    let t = Instant::now();
                    let v: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
                    let tokens = v["usage"]["completion_tokens"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no usage in {v}"));
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
    Load {
        requests: latencies.len(),
        tokens,
        wall,
        latencies,
    }
}
