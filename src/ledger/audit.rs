//! Audit answers: the run of a node's usage ledger that covers an audit period, under a
//! header signed by the node key (docs/FORMATS.md, "Audit answer"). A node uploads one
//! when a renewal response asks for it; an air-gapped node writes one with `leasehold
//! audit export` and the vendor imports it. The records are the ledger's lines as they
//! stand in the file (never prompts: a ledger holds none), so the license server checks
//! them exactly as `audit verify` checks a whole ledger, from the run's first record.
//!
//! The run starts at the last signed checkpoint dated before the period (or the genesis
//! record) and ends at a signed checkpoint dated at or after the period's end: every
//! record dated in the period lies inside it, and its totals are signed at both ends.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::{self, Entry};
use super::verify::{self, Problem, Start, Summary};
use crate::crypto::sha256;
use crate::crypto::signing::PublicKey;
use crate::format::encoding::hex_array;
use crate::format::time::{rfc3339, whole_seconds};
use crate::format::{Body, DocumentKind, Envelope};
use crate::node::NodeIdentity;

/// Largest audit answer a license server accepts (a quarter of a busy node's ledger is
/// well below it; a larger one is split by asking for shorter periods).
pub const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// The signed header of an audit answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnswerBody {
    pub version: u32,
    pub node_id: String,
    /// The audit answered; `null` in an export made without `--audit` (the server takes
    /// the open audit of the node's organization whose period the run covers).
    pub audit_id: Option<String>,
    /// The period the run covers: records dated in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The node's clock when it signed.
    pub made_at: DateTime<Utc>,
    /// Sequence numbers of the run's first and last records.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Length and SHA-256 of the records that follow the header.
    pub records_bytes: u64,
    #[serde(with = "hex_array")]
    pub records_sha256: [u8; 32],
}

impl Body for AuditAnswerBody {
    const KIND: DocumentKind = DocumentKind::AuditAnswer;
    const VERSION: u32 = 1;
}

/// Why a node cannot answer (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("the period ends after it starts: from {from} to {to}")]
    EmptyPeriod { from: String, to: String },
    #[error("the usage ledger has no signed checkpoint dated at or after {to} yet{}; a serving node signs one every minute and at each renewal, so answer after the period has ended", .last.as_ref().map(|l| format!(" (its last is dated {l})")).unwrap_or_default())]
    NotYet { to: String, last: Option<String> },
    #[error("record {seq} of the usage ledger is not the signed checkpoint the renewal reported")]
    NotACheckpoint { seq: u64 },
    #[error("the usage ledger is damaged ({0}); check it with `leasehold audit verify`")]
    Damaged(String),
    #[error("the answer would hold {bytes} bytes of records, more than the {MAX_ANSWER_BYTES} a license server accepts; ask the vendor for a shorter period")]
    TooLarge { bytes: u64 },
}

/// Where an answer's run starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At the first checkpoint dated at or after the period's end that a license
    /// server acknowledged (a `reported` record names it), starting at the last
    /// acknowledged checkpoint dated before the period (or the genesis record): both
    /// ends are then checkpoints the server holds.
    Acknowledged,
    /// Like [`End::Acknowledged`], ending at this checkpoint (one a checkpoint report
    /// just gave the server).
    ReportedCheckpoint(u64),
    /// At the first checkpoint dated at or after the period's end, starting at the
    /// genesis record (an export: an air-gapped node's renewals report no checkpoints).
    FromGenesis,
}

/// Which bytes of `ledger` answer for `[from, to)`: from the last signed checkpoint dated
/// before `from` (or the genesis record: when there is none, or for
/// [`End::FromGenesis`]) to the checkpoint `end` names.
pub fn select(
    ledger: &[u8],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    end: End,
) -> Result<Range<usize>, BuildError> {
    let range = select_from(ledger, from, to, end)?;
    Ok(range.start as usize..range.end as usize)
}

