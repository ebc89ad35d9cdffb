//! One ledger line: `{"body":{…},"hash":"…"}` or, for checkpoints,
//! `{"body":{…},"hash":"…","signature":"…"}`, then a newline.
//!
//! `hash` is SHA-256 of `leasehold ledger record\0 ‖ exact body bytes`; every body names
//! its sequence number and the previous record's hash (`prev`), so the lines form a
//! chain. A checkpoint's body carries the running totals and is signed by the node key
//! (domain `leasehold ledger checkpoint\0`), which pins the whole chain up to it.
//! Lines are canonical (compact JSON, fields in this order): one valid byte string per
//! record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::crypto::sha256;
use crate::crypto::signing::{DocumentSigner, Domain, PublicKey};
use crate::format::encoding::{base64_array, hex_array, Digest};

const HASH_TAG: &[u8] = b"leasehold ledger record\0";

/// Totals over every request record so far: requests (admitted, or answered/refused in
/// one record), their prompt tokens, and completion tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A record would carry a total past `u64::MAX`: no node writes that; a ledger written
/// by hand does. Verification reports it as a problem instead of saturating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ledger's {what} total overflows (more than 2^64 - 1)")]
pub struct TotalsOverflow {
    pub what: &'static str,
}

impl Totals {
    /// Count `entry` in. On overflow the totals are left as they were.
    pub fn add(&mut self, entry: &Entry) -> Result<(), TotalsOverflow> {
        let (requests, prompt, completion) = match entry {
            Entry::Request {
                prompt_tokens,
                completion_tokens,
                ..
            } => (1, *prompt_tokens, *completion_tokens),
            Entry::Admitted { prompt_tokens, .. } => (1, *prompt_tokens, 0),
            Entry::Completed {
                completion_tokens, ..
            } => (0, 0, *completion_tokens),
            _ => return Ok(()),
        };
        let sum = |total: u64, n: u64, what| total.checked_add(n).ok_or(TotalsOverflow { what });
        *self = Totals {
            requests: sum(self.requests, requests, "requests")?,
            prompt_tokens: sum(self.prompt_tokens, prompt, "prompt tokens")?,
            completion_tokens: sum(self.completion_tokens, completion, "completion tokens")?,
        };
        Ok(())
    }
}

/// How a request ended, as the ledger spells it: `ok`, `cancelled`, `filtered`, or
/// `refused:<code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// The client went away before the answer ended.
    Cancelled,
    /// The license's output filter ended the answer.
    Filtered,
    /// Turned down (before admission), or ended by an error after it.
    Refused(RefusalCode),
}

/// Why a request was refused or ended early; also the `code` of the HTTP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalCode {
    /// The license lapsed (before the request, or while it ran).
    LicenseExpired,
    /// A license cap (per day, per month, concurrent) was reached.
    LicenseCapExceeded,
    /// More requests wait for a sequence slot than `serve --queue` allows.
    QueueFull,
    /// The prompt does not fit the context.
    ContextLengthExceeded,
    /// The prompt is empty after the chat template.
    EmptyPrompt,
    /// The engine is shutting down or not running.
    EngineUnavailable,
    /// The engine ended the request without a result.
    EngineStopped,
    /// The engine failed (chat template, decoding).
    EngineError,
    /// Written by nodes before engine errors had their own codes; read, never written.
    Error,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 9] = [
        RefusalCode::LicenseExpired,
        RefusalCode::LicenseCapExceeded,
        RefusalCode::QueueFull,
        RefusalCode::ContextLengthExceeded,
        RefusalCode::EmptyPrompt,
        RefusalCode::EngineUnavailable,
        RefusalCode::EngineStopped,
        RefusalCode::EngineError,
        RefusalCode::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::LicenseExpired => "license_expired",
            RefusalCode::LicenseCapExceeded => "license_cap_exceeded",
            RefusalCode::QueueFull => "queue_full",
            RefusalCode::ContextLengthExceeded => "context_length_exceeded",
            RefusalCode::EmptyPrompt => "empty_prompt",
            RefusalCode::EngineUnavailable => "engine_unavailable",
            RefusalCode::EngineStopped => "engine_stopped",
            RefusalCode::EngineError => "engine_error",
            RefusalCode::Error => "error",
        }
    }
}

