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
use crate::crypto::signing::{Domain, PublicKey, SecretKey};
use crate::format::encoding::{base64_array, hex_array, Digest};

const HASH_TAG: &[u8] = b"leasehold ledger record\0";

/// Totals over every request record so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Totals {
    pub fn add(&mut self, entry: &Entry) {
        if let Entry::Request {
            prompt_tokens,
            completion_tokens,
            ..
        } = entry
        {
            self.requests += 1;
            self.prompt_tokens += prompt_tokens;
            self.completion_tokens += completion_tokens;
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Entry {
    /// The first record: whose ledger this is.
    Genesis { node_id: String },
    /// One inference request and its outcome.
    Request {
        request_id: String,
        license_id: String,
        model_id: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        /// `ok`, `cancelled`, `filtered` (the license's output filter ended the
        /// answer), or `refused:<code>`.
        outcome: String,
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
pub fn encode(body: &RecordBody, key: Option<&SecretKey>) -> (String, [u8; 32]) {
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