/// [`select`] over a reader, a line at a time (a ledger can be far larger than memory).
pub fn select_from(
    mut ledger: impl std::io::BufRead,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    end: End,
) -> Result<Range<u64>, BuildError> {
    if to <= from {
        return Err(BuildError::EmptyPeriod {
            from: rfc3339(from),
            to: rfc3339(to),
        });
    }
    // Checkpoints seen: seq → (start offset, end offset, time).
    let mut checkpoints: std::collections::HashMap<u64, (u64, u64, DateTime<Utc>)> =
        Default::default();
    let mut start = (0u64, 0u64); // (offset, checkpoint seq): the genesis record at first
    let mut offset = 0u64;
    let mut last_checkpoint = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = ledger
            .read_until(b'\n', &mut line)
            .map_err(|e| BuildError::Damaged(format!("cannot read it: {e}")))?;
        if read == 0 || line.last() != Some(&b'\n') {
            break; // the end, or a record being written: not part of any answer
        }
        let here = offset;
        offset += read as u64;
        let parsed = std::str::from_utf8(&line[..line.len() - 1])
            .map_err(|_| "a line is not UTF-8".to_string())
            .and_then(record::parse)
            .map_err(BuildError::Damaged)?;
        let body = &parsed.body;
        match (&body.entry, end) {
            (Entry::Checkpoint { .. }, _) => {
                last_checkpoint = Some(body.at);
                checkpoints.insert(body.seq, (here, offset, body.at));
                let ends = match end {
                    End::FromGenesis => body.at >= to,
                    End::ReportedCheckpoint(seq) => body.seq == seq,
                    End::Acknowledged => false,
                };
                if ends && body.at >= to {
                    return Ok(start.0..offset);
                }
                if ends {
                    break;
                }
            }
            (_, End::ReportedCheckpoint(seq)) if body.seq == seq => {
                return Err(BuildError::NotACheckpoint { seq: body.seq });
            }
            (Entry::Reported { seq, .. }, End::Acknowledged | End::ReportedCheckpoint(_)) => {
                let Some(&(begins, ends, at)) = checkpoints.get(seq) else {
                    continue;
                };
                if at < from && *seq > start.1 {
                    start = (begins, *seq);
                }
                if end == End::Acknowledged && at >= to {
                    return Ok(start.0..ends);
                }
            }
            _ => {}
        }
    }
    Err(BuildError::NotYet {
        to: rfc3339(to),
        last: last_checkpoint.map(rfc3339),
    })
}

/// Write the answer for `[from, to)` from this node's ledger bytes (see [`select`]).
pub fn build(
    identity: &NodeIdentity,
    ledger: &[u8],
    audit_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    end: End,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, BuildError> {
    let range = select(ledger, from, to, end)?;
    sign_run(identity, &ledger[range], audit_id, from, to, now)
}

/// [`build`] from the ledger file at `path`, reading only the run into memory.
pub fn build_from_file(
    identity: &NodeIdentity,
    path: &std::path::Path,
    audit_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    end: End,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, BuildError> {
    use std::io::{Read, Seek, SeekFrom};
    let unreadable =
        |e: std::io::Error| BuildError::Damaged(format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let range = select_from(std::io::BufReader::new(&mut file), from, to, end)?;
    if range.end - range.start > MAX_ANSWER_BYTES {
        return Err(BuildError::TooLarge {
            bytes: range.end - range.start,
        });
    }
    let mut records = vec![0u8; (range.end - range.start) as usize];
    file.seek(SeekFrom::Start(range.start))
        .and_then(|_| file.read_exact(&mut records))
        .map_err(unreadable)?;
    sign_run(identity, &records, audit_id, from, to, now)
}

/// Verify a run of this node's ledger and put the signed header before it.
fn sign_run(
    identity: &NodeIdentity,
    records: &[u8],
    audit_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, BuildError> {
    let node_id = identity.public().node_id();
    let key = identity.public().signing_key;
    let (summary, problem) =
        verify::verify_from(records, &key, &node_id, Start::GenesisOrCheckpoint);
    if let Some(problem) = problem {
        return Err(BuildError::Damaged(problem.explain()));
    }
    let body = AuditAnswerBody {
        version: AuditAnswerBody::VERSION,
        node_id,
        audit_id: audit_id.map(str::to_string),
        from,
        to,
        made_at: whole_seconds(now),
        first_seq: summary.first.map_or(0, |f| f.0),
        last_seq: summary.head_seq,
        records_bytes: records.len() as u64,
        records_sha256: sha256(&[records]),
    };
    let mut out = Envelope::sign(&body, identity.signer(), vec![])
        .render()
        .into_bytes();
    out.extend_from_slice(records);
    Ok(out)
}

/// Why an audit answer does not check out (docs/FORMATS.md, "Verifying an audit answer").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("not an audit answer: {0}")]
    Malformed(String),
    #[error("the answer is {0} bytes, more than the {MAX_ANSWER_BYTES} accepted")]
    TooLarge(u64),
    #[error("the answer's header is not signed by the node key it names")]
    WrongSigner,
    #[error("the records are not the ones the signed header names (length or SHA-256 differs): the answer was cut or altered after it was signed")]
    RecordsAltered,
    #[error("the records do not verify: {}", .0.explain())]
    Damaged(Problem),
    #[error("the records run from {found_first} to {found_last}, not {first} to {last} as the header says")]
    WrongRun {
        first: u64,
        last: u64,
        found_first: u64,
        found_last: u64,
    },
    #[error("the records do not end with a signed checkpoint")]
    NoFinalCheckpoint,
}

impl AnswerError {
    /// The failure's name in docs/FORMATS.md.
    pub fn kind(&self) -> &'static str {
        match self {
            AnswerError::Malformed(_) => "malformed",
            AnswerError::TooLarge(_) => "too-large",
            AnswerError::WrongSigner => "wrong-signer",
            AnswerError::RecordsAltered => "records-altered",
            AnswerError::Damaged(_) => "damaged",
            AnswerError::WrongRun { .. } => "wrong-run",
            AnswerError::NoFinalCheckpoint => "no-final-checkpoint",
        }
    }

    /// Whether the answer was altered or its ledger tampered with, as opposed to not
    /// being an answer at all (a finding against the node, not just a refusal).
    pub fn is_tampering(&self) -> bool {
        !matches!(self, AnswerError::Malformed(_) | AnswerError::TooLarge(_))
    }
}

/// An answer split into its header and records, not yet trusted.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    pub envelope: Envelope,
    pub body: AuditAnswerBody,
    pub records: &'a [u8],
}

/// Split and parse an answer: the header's canonical text (which ends with the line
/// `}`) followed by the records.
pub fn parse(bytes: &[u8]) -> Result<Unverified<'_>, AnswerError> {
    if bytes.len() as u64 > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(bytes.len() as u64));
    }
    let end = bytes
        .windows(3)
        .position(|w| w == b"\n}\n")
        .map(|i| i + 3)
        .ok_or_else(|| AnswerError::Malformed("no signed header".into()))?;
    let (envelope, body) =
        crate::protocol::parse_node_signed::<AuditAnswerBody>(&bytes[..end], "audit answer")
            .map_err(|e| AnswerError::Malformed(e.to_string()))?;
    Ok(Unverified {
        envelope,
        body,
        records: &bytes[end..],
    })
}

