//! Checking a ledger with the node's public key alone (auditors, and the node at start).

use chrono::{DateTime, Utc};

use super::record::{self, Entry, Totals};
use crate::crypto::signing::PublicKey;

/// The first thing wrong with a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file ends inside a record (a write cut short, or bytes removed).
    Truncated { line: u64, offset: u64, bytes: u64 },
    /// A line that is not a ledger record at all.
    Malformed { line: u64, reason: String },
    /// A record whose content no longer matches its hash.
    Edited { line: u64, seq: u64 },
    /// Records missing: the sequence jumps.
    Deleted {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// A record out of order (or repeated).
    Reordered {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// A record that chains to a different history than the one before it.
    Forked { line: u64, seq: u64 },
    /// A checkpoint not signed by this node's key.
    BadCheckpointSignature { line: u64, seq: u64 },
    /// A checkpoint whose totals disagree with the records before it.
    CheckpointTotals { line: u64, seq: u64 },
    /// A record whose counts carry a total past 2^64 - 1: written by hand.
    TotalsOverflow {
        line: u64,
        seq: u64,
        what: &'static str,
    },
    /// A record dated before the record ahead of it (writers never go back in time).
    TimeWentBack { line: u64, seq: u64 },
    /// A `reported` record naming no earlier checkpoint of this ledger.
    UnknownReported { line: u64, seq: u64, reported: u64 },
    /// Not this node's ledger, no genesis record, or a second one.
    Foreign { reason: String },
}

impl Problem {
    /// The stable name (JSON, exit messages).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Truncated { .. } => "truncated",
            Problem::Malformed { .. } => "malformed",
            Problem::Edited { .. } => "edited",
            Problem::Deleted { .. } => "deleted",
            Problem::Reordered { .. } => "reordered",
            Problem::Forked { .. } => "forked",
            Problem::BadCheckpointSignature { .. } => "bad-checkpoint-signature",
            Problem::CheckpointTotals { .. } => "edited",
            Problem::TotalsOverflow { .. } => "overflow",
            Problem::TimeWentBack { .. } => "edited",
            Problem::UnknownReported { .. } => "edited",
            Problem::Foreign { .. } => "foreign",
        }
    }

    pub fn explain(&self) -> String {
        match self {
            Problem::Truncated { line, offset, bytes } => format!(
                "truncated: line {line} (byte {offset}) is an incomplete record of {bytes} bytes: the file was cut"
            ),
            Problem::Malformed { line, reason } => {
                format!("edited: line {line} is not a ledger record ({reason})")
            }
            Problem::Edited { line, seq } => {
                format!("edited: record {seq} (line {line}) does not match its hash")
            }
            Problem::Deleted { line, expected, found } => format!(
                "deleted: line {line} holds record {found} where record {expected} should be; {} record(s) are missing",
                found - expected
            ),
            Problem::Reordered { line, expected, found } => format!(
                "reordered: line {line} holds record {found} where record {expected} should be"
            ),
            Problem::Forked { line, seq } => format!(
                "forked: record {seq} (line {line}) chains to another history than the record before it"
            ),
            Problem::BadCheckpointSignature { line, seq } => format!(
                "bad checkpoint signature: checkpoint {seq} (line {line}) is not signed by this node's key"
            ),
            Problem::CheckpointTotals { line, seq } => format!(
                "edited: checkpoint {seq} (line {line}) signs totals that the records before it do not add up to"
            ),
            Problem::TotalsOverflow { line, seq, what } => format!(
                "overflow: record {seq} (line {line}) carries the {what} total past 2^64 - 1, which no node writes: the ledger was written by hand"
            ),
            Problem::TimeWentBack { line, seq } => format!(
                "edited: record {seq} (line {line}) is dated before the record ahead of it, which no node writes"
            ),
            Problem::UnknownReported { line, seq, reported } => format!(
                "edited: record {seq} (line {line}) reports checkpoint {reported}, which is not a checkpoint earlier in this ledger"
            ),
            Problem::Foreign { reason } => format!("not this node's ledger: {reason}"),
        }
    }
}

