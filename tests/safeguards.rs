//! License-mandated safeguards with the real demo model (SmolLM2-135M-Instruct): the
//! text watermark (detected in what a watermarked license's node generates, not in
//! what an unwatermarked one generates, not under another license's key) and the
//! output filter (a term split across stream chunks never reaches the official
//! `openai` client; the answer ends with `content_filter`; the ledger records it).
//! Neither can be turned off by the operator's flags, environment or config.
//!
//! Needs LEASEHOLD_DEMO_MODEL and LEASEHOLD_PYTHON; scripts/test.sh provides both.

mod common;

use std::path::Path;
use std::process::Command;

use common::node::{get_json, leasehold, NodeSite, Server};
use common::stories::read_license;
use leasehold::license::VerifiedLicense;
use leasehold::runtime::engine::Vocabulary;
use leasehold::watermark::{self, Detection, Params, WatermarkKey};
use serde_json::Value;

/// Environment an operator might try to switch the safeguards off with. None of these
/// names exists; `serve` must ignore them and apply what the license mandates.
const HOSTILE_ENV: &[(&str, &str)] = &[
    ("LEASEHOLD_WATERMARK", "off"),
    ("LEASEHOLD_NO_WATERMARK", "1"),
    ("LEASEHOLD_OUTPUT_FILTER", "off"),
    ("LEASEHOLD_FILTER_RULES", "/dev/null"),
    ("LEASEHOLD_SAFEGUARDS", "none"),
];

/// `serve` with the hostile environment and a config file (which may only hold real
/// `serve` flags: a key that would switch a safeguard off does not exist).
fn serve_hostile(site: &NodeSite, license: &str) -> Server {
    std::fs::write(site.path().join("node.toml"), "[serve]\nparallel = 4\n").unwrap();
    let env: Vec<(&str, &Path)> = HOSTILE_ENV
        .iter()
        .map(|(k, v)| (*k, Path::new(*v)))
        .collect();
    Server::start_env(
        site.path(),
        &NodeSite::serve_args(license, &["--config", "node.toml"]),
        &env,
    )
}

/// Twenty answers at temperature 1.0, the OpenAI default. Lower temperatures sharpen the
/// distribution, and where the model is sure of the next token the bias cannot move it:
/// the watermark needs entropy to show (15 tokens, all green, give z = 6.7; a third of
/// them green, 1.9).
async fn twenty_answers(server: &Server) -> Vec<String> {
    common::stories::stories(server, 20, 1.0).await
}

fn detections(
    vocabulary: &Vocabulary,
    texts: &[String],
    key: &WatermarkKey,
    params: &Params,
) -> Vec<Detection> {
    texts
        .iter()
        .map(|t| watermark::detect(&vocabulary.tokenize(t), key, params))
        .collect()
}