/// A verified answer: what its records hold.
#[derive(Debug, Clone)]
pub struct Verified {
    pub body: AuditAnswerBody,
    pub summary: Summary,
    /// Every checkpoint of the run: sequence number → (hash, time).
    pub checkpoints: std::collections::HashMap<u64, ([u8; 32], DateTime<Utc>)>,
    /// Time of the first record and of the final checkpoint.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

impl Verified {
    /// Whether the run holds every record dated in `[from, to)`: it starts with the
    /// ledger's genesis record or a checkpoint dated before `from`, and ends with a
    /// checkpoint dated at or after `to`. `Err` says what is missing.
    pub fn covers(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), String> {
        if self.summary.genesis.is_none() && self.first_at >= from {
            return Err(format!(
                "it starts with a checkpoint dated {}, not before the period's start {}",
                rfc3339(self.first_at),
                rfc3339(from)
            ));
        }
        if self.last_at < to {
            return Err(format!(
                "it ends with a checkpoint dated {}, before the period's end {}",
                rfc3339(self.last_at),
                rfc3339(to)
            ));
        }
        Ok(())
    }
}

/// Check an answer against the node's enrolled signing key.
pub fn verify(answer: &Unverified, key: &PublicKey) -> Result<Verified, AnswerError> {
    let enrolled = key.to_bytes();
    if answer.envelope.signer != enrolled || answer.body.node_id != key.key_id() {
        return Err(AnswerError::WrongSigner);
    }
    answer
        .envelope
        .verify_signature()
        .map_err(|_| AnswerError::WrongSigner)?;
    let body = &answer.body;
    if body.records_bytes != answer.records.len() as u64
        || body.records_sha256 != sha256(&[answer.records])
    {
        return Err(AnswerError::RecordsAltered);
    }
    let (summary, problem) = verify::verify_from(
        answer.records,
        key,
        &body.node_id,
        Start::GenesisOrCheckpoint,
    );
    if let Some(problem) = problem {
        return Err(AnswerError::Damaged(problem));
    }
    let (first, _, first_at) = summary.first.expect("a verified run has a first record");
    if first != body.first_seq || summary.head_seq != body.last_seq {
        return Err(AnswerError::WrongRun {
            first: body.first_seq,
            last: body.last_seq,
            found_first: first,
            found_last: summary.head_seq,
        });
    }
    if summary.last_checkpoint.map(|c| c.0) != Some(summary.head_seq) {
        return Err(AnswerError::NoFinalCheckpoint);
    }
    let last_at = summary.last_at.unwrap_or(first_at);
    let checkpoints = record::each(answer.records)
        .flatten()
        .filter(|p| matches!(p.body.entry, Entry::Checkpoint { .. }))
        .map(|p| (p.body.seq, (p.actual_hash, p.body.at)))
        .collect();
    Ok(Verified {
        body: body.clone(),
        summary,
        checkpoints,
        first_at,
        last_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::{Outcome, RecordBody, Totals};
    use chrono::Duration;

    /// A ledger written by hand for `identity`: genesis at t0, then one record a minute
    /// (`r` a request, `c` a checkpoint, `a` a `reported` naming the previous checkpoint).
    fn ledger(identity: &NodeIdentity, t0: DateTime<Utc>, pattern: &str) -> Vec<u8> {
        let mut out = String::new();
        let (mut prev, mut totals) = ([0u8; 32], Totals::default());
        let mut last_checkpoint = None;
        let node_id = identity.public().node_id();
        let entries = std::iter::once('g').chain(pattern.chars());
        for (seq, kind) in entries.enumerate() {
            let entry = match kind {
                'g' => Entry::Genesis {
                    node_id: node_id.clone(),
                },
                'r' => Entry::Request {
                    request_id: format!("r{seq}"),
                    license_id: "l".into(),
                    model_id: "m".into(),
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    outcome: Outcome::Ok,
                    client_key: "-".into(),
                    prompt_sha256: None,
                    filter_rule: None,
                },
                'c' => Entry::Checkpoint { totals },
                'a' => {
                    let (seq, hash) = last_checkpoint.unwrap();
                    Entry::Reported { seq, hash }
                }
                other => panic!("{other}"),
            };
            totals.add(&entry).unwrap();
            let body = RecordBody {
                seq: seq as u64,
                prev,
                at: t0 + Duration::minutes(seq as i64),
                entry,
            };
            let (line, hash) = record::encode(&body, Some(identity.signer()));
            if kind == 'c' {
                last_checkpoint = Some((seq as u64, hash));
            }
            out.push_str(&line);
            prev = hash;
        }
        out.into_bytes()
    }

    fn node() -> (tempfile::TempDir, NodeIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        (dir, identity)
    }

    #[test]
    fn a_run_starts_at_the_last_checkpoint_before_the_period_and_verifies() {
        let (_dir, identity) = node();
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20000);
        // seq: 1 r, 2 c, 3 a, 4 r, 5 c, 6 r, 7 r, 8 c, 9 r, 10 c
        let bytes = ledger(&identity, t0, "rcarcrrcrc");
        let at = |seq: i64| t0 + Duration::minutes(seq);
        // The period holds records 6 and 7: from just after checkpoint 5 to checkpoint 8.
        // Only checkpoint 2 was acknowledged (record 3), so the run starts there.
        let (from, to) = (at(5) + Duration::seconds(1), at(8));
        let answer = build(
            &identity,
            &bytes,
            Some("a"),
            from,
            to,
            End::ReportedCheckpoint(10),
            at(11),
        )
        .unwrap();
        let parsed = parse(&answer).unwrap();
        assert_eq!((parsed.body.first_seq, parsed.body.last_seq), (2, 10));
        let run = verify(&parsed, &identity.public().signing_key).unwrap();
        assert!(run.summary.genesis.is_none());
        run.covers(from, to).unwrap();
        // It does not cover a period that starts before its first checkpoint.
        assert!(run.covers(at(1), to).is_err());
        // Acknowledged: the first checkpoint after the period that a `reported` record
        // names; none is yet (only checkpoint 2 is).
        let acked = build(&identity, &bytes, None, from, to, End::Acknowledged, at(11));
        assert!(matches!(acked, Err(BuildError::NotYet { .. })), "{acked:?}");
        let acked = build(
            &identity,
            &bytes,
            None,
            at(0) + Duration::seconds(1),
            at(2),
            End::Acknowledged,
            at(11),
        )
        .unwrap();
        assert_eq!(parse(&acked).unwrap().body.last_seq, 2);
        // An export starts at genesis, and ends at the first checkpoint at or after `to`.
        let export = build(&identity, &bytes, None, from, to, End::FromGenesis, at(11)).unwrap();
        let parsed = parse(&export).unwrap();
        assert_eq!((parsed.body.first_seq, parsed.body.last_seq), (0, 8));
        let run = verify(&parsed, &identity.public().signing_key).unwrap();
        run.covers(at(0), to).unwrap();
        // A run that starts at checkpoint 2 keeps the `reported` record naming it.
        let early = build(
            &identity,
            &bytes,
            None,
            at(3),
            at(5),
            End::ReportedCheckpoint(5),
            at(11),
        )
        .unwrap();
        let parsed = parse(&early).unwrap();
        assert_eq!(parsed.body.first_seq, 2);
        verify(&parsed, &identity.public().signing_key).unwrap();
    }

    #[test]
    fn a_node_says_why_it_cannot_answer_yet() {
        let (_dir, identity) = node();
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20000);
        let bytes = ledger(&identity, t0, "rcr");
        let at = |seq: i64| t0 + Duration::minutes(seq);
        let not_yet = build(
            &identity,
            &bytes,
            None,
            at(0),
            at(5),
            End::FromGenesis,
            at(6),
        );
        assert!(
            matches!(not_yet, Err(BuildError::NotYet { .. })),
            "{not_yet:?}"
        );
        let not_yet = build(
            &identity,
            &bytes,
            None,
            at(0),
            at(5),
            End::ReportedCheckpoint(2),
            at(6),
        );
        assert!(
            matches!(not_yet, Err(BuildError::NotYet { .. })),
            "{not_yet:?}"
        );
        let wrong = build(
            &identity,
            &bytes,
            None,
            at(0),
            at(1),
            End::ReportedCheckpoint(3),
            at(6),
        );
        assert_eq!(wrong, Err(BuildError::NotACheckpoint { seq: 3 }));
        let empty = build(
            &identity,
            &bytes,
            None,
            at(2),
            at(1),
            End::FromGenesis,
            at(6),
        );
        assert!(matches!(empty, Err(BuildError::EmptyPeriod { .. })));
    }

    #[test]
    fn a_run_that_starts_with_a_request_or_is_edited_is_refused() {
        let (_dir, identity) = node();
        let key = identity.public().signing_key;
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20000);
        let bytes = ledger(&identity, t0, "rcrrc");
        let at = |seq: i64| t0 + Duration::minutes(seq);
        let answer = build(
            &identity,
            &bytes,
            None,
            at(3),
            at(5),
            End::ReportedCheckpoint(5),
            at(6),
        )
        .unwrap();
        let good = parse(&answer).unwrap();
        // The records re-signed under a header that names them, minus the checkpoint
        // they start with: the run starts with a request record.
        let header_len = answer.len() - good.records.len();
        let first_line = good.records.iter().position(|&b| b == b'\n').unwrap() + 1;
        let rest = &good.records[first_line..];
        let body = AuditAnswerBody {
            first_seq: 3,
            records_bytes: rest.len() as u64,
            records_sha256: sha256(&[rest]),
            ..good.body.clone()
        };
        let mut forged = Envelope::sign(&body, identity.signer(), vec![])
            .render()
            .into_bytes();
        forged.extend_from_slice(rest);
        let err = verify(&parse(&forged).unwrap(), &key).unwrap_err();
        assert_eq!(err.kind(), "damaged");
        assert!(err.is_tampering());
        // One record's token count edited, the header re-signed over it.
        let edited = String::from_utf8(good.records.to_vec()).unwrap().replacen(
            "\"prompt_tokens\":3",
            "\"prompt_tokens\":2",
            1,
        );
        let body = AuditAnswerBody {
            records_sha256: sha256(&[edited.as_bytes()]),
            ..good.body.clone()
        };
        let mut forged = Envelope::sign(&body, identity.signer(), vec![])
            .render()
            .into_bytes();
        forged.extend_from_slice(edited.as_bytes());
        let err = verify(&parse(&forged).unwrap(), &key).unwrap_err();
        assert!(
            matches!(err, AnswerError::Damaged(Problem::Edited { .. })),
            "{err:?}"
        );
        assert!(answer.len() > header_len);
    }
}
