//! `leasehold watermark detect`: is a text generated under a watermarked license?
//!
//! The node holds its license's watermark key wrapped to its own key; the vendor (or
//! license server operator) derives it again from the key that signed the license.
//! Either way the text is tokenized with the model's vocabulary and scored under each
//! license's key with its scheme (watermark::detect); the verdict is the smallest
//! p-value, times the number of licenses tried, below `--max-p`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

use super::{exit, Outcome, WatermarkDetectArgs};
use crate::crypto::keyfile;
use crate::fsutil;
use crate::license::{TrustRoots, VerifiedLicense, MAX_LICENSE_BYTES};
use crate::node::NodeIdentity;
use crate::runtime::engine::Vocabulary;
use crate::runtime::safeguards::Safeguards;
use crate::watermark::{self, Detection, WatermarkKey};

/// Texts longer than this are refused (a detector reads answers, not corpora).
const MAX_TEXT_BYTES: usize = 16 << 20;

/// Below this many scored tokens a verdict is weak either way; the output says so.
const FEW_TOKENS: usize = 25;

struct Candidate {
    path: PathBuf,
    license: VerifiedLicense,
    /// `None`: the license mandates no watermark.
    key: Option<WatermarkKey>,
}

pub fn detect(args: WatermarkDetectArgs) -> Outcome {
    super::inspect::forbid_dumps()?;
    if let Err(code) = super::inspect::check_native() {
        return Ok(code);
    }
    let text = read_text(&args.file)?;
    let paths = license_paths(&args.licenses)?;
    let mut licenses = Vec::new();
    for path in &paths {
        licenses.push((path.clone(), read_license(path)?));
    }
    let (candidates, vocabulary) = match (&args.node_dir, &args.vendor_key) {
        (Some(dir), _) => on_node(dir, args.sealed.as_deref(), licenses)?,
        (None, Some(key)) => at_vendor(key, args.model.as_deref(), licenses)?,
        (None, None) => bail!("give --node-dir and --sealed, or --vendor-key and --model"),
    };
    let tokens = vocabulary.tokenize(&text);
    drop(vocabulary);

    let results: Vec<(&Candidate, Option<Detection>)> = candidates
        .iter()
        .map(|c| {
            let found = c.key.as_ref().and_then(|key| {
                let w = c.license.body.watermark.as_ref()?;
                Some(watermark::detect(&tokens, key, &w.params))
            });
            (c, found)
        })
        .collect();
    let tried = results.iter().filter(|(_, d)| d.is_some()).count();
    let best = results
        .iter()
        .filter_map(|(c, d)| d.map(|d| (*c, d)))
        .min_by(|a, b| {
            a.1.p_value
                .total_cmp(&b.1.p_value)
                .then(b.1.z_score.total_cmp(&a.1.z_score))
        });
    let Some((best_license, best_detection)) = best else {
        bail!("none of the licenses given mandates a watermark; there is nothing to detect");
    };
    // Several licenses tried: the chance that any of them scores this low by chance is
    // at most `tried` times the best p-value (Bonferroni).
    let p_adjusted = (best_detection.p_value * tried as f64).min(1.0);
    let found = p_adjusted < args.max_p;

    if args.json {
        let list: Vec<_> = results
            .iter()
            .map(|(c, d)| {
                let body = &c.license.body;
                json!({
                    "file": c.path.display().to_string(),
                    "license_id": body.license_id,
                    "licensee": body.licensee,
                    "node_id": body.node.node_id,
                    "model_id": body.model.model_id,
                    "watermark": body.watermark.as_ref().map(|w| w.params.json()),
                    "scored": d.map(|d| d.scored),
                    "trials": d.map(|d| d.trials),
                    "hits": d.map(|d| d.hits),
                    "chance": d.map(|d| d.chance),
                    "z_score": d.map(|d| d.z_score),
                    "p_value": d.map(|d| d.p_value),
                })
            })
            .collect();
        let body = &best_license.license.body;
        let out = json!({
            "verdict": if found { "watermarked" } else { "not_watermarked" },
            "max_p": args.max_p,
            "tokens": tokens.len(),
            "scheme": body.watermark.as_ref().map(|w| w.params.scheme()),
            "scored": best_detection.scored,
            "trials": best_detection.trials,
            "hits": best_detection.hits,
            "z_score": best_detection.z_score,
            "p_value": best_detection.p_value,
            "licenses_tried": tried,
            "p_value_adjusted": p_adjusted,
            "license_id": if found { Some(&body.license_id) } else { None },
            "licensee": if found { Some(&body.licensee) } else { None },
            "too_short": best_detection.scored < FEW_TOKENS,
            "licenses": list,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (c, d) in &results {
            let body = &c.license.body;
            match (d, body.watermark.as_ref()) {
                (Some(d), Some(w)) => println!(
                    "license {} ('{}', node {}; {}): {}, z = {:.2}, p = {:.2e}",
                    body.license_id,
                    body.licensee,
                    short(&body.node.node_id),
                    w.params.describe(),
                    counted(d, &w.params),
                    d.z_score,
                    d.p_value
                ),
                _ => println!(
                    "license {} ('{}'): mandates no watermark; skipped",
                    body.license_id, body.licensee
                ),
            }
        }
        let body = &best_license.license.body;
        let adjusted = if tried > 1 {
            format!(" ({tried} licenses tried: p x {tried} = {p_adjusted:.2e})")
        } else {
            String::new()
        };
        if found {
            println!(
                "verdict: WATERMARKED: generated under license {} ('{}', model {}) (p = {:.2e}{adjusted} < {})",
                body.license_id, body.licensee, body.model.model_id, best_detection.p_value, args.max_p
            );
        } else {
            println!(
                "verdict: no watermark found (best p = {:.2e}{adjusted}, needs < {}){}",
                best_detection.p_value,
                args.max_p,
                if candidates.len() > 1 {
                    " under any of these licenses"
                } else {
                    ""
                }
            );
        }
        if best_detection.scored < FEW_TOKENS {
            println!(
                "note: only {} tokens scored; a text this short cannot carry much evidence either way",
                best_detection.scored
            );
        }
    }
    Ok(if found { exit::OK } else { exit::NO_WATERMARK })
}

/// "61 of 198 tokens green (expected 49.5 at gamma 0.25)" or "1021 of 1584 g-values 1
/// (expected 792.0: 198 tokens x depth 8)".
fn counted(d: &Detection, params: &watermark::Params) -> String {
    match params {
        watermark::Params::Kgw(k) => format!(
            "{} of {} tokens green (expected {:.1} at gamma {})",
            d.hits,
            d.scored,
            d.chance * d.trials as f64,
            k.gamma
        ),
        watermark::Params::Tournament(t) => format!(
            "{} of {} g-values 1 (expected {:.1}: {} tokens x depth {})",
            d.hits,
            d.trials,
            d.chance * d.trials as f64,
            d.scored,
            t.depth
        ),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_TEXT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        bytes = fsutil::read_limited(path, MAX_TEXT_BYTES as u64, "text")?;
    }
    if bytes.len() > MAX_TEXT_BYTES {
        bail!(
            "the text is over {} MiB; pass one answer at a time",
            MAX_TEXT_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))
}

/// Files as given; directories give their *.license files, sorted.
fn license_paths(given: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for path in given {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "license"))
                .collect();
            if found.is_empty() {
                bail!("{} holds no *.license files", path.display());
            }
            found.sort();
            paths.extend(found);
        } else {
            paths.push(path.clone());
        }
    }
    Ok(paths)
}