fn summary(what: &str, found: &[Detection]) -> String {
    let z: Vec<String> = found
        .iter()
        .map(|d| format!("{:.1} ({})", d.z_score, d.scored))
        .collect();
    let tokens: usize = found.iter().map(|d| d.scored).sum();
    format!(
        "{what}: z = [{}], {} tokens scored in all",
        z.join(", "),
        tokens
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_is_found_in_what_a_watermarked_node_generates_and_only_there() {
    let Some((model, _)) = common::demo_prerequisites() else {
        return;
    };
    let site = NodeSite::new(Some(&model));
    site.issue(
        "marked.license",
        "+1h",
        &["--watermark", "gamma=0.25,delta=2.0"],
    );
    site.issue(
        "other.license",
        "+1h",
        &["--watermark", "gamma=0.25,delta=2.0"],
    );
    site.issue("plain.license", "+1h", &[]);

    // The operator has no way to say no: no flag, no config key.
    for flag in ["--no-watermark", "--watermark=off", "--no-output-filter"] {
        let out = leasehold(
            site.path(),
            &NodeSite::serve_args("marked.license", &[flag]),
        );
        assert_eq!(out.status.code(), Some(2), "{flag} was accepted");
    }
    for key in [
        "watermark = false",
        "output-filter = false",
        "filter-rules = \"\"",
    ] {
        std::fs::write(site.path().join("off.toml"), format!("[serve]\n{key}\n")).unwrap();
        let out = leasehold(site.path(), &["config", "check", "off.toml"]);
        assert_eq!(out.status.code(), Some(2), "{key} was accepted");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("unknown setting"), "{said}");
    }

    let mut server = serve_hostile(&site, "marked.license");
    let license = get_json(&reqwest::Client::new(), &server.url("/v1/license")).await;
    assert_eq!(license["safeguards"]["watermark"]["gamma"], 0.25);
    let marked_texts = twenty_answers(&server).await;
    server.stop();
    let mut server = serve_hostile(&site, "plain.license");
    let plain_texts = twenty_answers(&server).await;
    server.stop();

    let marked = read_license(&site.path().join("marked.license"));
    let other = read_license(&site.path().join("other.license"));
    let root = common::demo_root();
    let key_of = |l: &VerifiedLicense| {
        WatermarkKey::derive(&root, &l.body.license_id, &l.body.model.model_id)
    };
    let params = marked.body.watermark.as_ref().unwrap().params;
    let vocabulary = Vocabulary::load(&model).unwrap();
    let with = detections(&vocabulary, &marked_texts, &key_of(&marked), &params);
    let without = detections(&vocabulary, &plain_texts, &key_of(&marked), &params);
    let wrong_key = detections(&vocabulary, &marked_texts, &key_of(&other), &params);
    eprintln!("{}", summary("watermarked", &with));
    eprintln!("{}", summary("unwatermarked", &without));
    eprintln!("{}", summary("wrong key", &wrong_key));
    let count = |found: &[Detection], f: &dyn Fn(f64) -> bool| {
        found.iter().filter(|d| f(d.z_score)).count()
    };
    assert!(
        count(&with, &|z| z > 4.0) >= 19,
        "{}",
        summary("watermarked", &with)
    );
    // Nothing is found where there is no watermark, or under another license's key.
    assert_eq!(
        count(&without, &|z| z > 4.0),
        0,
        "{}",
        summary("plain", &without)
    );
    assert_eq!(
        count(&wrong_key, &|z| z > 4.0),
        0,
        "{}",
        summary("wrong key", &wrong_key)
    );
    // z < 2 in at least 19 of 20 (95 %) unwatermarked answers. Under one key that is a
    // coin toss of its own: z is standard normal without the watermark, so 2 or more of
    // 20 reach 2 for about one key in ten. The rate is therefore measured under 50 keys
    // (this license's and those of 49 more license ids signed by the same key): 1,000
    // z-scores, of which at least 95 % must stay below 2.
    let mut below = count(&without, &|z| z < 2.0);
    for i in 1..50 {
        let key = WatermarkKey::derive(&root, &format!("{i:032x}"), &marked.body.model.model_id);
        below += count(
            &detections(&vocabulary, &plain_texts, &key, &params),
            &|z| z < 2.0,
        );
    }
    eprintln!("unwatermarked under 50 keys: {below} of 1000 below z = 2");
    assert!(
        below >= 950,
        "{below} of 1000 unwatermarked z-scores below 2"
    );

    // `run` goes through the same engine: its answer carries the watermark too.
    let out = site.ok(&NodeSite::run_args(
        "marked.license",
        &[
            "--max-tokens",
            "200",
            "--seed",
            "7",
            "--prompt",
            "Write a long story about a lighthouse keeper and a storm.",
        ],
    ));
    let ran = detections(
        &vocabulary,
        &[String::from_utf8_lossy(&out.stdout).trim_end().to_string()],
        &key_of(&marked),
        &params,
    );
    eprintln!("{}", summary("run", &ran));
    assert!(ran[0].z_score > 4.0, "{}", summary("run", &ran));

    // The detector command, both ways. On the node: its own license and sealed model.
    std::fs::write(site.path().join("marked.txt"), &marked_texts[0]).unwrap();
    std::fs::write(site.path().join("plain.txt"), &plain_texts[0]).unwrap();
    let detect = |args: &[&str]| common::stories::detect_json(site.path(), args);
    let node = [
        "--license",
        "marked.license",
        "--node-dir",
        "node",
        "--sealed",
        "m.sealed",
    ];
    let (code, v) = detect(&[&node[..], &["marked.txt"]].concat());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "watermarked");
    assert_eq!(v["license_id"], marked.body.license_id.as_str());
    assert!(v["z_score"].as_f64().unwrap() > 4.0);
    let (code, v) = detect(&[&node[..], &["plain.txt"]].concat());
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(24), Some("not_watermarked"))
    );
    // At the vendor: the signing key, the plain model, every license; it names the one.
    std::fs::create_dir(site.path().join("licenses")).unwrap();
    for l in ["marked", "other", "plain"] {
        std::fs::copy(
            site.path().join(format!("{l}.license")),
            site.path().join(format!("licenses/{l}.license")),
        )
        .unwrap();
    }
    let root_key = common::repo_path("keys/demo/root.key");
    let vendor = [
        "--vendor-key",
        root_key.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    let (code, v) = detect(&[&vendor[..], &["--license", "licenses", "marked.txt"]].concat());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["license_id"], marked.body.license_id.as_str());
    assert_eq!(v["licensee"], "Example Org");
    // Another license's key (the wrong key) finds nothing.
    let (code, v) = detect(&[&vendor[..], &["--license", "other.license", "marked.txt"]].concat());
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(24), Some("not_watermarked"))
    );
}