/// What a ledger holds, up to its first problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read (genesis included).
    pub records: u64,
    pub checkpoints: u64,
    /// Sequence number and hash of the last good record.
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub totals: Totals,
    /// The last signed checkpoint's sequence number and hash.
    pub last_checkpoint: Option<(u64, [u8; 32])>,
    /// Every checkpoint's sequence number and hash, in order.
    pub checkpoint_hashes: Vec<(u64, [u8; 32])>,
    /// The genesis record's hash (which ledger this is) and time.
    pub genesis: Option<([u8; 32], DateTime<Utc>)>,
    /// The last checkpoint a license server acknowledged (`reported` records).
    pub reported: Option<(u64, [u8; 32])>,
    /// Bytes of the file up to the end of the last good record.
    pub valid_len: u64,
    /// The newest record time among the good records.
    pub last_at: Option<DateTime<Utc>>,
    /// The first record's sequence number, hash and time.
    pub first: Option<(u64, [u8; 32], DateTime<Utc>)>,
}

/// Where the checked records start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A whole ledger: its genesis record first.
    Genesis,
    /// A run of a ledger (an audit answer): its genesis record or one of its signed
    /// checkpoints first. A checkpoint's totals are where the count starts.
    GenesisOrCheckpoint,
}

/// Verify `bytes` as the ledger of node `node_id` with signing key `key`.
pub fn verify(bytes: &[u8], key: &PublicKey, node_id: &str) -> (Summary, Option<Problem>) {
    verify_from(bytes, key, node_id, Start::Genesis)
}

