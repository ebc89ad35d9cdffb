//! Long stories from a serving node, for the watermark tests.

use leasehold::license::{verify, TrustRoots, VerifiedLicense};
use serde_json::json;

use super::node::{post_json, Server};

pub const TOPICS: [&str; 20] = [
    "a lighthouse keeper and a storm",
    "a robot learning to paint",
    "the history of the bicycle",
    "a village that forgot how to sing",
    "why bees dance",
    "a detective who hates coffee",
    "the first winter on Mars",
    "a library that is open only at night",
    "how bread is made",
    "a cat who becomes mayor",
    "the life of a river",
    "an old clockmaker's last clock",
    "learning to sail",
    "a dragon afraid of heights",
    "the invention of the printing press",
    "a garden on a rooftop in a big city",
    "two friends lost in a forest",
    "the journey of a letter",
    "a musician who cannot hear",
    "a train that never stops",
];

/// The first `count` topics' answers, of up to 200 tokens each, one at a time with fixed
/// seeds (the topic's index), at `temperature`. The prompts ask for long texts: an answer
/// that ends after a sentence cannot carry much evidence whatever the watermark does.
pub async fn stories(server: &Server, count: usize, temperature: f64) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for (i, topic) in TOPICS.iter().take(count).enumerate() {
        let body = json!({
            "model": "smollm2-135m",
            "messages": [
                {"role": "system", "content": "You are a novelist. Every answer is a long, detailed story of at least 400 words."},
                {"role": "user", "content": format!("Write a long story about {topic}.")},
            ],
            "max_tokens": 200,
            "temperature": temperature,
            "seed": i,
        });
        let v = post_json(&http, &server.url("/v1/chat/completions"), &body).await;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no answer: {v}"));
        answers.push(text.to_string());
    }
    answers
}

/// A license file, authenticated against the compiled-in roots.
pub fn read_license(path: &std::path::Path) -> VerifiedLicense {
    verify::authenticate(&std::fs::read(path).unwrap(), &TrustRoots::compiled_in()).unwrap()
}

/// `leasehold watermark detect --json ARGS` in `dir`: its exit code and its JSON.
pub fn detect_json(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["watermark", "detect", "--json"];
    all.extend_from_slice(args);
    let out = super::node::leasehold(dir, &all);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{all:?}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}