fn read_license(path: &Path) -> anyhow::Result<VerifiedLicense> {
    let bytes = fsutil::read_limited(path, MAX_LICENSE_BYTES, "license")?;
    crate::license::verify::authenticate(&bytes, &TrustRoots::compiled_in()).map_err(|v| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            v.explain(crate::node::clock::system_now())
        )
    })
}

/// The node's way: unwrap the key with the node's key, read the sealed model's vocabulary.
fn on_node(
    dir: &Path,
    sealed: Option<&Path>,
    licenses: Vec<(PathBuf, VerifiedLicense)>,
) -> anyhow::Result<(Vec<Candidate>, Vocabulary)> {
    let sealed = sealed.context("--node-dir needs --sealed")?;
    let [(path, license)]: [(PathBuf, VerifiedLicense); 1] = licenses
        .try_into()
        .map_err(|_| anyhow::anyhow!("on the node, give exactly one --license (this node's)"))?;
    let identity = NodeIdentity::load(dir)?;
    let body = &license.body;
    if body.node.node_id != identity.public().node_id() {
        bail!(
            "{} is for node {}, but {} is node {}; a node can only test its own license's watermark (the vendor can test any with --vendor-key)",
            path.display(),
            body.node.node_id,
            dir.display(),
            identity.public().node_id()
        );
    }
    let safeguards = Safeguards::from_license(body, &identity).map_err(anyhow::Error::msg)?;
    let content_key = body
        .unwrap_content_key(identity.unwrapper())
        .map_err(|e| anyhow::anyhow!("cannot unwrap the content key: {e}"))?;
    let vocabulary = Vocabulary::load_sealed(sealed, &content_key).map_err(anyhow::Error::msg)?;
    let key = safeguards.watermark.map(|w| w.key);
    Ok((vec![Candidate { path, license, key }], vocabulary))
}

/// The vendor's way: derive each license's key from the key that signed it.
fn at_vendor(
    key_path: &Path,
    model: Option<&Path>,
    licenses: Vec<(PathBuf, VerifiedLicense)>,
) -> anyhow::Result<(Vec<Candidate>, Vocabulary)> {
    let model = model.context("--vendor-key needs --model")?;
    let signer = keyfile::read_secret_key(key_path)?;
    let signer_id = signer.public_key().key_id();
    let model_len = std::fs::metadata(model)
        .with_context(|| format!("cannot read {}", model.display()))?
        .len();
    let mut candidates = Vec::new();
    for (path, license) in licenses {
        let body = &license.body;
        let signed_by = license.signer_key_id();
        if signed_by != signer_id {
            bail!(
                "{} was signed by key {signed_by}, not by {} (key {signer_id}); pass the key that signed it",
                path.display(),
                key_path.display()
            );
        }
        if body.model.plaintext_len != model_len {
            bail!(
                "{} is {model_len} bytes, but license {} is for model '{}' of {} bytes; pass that model's plain GGUF",
                model.display(),
                body.license_id,
                body.model.model_id,
                body.model.plaintext_len
            );
        }
        let key = body
            .watermark
            .as_ref()
            .map(|_| WatermarkKey::derive(&signer, &body.license_id, &body.model.model_id));
        candidates.push(Candidate { path, license, key });
    }
    let vocabulary = Vocabulary::load(model).map_err(anyhow::Error::msg)?;
    Ok((candidates, vocabulary))
}
