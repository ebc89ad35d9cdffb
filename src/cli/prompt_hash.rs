//! `leasehold audit prompt-hash`: the salted hash of a prompt and the ledger records
//! that carry it.

use anyhow::Context;
use serde::Deserialize;

use super::{exit, Outcome, PromptHashArgs};
use crate::ledger::prompt_hash::{PromptParts, PromptSalt};
use crate::ledger::record::{self, Entry};

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

pub fn run(args: PromptHashArgs) -> Outcome {
    let salt = PromptSalt::read(&args.salt)?;
    let messages: Vec<Message> = match &args.chat {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a JSON array of {{\"role\", \"content\"}} messages",
                    path.display()
                )
            })?
        }
        None => Vec::new(),
    };
    let parts = match &args.text {
        Some(text) => PromptParts::Text(text),
        None => PromptParts::Chat(
            messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect(),
        ),
    };
    let digest = salt.hash(&parts);
    let mut matches = Vec::new();
    if let Some(ledger) = &args.ledger {
        let bytes =
            std::fs::read(ledger).with_context(|| format!("cannot read {}", ledger.display()))?;
        let records: Vec<_> = record::each(&bytes).flatten().collect();
        // How each admitted request ended (its completed record), by request id.
        let ended: std::collections::HashMap<&str, String> = records
            .iter()
            .filter_map(|p| match &p.body.entry {
                Entry::Completed {
                    request_id,
                    outcome,
                    ..
                } => Some((request_id.as_str(), outcome.as_string())),
                _ => None,
            })
            .collect();
        for parsed in &records {
            let (request_id, outcome) = match &parsed.body.entry {
                Entry::Request {
                    request_id,
                    outcome,
                    prompt_sha256: Some(found),
                    ..
                } if *found == digest => (request_id, outcome.as_string()),
                Entry::Admitted {
                    request_id,
                    prompt_sha256: Some(found),
                    ..
                } if *found == digest => (
                    request_id,
                    ended
                        .get(request_id.as_str())
                        .cloned()
                        .unwrap_or_else(|| "interrupted".into()),
                ),
                _ => continue,
            };
            matches.push(serde_json::json!({
                "seq": parsed.body.seq,
                "at": crate::format::time::rfc3339(parsed.body.at),
                "request_id": request_id,
                "outcome": outcome,
            }));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "prompt_sha256": hex::encode(digest.0),
                "records": matches,
            }))?
        );
    } else {
        println!("{}", hex::encode(digest.0));
        for m in &matches {
            println!(
                "record {} at {}: {} ({})",
                m["seq"],
                m["at"].as_str().unwrap_or(""),
                m["request_id"].as_str().unwrap_or(""),
                m["outcome"].as_str().unwrap_or("")
            );
        }
        if args.ledger.is_some() && matches.is_empty() {
            eprintln!("no record in the ledger carries this prompt hash");
        }
    }
    Ok(if args.ledger.is_some() && matches.is_empty() {
        exit::ERROR
    } else {
        exit::OK
    })
}
