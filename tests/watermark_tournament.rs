//! The tournament watermark (distortion-free) with the real demo model.
//!
//! 1. Its draws follow the model's own next-token distribution over keys: SmolLM2's
//!    logits at a fixed context, the engine's sampler with the tournament under 20,000
//!    keys against the model's softmax (Pearson's chi-square over its 20 likeliest
//!    tokens and the rest).
//! 2. End to end: a node serving a tournament license marks sampled answers (the
//!    detector finds them, at the vendor and on the node, and names the license), not
//!    greedy ones (temperature 0: nothing to draw), and unwatermarked answers or another
//!    license's key are not found.
//!
//! Needs LEASEHOLD_DEMO_MODEL and LEASEHOLD_PYTHON; scripts/test.sh provides both.

mod common;

use std::num::NonZeroU32;

use common::node::{get_json, NodeSite, Server};
use common::stories::read_license;
use leasehold::license::VerifiedLicense;
use leasehold::runtime::engine::Vocabulary;
use leasehold::runtime::sampling::Direct;
use leasehold::watermark::{self, tournament, Params, WatermarkKey};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use serde_json::json;

const SPEC: &str = "scheme=tournament,depth=8,context=2";

/// Pearson's chi-square of `counts` against `expected` probabilities (bins summing to 1).
fn chi_square(counts: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(expected)
        .map(|(c, p)| (*c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum()
}

#[test]
fn over_many_keys_the_tournaments_draws_follow_the_models_distribution() {
    let Some((model_path, _)) = common::demo_prerequisites() else {
        return;
    };
    // The model's logits after a fixed context, from llama.cpp itself.
    leasehold::runtime::backends::load().unwrap();
    let backend = LlamaBackend::init().unwrap();
    let model =
        LlamaModel::load_from_file(&backend, &model_path, &LlamaModelParams::default()).unwrap();
    let tokens = model.vocab().tokenize(
        b"Once upon a time, in a small village by the sea, there lived",
        true,
        false,
    );
    let mut ctx = model
        .new_context(
            &backend,
            LlamaContextParams::default().with_n_ctx(NonZeroU32::new(256)),
        )
        .unwrap();
    let mut batch = LlamaBatch::new(256, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i + 1 == tokens.len())
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let logits = ctx.get_logits_ith(tokens.len() as i32 - 1).to_vec();
    let previous: Vec<i32> = tokens.iter().map(|t| t.0).collect();

    // Bins: the 20 likeliest tokens, and the rest.
    let max = logits.iter().fold(f32::MIN, |m, l| m.max(*l));
    let weights: Vec<f64> = logits.iter().map(|l| f64::from(l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| weights[*b].total_cmp(&weights[*a]));
    let mut bin_of = vec![20usize; logits.len()];
    for (bin, token) in order[..20].iter().enumerate() {
        bin_of[*token] = bin;
    }
    let mut expected: Vec<f64> = order[..20].iter().map(|t| weights[*t] / total).collect();
    expected.push(1.0 - expected.iter().sum::<f64>());
    assert!(
        expected[20] > 0.005,
        "the rest is a real bin: {}",
        expected[20]
    );

    let params = Params::parse(SPEC).unwrap();
    let Params::Tournament(t) = params else {
        unreachable!()
    };
    let draws = 20_000u64;
    let (mut marked, mut plain, mut one_key) = (vec![0u64; 21], vec![0u64; 21], vec![0u64; 21]);
    let mut scratch = tournament::Scratch::default();
    let fixed_key = WatermarkKey::from_bytes([9; 32]);
    for k in 0..draws {
        let mut key_bytes = [0u8; 32];
        key_bytes[..8].copy_from_slice(&k.to_le_bytes());
        let key = WatermarkKey::from_bytes(key_bytes);
        for (counts, key) in [(&mut marked, &key), (&mut one_key, &fixed_key)] {
            let seed = params.step_seed(key, &previous);
            let mut lean = |w: &mut [f32], tokens: Option<&[i32]>| {
                tournament::reweight(w, tokens, seed, &t, &mut scratch)
            };
            let token = Direct::temperature(1.0, k).sample_with(&logits, Some(&mut lean));
            counts[bin_of[token]] += 1;
        }
        plain[bin_of[Direct::temperature(1.0, k + draws).sample(&logits)]] += 1;
    }
    let (x_marked, x_plain, x_one) = (
        chi_square(&marked, &expected),
        chi_square(&plain, &expected),
        chi_square(&one_key, &expected),
    );
    eprintln!(
        "chi-square against the model's softmax, 20 degrees of freedom: tournament over {draws} keys {x_marked:.1}, unwatermarked {x_plain:.1}, tournament under one key {x_one:.1}"
    );
    // 20 degrees of freedom: the 99.9 % point is 45.3.
    assert!(x_marked < 45.3, "{x_marked}");
    assert!(x_plain < 45.3, "{x_plain}");
    // One key alone leans: its draws are not the model's distribution.
    assert!(x_one > 1000.0, "{x_one}");
}

/// The first ten stories at `temperature`.
async fn answers(server: &Server, temperature: f64) -> Vec<String> {
    common::stories::stories(server, 10, temperature).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tournament_license_marks_sampled_answers_and_the_detector_names_it() {
    let Some((model, _)) = common::demo_prerequisites() else {
        return;
    };
    let site = NodeSite::new(Some(&model));
    site.issue("marked.license", "+1h", &["--watermark", SPEC]);
    site.issue("other.license", "+1h", &["--watermark", SPEC]);
    site.issue("plain.license", "+1h", &[]);
    let marked = read_license(&site.path().join("marked.license"));
    assert_eq!(marked.body.features, ["watermark", "watermark-tournament"]);

    let mut server = Server::start(site.path(), &NodeSite::serve_args("marked.license", &[]));
    let license = get_json(&reqwest::Client::new(), &server.url("/v1/license")).await;
    assert_eq!(
        license["safeguards"]["watermark"],
        json!({"scheme": "tournament", "depth": 8, "context": 2})
    );
    let sampled = answers(&server, 1.0).await;
    let greedy = answers(&server, 0.0).await;
    server.stop();
    let mut server = Server::start(site.path(), &NodeSite::serve_args("plain.license", &[]));
    let unmarked = answers(&server, 1.0).await;
    let unmarked_greedy = answers(&server, 0.0).await;
    server.stop();

    let root = common::demo_root();
    let key_of = |l: &VerifiedLicense| {
        WatermarkKey::derive(&root, &l.body.license_id, &l.body.model.model_id)
    };
    let other = read_license(&site.path().join("other.license"));
    let params = marked.body.watermark.as_ref().unwrap().params;
    let vocabulary = Vocabulary::load(&model).unwrap();
    let p_values = |texts: &[String], key: &WatermarkKey| -> Vec<f64> {
        texts
            .iter()
            .map(|t| watermark::detect(&vocabulary.tokenize(t), key, &params).p_value)
            .collect()
    };
    let found = |p: &[f64]| p.iter().filter(|p| **p < 1e-4).count();
    let (with, without, wrong) = (
        p_values(&sampled, &key_of(&marked)),
        p_values(&unmarked, &key_of(&marked)),
        p_values(&sampled, &key_of(&other)),
    );
    let greedy_p = p_values(&greedy, &key_of(&marked));
    eprintln!(
        "p-values: sampled {with:?}\nunwatermarked {without:?}\nwrong key {wrong:?}\ngreedy {greedy_p:?}"
    );
    assert!(found(&with) >= 9, "sampled answers: {with:?}");
    assert_eq!(found(&without), 0, "{without:?}");
    assert_eq!(found(&wrong), 0, "{wrong:?}");
    // Greedy answers are the model's argmax, watermark or not: the same text as the
    // unwatermarked node's, and nothing for the detector to find.
    assert_eq!(greedy, unmarked_greedy);
    assert_eq!(found(&greedy_p), 0, "{greedy_p:?}");

    // The detector command at the vendor (every license; it names the one) and on the node.
    std::fs::write(site.path().join("marked.txt"), &sampled[0]).unwrap();
    std::fs::write(site.path().join("greedy.txt"), &greedy[0]).unwrap();
    std::fs::create_dir(site.path().join("licenses")).unwrap();
    for l in ["marked", "other", "plain"] {
        std::fs::copy(
            site.path().join(format!("{l}.license")),
            site.path().join(format!("licenses/{l}.license")),
        )
        .unwrap();
    }
    let root_key = common::repo_path("keys/demo/root.key");
    let detect = |args: &[&str]| common::stories::detect_json(site.path(), args);
    let vendor = [
        "--vendor-key",
        root_key.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--license",
        "licenses",
    ];
    let (code, v) = detect(&[&vendor[..], &["marked.txt"]].concat());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "watermarked");
    assert_eq!(v["scheme"], "tournament");
    assert_eq!(v["license_id"], marked.body.license_id.as_str());
    assert_eq!(v["licenses_tried"], 2);
    assert!(v["p_value_adjusted"].as_f64().unwrap() < 1e-4, "{v}");
    assert_eq!(v["trials"], v["scored"].as_u64().unwrap() * 8);
    let (code, v) = detect(&[&vendor[..], &["greedy.txt"]].concat());
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(24), Some("not_watermarked")),
        "{v}"
    );
    let node = [
        "--license",
        "marked.license",
        "--node-dir",
        "node",
        "--sealed",
        "m.sealed",
        "marked.txt",
    ];
    let (code, v) = detect(&node);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["license_id"], marked.body.license_id.as_str());
}