/// [`verify`] for records that start as `start` says. [`Summary::first`] names the
/// first record.
pub fn verify_from(
    bytes: &[u8],
    key: &PublicKey,
    node_id: &str,
    start: Start,
) -> (Summary, Option<Problem>) {
    let mut summary = Summary::default();
    let mut offset = 0usize;
    let mut line_no = 0u64;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            let problem = Problem::Truncated {
                line: line_no,
                offset: offset as u64,
                bytes: rest.len() as u64,
            };
            return (summary, Some(problem));
        };
        let text = match std::str::from_utf8(&rest[..end]) {
            Ok(t) => t,
            Err(_) => {
                let reason = "not UTF-8".to_string();
                return (
                    summary,
                    Some(Problem::Malformed {
                        line: line_no,
                        reason,
                    }),
                );
            }
        };
        let parsed = match record::parse(text) {
            Ok(p) => p,
            Err(reason) => {
                return (
                    summary,
                    Some(Problem::Malformed {
                        line: line_no,
                        reason,
                    }),
                )
            }
        };
        let body = &parsed.body;
        if parsed.actual_hash != parsed.written_hash {
            return (
                summary,
                Some(Problem::Edited {
                    line: line_no,
                    seq: body.seq,
                }),
            );
        }
        let expected = if summary.records == 0 {
            match (start, &body.entry) {
                (Start::GenesisOrCheckpoint, Entry::Checkpoint { .. }) => body.seq,
                _ => 0,
            }
        } else {
            summary.head_seq + 1
        };
        if body.seq > expected {
            // Missing here: moved further down (reordered), or gone (deleted)?
            let later = &rest[end + 1..];
            let moved = later
                .split(|&b| b == b'\n')
                .filter_map(|l| std::str::from_utf8(l).ok())
                .filter_map(|l| record::parse(l).ok())
                .any(|p| p.body.seq == expected);
            let problem = if moved {
                Problem::Reordered {
                    line: line_no,
                    expected,
                    found: body.seq,
                }
            } else {
                Problem::Deleted {
                    line: line_no,
                    expected,
                    found: body.seq,
                }
            };
            return (summary, Some(problem));
        }
        if body.seq < expected {
            let problem = Problem::Reordered {
                line: line_no,
                expected,
                found: body.seq,
            };
            return (summary, Some(problem));
        }
        if summary.records == 0 {
            summary.first = Some((body.seq, parsed.actual_hash, body.at));
            match &body.entry {
                Entry::Genesis { node_id: n } if n == node_id && body.prev == [0; 32] => {}
                Entry::Checkpoint { totals } if start == Start::GenesisOrCheckpoint => {
                    // The count continues from the totals this checkpoint signs (its
                    // signature is checked below).
                    summary.totals = *totals;
                }
                Entry::Genesis { node_id: n } => {
                    let reason = format!("it was started by node {n}, not {node_id}");
                    return (summary, Some(Problem::Foreign { reason }));
                }
                _ => {
                    let reason = match start {
                        Start::Genesis => "it does not start with a genesis record",
                        Start::GenesisOrCheckpoint => {
                            "it starts with neither a genesis record nor a checkpoint"
                        }
                    }
                    .to_string();
                    return (summary, Some(Problem::Foreign { reason }));
                }
            }
        } else if body.prev != summary.head_hash {
            return (
                summary,
                Some(Problem::Forked {
                    line: line_no,
                    seq: body.seq,
                }),
            );
        } else if matches!(body.entry, Entry::Genesis { .. }) {
            let reason = format!(
                "record {} (line {line_no}) is a second genesis record, the start of another ledger",
                body.seq
            );
            return (summary, Some(Problem::Foreign { reason }));
        } else if summary.last_at.is_some_and(|last| body.at < last) {
            let problem = Problem::TimeWentBack {
                line: line_no,
                seq: body.seq,
            };
            return (summary, Some(problem));
        }
        if let Entry::Reported { seq, hash } = &body.entry {
            // A run that starts at a checkpoint cannot check what came before it.
            let before_run = summary.genesis.is_none()
                && summary.first.is_some_and(|(first, _, _)| *seq < first);
            if !before_run && !summary.checkpoint_hashes.contains(&(*seq, *hash)) {
                let problem = Problem::UnknownReported {
                    line: line_no,
                    seq: body.seq,
                    reported: *seq,
                };
                return (summary, Some(problem));
            }
        }
        if let Entry::Checkpoint { totals } = &body.entry {
            if !parsed.signature_ok(key) {
                let problem = Problem::BadCheckpointSignature {
                    line: line_no,
                    seq: body.seq,
                };
                return (summary, Some(problem));
            }
            if *totals != summary.totals {
                let problem = Problem::CheckpointTotals {
                    line: line_no,
                    seq: body.seq,
                };
                return (summary, Some(problem));
            }
            summary.checkpoints += 1;
            summary.last_checkpoint = Some((body.seq, parsed.actual_hash));
            summary
                .checkpoint_hashes
                .push((body.seq, parsed.actual_hash));
        }
        match &body.entry {
            Entry::Genesis { .. } => summary.genesis = Some((parsed.actual_hash, body.at)),
            Entry::Reported { seq, hash } => summary.reported = Some((*seq, *hash)),
            _ => {}
        }
        if let Err(e) = summary.totals.add(&body.entry) {
            let problem = Problem::TotalsOverflow {
                line: line_no,
                seq: body.seq,
                what: e.what,
            };
            return (summary, Some(problem));
        }
        summary.records += 1;
        summary.last_at = Some(body.at);
        summary.head_seq = body.seq;
        summary.head_hash = parsed.actual_hash;
        offset += end + 1;
        summary.valid_len = offset as u64;
    }
    if summary.records == 0 {
        let reason = "it is empty".to_string();
        return (summary, Some(Problem::Foreign { reason }));
    }
    (summary, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signing::SecretKey;
    use record::RecordBody;

    /// A ledger written by hand: genesis, then requests with these prompt token counts.
    fn hand_written(key: &SecretKey, prompts: &[u64]) -> Vec<u8> {
        let mut out = String::new();
        let mut prev = [0; 32];
        let entries = std::iter::once(Entry::Genesis {
            node_id: "n".into(),
        })
        .chain(prompts.iter().enumerate().map(|(i, &p)| Entry::Request {
            request_id: format!("r{i}"),
            license_id: "l".into(),
            model_id: "m".into(),
            prompt_tokens: p,
            completion_tokens: 0,
            outcome: record::Outcome::Ok,
            client_key: "-".into(),
            prompt_sha256: None,
            filter_rule: None,
        }));
        for (seq, entry) in entries.enumerate() {
            let body = RecordBody {
                seq: seq as u64,
                prev,
                at: DateTime::<Utc>::UNIX_EPOCH,
                entry,
            };
            let (line, hash) = record::encode(&body, Some(key));
            out.push_str(&line);
            prev = hash;
        }
        out.into_bytes()
    }

    #[test]
    fn totals_that_overflow_are_a_problem_not_a_saturated_sum() {
        let key = SecretKey::generate();
        let ok = hand_written(&key, &[u64::MAX - 1, 1]);
        let (summary, problem) = verify(&ok, &key.public_key(), "n");
        assert_eq!(problem, None);
        assert_eq!(summary.totals.prompt_tokens, u64::MAX);

        let over = hand_written(&key, &[u64::MAX - 1, 1, 1]);
        let (summary, problem) = verify(&over, &key.public_key(), "n");
        assert_eq!(
            problem,
            Some(Problem::TotalsOverflow {
                line: 4,
                seq: 3,
                what: "prompt tokens"
            })
        );
        assert_eq!(problem.unwrap().kind(), "overflow");
        // What verified before the overflowing record stands.
        assert_eq!(summary.records, 3);
        assert_eq!(summary.totals.prompt_tokens, u64::MAX);
    }
}