fn python_story(py: &Path, server: &Server) -> Value {
    let out = Command::new(py)
        .arg(common::repo_path("tests/python/openai_client.py"))
        .args(["story", &server.base, "smollm2-135m"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "story failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

/// A term the plain answer carries across a chunk boundary after its first third: the
/// last characters of one streamed chunk and the first of the next. `(term, where)`.
fn term_across_chunks(chunks: &[String]) -> (String, usize) {
    let full: String = chunks.concat();
    let lower = full.to_lowercase();
    let mut boundary = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        boundary += chunk.len();
        let Some(next) = chunks.get(k + 1) else { break };
        if k < chunks.len() / 3 {
            continue;
        }
        let a: String = chunk
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let b: String = next.chars().take(4).collect();
        let term = format!("{a}{b}");
        let start = boundary - a.len();
        let letters = term.chars().filter(|c| c.is_alphabetic()).count();
        if letters >= 4 && lower.find(&term.to_lowercase()) == Some(start) {
            return (term, start);
        }
    }
    panic!("no term spans two chunks in {chunks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_term_split_across_stream_chunks_never_reaches_the_client() {
    let Some((model, py)) = common::demo_prerequisites() else {
        return;
    };
    let site = NodeSite::new(Some(&model));
    site.issue("plain.license", "+1h", &[]);
    let mut server = site.serve("plain.license", &[]);
    let plain = python_story(&py, &server);
    server.stop();
    let chunks: Vec<String> = serde_json::from_value(plain["chunks"].clone()).unwrap();
    let full: String = chunks.concat();
    assert_eq!(
        plain["whole"].as_str(),
        Some(full.as_str()),
        "greedy runs differ"
    );
    let (term, start) = term_across_chunks(&chunks);

    std::fs::write(
        site.path().join("rules.toml"),
        format!(
            "terms = [{}]\npatterns = ['\\d{{3}}-\\d{{2}}-\\d{{4}}']\n",
            serde_json::to_string(&term).unwrap()
        ),
    )
    .unwrap();
    site.issue("filtered.license", "+1h", &["--filter-rules", "rules.toml"]);
    let inspect = site.ok(&["inspect", "filtered.license"]);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("output filter (1 term, 1 pattern)"));

    let mut server = serve_hostile(&site, "filtered.license");
    let filtered = python_story(&py, &server);
    let license = get_json(&reqwest::Client::new(), &server.url("/v1/license")).await;
    server.stop();
    assert_eq!(license["safeguards"]["output_filter"]["terms"], 1);

    let sent: String = serde_json::from_value::<Vec<String>>(filtered["chunks"].clone())
        .unwrap()
        .concat();
    assert_eq!(filtered["finish_reason"], "content_filter", "{filtered}");
    assert_eq!(sent, full[..start], "term {term:?}");
    assert!(!sent.to_lowercase().contains(&term.to_lowercase()));
    assert_eq!(filtered["whole_finish_reason"], "content_filter");
    assert_eq!(filtered["whole"].as_str(), Some(&full[..start]));

    // Both answers are in the ledger as filtered, with the rule; the ledger verifies.
    let ledger = std::fs::read_to_string(site.path().join("node/usage.ledger")).unwrap();
    let filtered_records: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["body"]["entry"]["outcome"] == "filtered")
        .collect();
    assert_eq!(filtered_records.len(), 2, "{ledger}");
    for r in &filtered_records {
        let rule = r["body"]["entry"]["filter_rule"].as_str().unwrap();
        assert!(rule.contains(&term), "{rule}");
        assert!(r["body"]["entry"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    site.ok(&[
        "audit",
        "verify",
        "node/usage.ledger",
        "--node-pub",
        "node/node.pub",
    ]);
}