impl Outcome {
    pub fn as_string(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::Filtered => "filtered".into(),
            Outcome::Refused(code) => format!("refused:{}", code.as_str()),
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "ok" => Some(Outcome::Ok),
            "cancelled" => Some(Outcome::Cancelled),
            "filtered" => Some(Outcome::Filtered),
            _ => {
                let code = text.strip_prefix("refused:")?;
                RefusalCode::ALL
                    .into_iter()
                    .find(|c| c.as_str() == code)
                    .map(Outcome::Refused)
            }
        }
    }

    /// Did the model work for this request (answered, filtered or cancelled)? Such
    /// requests count against the caps; ones refused before admission do not.
    pub fn served(self) -> bool {
        !matches!(self, Outcome::Refused(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Outcome::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown outcome '{text}' (ok, cancelled, filtered, refused:<code>)"
            ))
        })
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Entry {
    /// The first record: whose ledger this is.
    Genesis { node_id: String },
    /// A request refused before it was admitted, in one record (and, in ledgers written
    /// before `admitted` records existed, any request).
    Request {
        request_id: String,
        license_id: String,
        model_id: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        outcome: Outcome,
        /// Short id of the client's API key (`-` without keys).
        client_key: String,
        /// With `serve --ledger-prompt-hash` only: SHA-256 of the node's secret salt
        /// and the prompt as given to the model. Proves which prompt a record is about
        /// to someone holding the salt; tells an auditor without it nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt_sha256: Option<Digest>,
        /// With outcome `filtered`: the license's filter rule that matched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter_rule: Option<String>,
    },
    /// Write-ahead: a request the engine admitted, durable before any of its answer is
    /// sent. Its `completed` record follows; one without is an interrupted request.
    Admitted {
        request_id: String,
        license_id: String,
        model_id: String,
        prompt_tokens: u64,
        client_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt_sha256: Option<Digest>,
    },
    /// The end of an admitted request (durable before the end of its answer is sent).
    Completed {
        request_id: String,
        completion_tokens: u64,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter_rule: Option<String>,
    },
    /// Signed by the node key: the chain up to here and the totals.
    Checkpoint { totals: Totals },
    /// A license server acknowledged (renewed against) the checkpoint at `seq` with
    /// hash `hash`. The next renewal names it, so the server can tell that the ledger
    /// it hears from continues the one it heard from before.
    Reported {
        seq: u64,
        #[serde(with = "hex_array")]
        hash: [u8; 32],
    },
    /// A torn tail (a write cut by a crash) found at start and moved aside, not dropped.
    Recovered {
        torn_bytes: u64,
        #[serde(with = "hex_array")]
        torn_sha256: [u8; 32],
        moved_to: String,
    },
}

/// The hashed part of a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    pub seq: u64,
    #[serde(with = "hex_array")]
    pub prev: [u8; 32],
    pub at: DateTime<Utc>,
    pub entry: Entry,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(with = "hex_array")]
    hash: [u8; 32],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<Signature>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct Signature(#[serde(with = "base64_array")] [u8; 64]);

/// A parsed line: body, its bytes' hash as written, and the checkpoint signature.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub body: RecordBody,
    pub written_hash: [u8; 32],
    pub actual_hash: [u8; 32],
    pub body_bytes: String,
    pub signature: Option<[u8; 64]>,
}

fn hash_body(body: &str) -> [u8; 32] {
    sha256(&[HASH_TAG, body.as_bytes()])
}

/// Encode a record as its line (with the newline); returns the line and its hash.
pub fn encode(body: &RecordBody, key: Option<&dyn DocumentSigner>) -> (String, [u8; 32]) {
    let text = serde_json::to_string(body).expect("record bodies always serialize");
    let hash = hash_body(&text);
    let signature = match (&body.entry, key) {
        (Entry::Checkpoint { .. }, Some(key)) => Some(Signature(
            key.sign(Domain::LedgerCheckpoint, text.as_bytes()),
        )),
        _ => None,
    };
    let raw = RawValue::from_string(text).expect("serde_json output is valid JSON");
    let mut line = serde_json::to_string(&Line {
        body: &raw,
        hash,
        signature,
    })
    .expect("lines always serialize");
    line.push('\n');
    (line, hash)
}

/// Parse one line (without its newline). `Err` says why it is not a record.
pub fn parse(line: &str) -> Result<Parsed, String> {
    let parsed: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let body_bytes = parsed.body.get().to_string();
    let body: RecordBody = serde_json::from_str(&body_bytes).map_err(|e| e.to_string())?;
    if serde_json::to_string(&body).ok().as_deref() != Some(body_bytes.as_str()) {
        return Err("the record is not in canonical form".into());
    }
    if parsed.signature.is_some() && !matches!(body.entry, Entry::Checkpoint { .. }) {
        return Err("a signature on a record that is not a checkpoint".into());
    }
    let canonical = serde_json::to_string(&parsed).map_err(|e| e.to_string())?;
    if canonical != line {
        return Err("the line is not in canonical form".into());
    }
    Ok(Parsed {
        actual_hash: hash_body(&body_bytes),
        written_hash: parsed.hash,
        body,
        body_bytes,
        signature: parsed.signature.map(|s| s.0),
    })
}

/// Each non-empty line of a ledger file, parsed: `None` for a line that is not a
/// record. For readers that tally records (reports, caps, searches); checking the
/// chain is [`super::verify`]'s job.
pub fn each(bytes: &[u8]) -> impl Iterator<Item = Option<Parsed>> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).ok().and_then(|l| parse(l).ok()))
}

impl Parsed {
    /// Does the checkpoint signature verify under `key`?
    pub fn signature_ok(&self, key: &PublicKey) -> bool {
        self.signature.is_some_and(|sig| {
            key.verify(Domain::LedgerCheckpoint, self.body_bytes.as_bytes(), &sig)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_have_one_spelling_each() {
        let mut all = vec![Outcome::Ok, Outcome::Cancelled, Outcome::Filtered];
        all.extend(RefusalCode::ALL.map(Outcome::Refused));
        for o in all {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        assert_eq!(
            Outcome::parse("refused:error"),
            Some(Outcome::Refused(RefusalCode::Error))
        );
        assert!(serde_json::from_str::<Outcome>("\"refused:whatever\"").is_err());
        assert!(serde_json::from_str::<Outcome>("\"OK\"").is_err());
    }
}
