//! Quarterly audits: the vendor asks an organization's nodes for their usage-ledger
//! records of a period (`admin audit request`, or the portal). Each node then finds the
//! request in its next renewal response ([`call_for`]) and uploads an audit answer
//! (`POST /v1/audits/answer`; `admin audit import` for a file from `leasehold audit
//! export`). [`Service::answer_audit`] verifies it with the node's enrolled key
//! (`ledger::audit`), then against what this server already holds for the node: both
//! ends of the run are checkpoints the node reported before the period began and after
//! it ended (by this server's clock), every checkpoint it reported that lies in the run
//! is on its chain with the same hash and not dated ahead of its arrival, and no other
//! ledger reported during the period (docs/FORMATS.md, "Audit answer"). An answer that
//! fails because of what the node signed is a finding, kept with the audit; one that
//! merely does not cover the period is refused with the reason. The report is built
//! from the stored records by the same tally as `leasehold audit report`.
//!
//! A node asked at `max_renewals` renewals without answering is flagged *unanswered*.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::accounts::check_name;
use super::registry::{int, new_id, opt_time, time, ts};
use super::store::sql::{Row, Sql, Value};
use super::store::StoreError;
use super::{ApiError, Service};
use crate::crypto::signing::PublicKey;
use crate::format::time::rfc3339;
use crate::ledger::audit::{self as answer, AnswerError, AuditAnswerBody};
use crate::ledger::report::{self, Period, ReportRow, ReportTotals};
use crate::node::clock;
use crate::protocol::AuditCall;

/// Audit answers a replica reads at once; more wait for a node's next renewal (HTTP 429).
pub const ANSWERS_AT_ONCE: usize = 4;

/// How long a replica waits for an answer's body before giving up its place.
pub const ANSWER_READ_SECONDS: u64 = 300;

/// Renewals that carry an audit request before an unanswering node is flagged.
pub const DEFAULT_MAX_RENEWALS: u32 = 3;

/// `POST /admin/audits`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    pub org: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Renewals before a node that has not answered is flagged (default 3).
    #[serde(default)]
    pub max_renewals: Option<u32>,
    #[serde(default)]
    pub note: String,
}

/// How a node answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Uploaded by the node after a renewal.
    Upload,
    /// Imported by the vendor from a file (`admin audit import`).
    Import,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Upload => "upload",
            Via::Import => "import",
        }
    }
}

/// One node's part of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNode {
    pub node_id: String,
    /// `waiting`, `answered`, or `unanswered` (asked at `max_renewals` renewals or more
    /// without an answer: flagged).
    pub status: String,
    /// Renewals that carried the request.
    pub asked: u64,
    pub first_asked_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub via: Option<Via>,
    /// The answered run's first and last record.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Answers refused so far, and the last reason.
    pub refusals: u64,
    pub last_refusal: Option<String>,
    /// What the node signed that does not hold (tampered, truncated, skipped
    /// checkpoints, another ledger), kept even after a later good answer.
    pub findings: Vec<String>,
    /// The answered period's totals.
    pub totals: Option<ReportTotals>,
}

/// An audit and where each node stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub id: String,
    pub org: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub max_renewals: u32,
    pub note: String,
    pub nodes: Vec<AuditNode>,
}

impl Audit {
    /// `complete` when every node answered, else `open`.
    pub fn status(&self) -> &'static str {
        if self.nodes.iter().all(|n| n.answered_at.is_some()) {
            "complete"
        } else {
            "open"
        }
    }

    /// Whether anything about it is flagged (findings, or nodes that did not answer).
    pub fn flagged(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| !n.findings.is_empty() || n.status == "unanswered")
    }
}

/// `GET /admin/audits`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    pub audits: Vec<Audit>,
}

/// An accepted answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerReceipt {
    pub audit_id: String,
    pub node_id: String,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub totals: ReportTotals,
    /// Findings kept with the accepted answer (ledger findings of the period, an
    /// answer no checkpoint of the node ties to its ledger).
    #[serde(default)]
    pub findings: Vec<String>,
}

/// One node's report for an audit: the rows of `leasehold audit report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub audit_id: String,
    pub org: String,
    pub node_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub by: Period,
    pub rows: Vec<ReportRow>,
    pub totals: ReportTotals,
}

const AUDIT_COLUMNS: &str =
    "id, org, period_from, period_to, requested_by, requested_at, max_renewals, note";
const NODE_COLUMNS: &str = "node_id, asked, first_asked_at, answered_at, via, first_seq, last_seq, refusals, last_refusal, findings, totals";

fn audit_row(row: &Row) -> Result<Audit, StoreError> {
    Ok(Audit {
        id: row.text(0)?,
        org: row.text(1)?,
        from: time(row.int(2)?),
        to: time(row.int(3)?),
        requested_by: row.text(4)?,
        requested_at: time(row.int(5)?),
        max_renewals: u32::try_from(row.int(6)?).unwrap_or(u32::MAX),
        note: row.text(7)?,
        nodes: Vec::new(),
    })
}

fn node_row(row: &Row, audit: &Audit) -> Result<AuditNode, StoreError> {
    let asked = row.int(1)?.max(0) as u64;
    let answered_at = opt_time(row.opt_int(3)?);
    // The period's totals, computed once when the answer was accepted.
    let totals = row
        .opt_text(10)?
        .map(|t| serde_json::from_str::<ReportTotals>(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("audit totals: {e}")))?;
    let status = match answered_at {
        Some(_) => "answered",
        None if asked >= u64::from(audit.max_renewals) => "unanswered",
        None => "waiting",
    };
    Ok(AuditNode {
        node_id: row.text(0)?,
        status: status.to_string(),
        asked,
        first_asked_at: opt_time(row.opt_int(2)?),
        answered_at,
        via: row.opt_text(4)?.map(|v| {
            if v == "import" {
                Via::Import
            } else {
                Via::Upload
            }
        }),
        first_seq: row.opt_int(5)?.map(|v| v.max(0) as u64),
        last_seq: row.opt_int(6)?.map(|v| v.max(0) as u64),
        refusals: row.int(7)?.max(0) as u64,
        last_refusal: row.opt_text(8)?,
        findings: row
            .opt_text(9)?
            .map(|f| f.split('\n').map(String::from).collect())
            .unwrap_or_default(),
        totals,
    })
}

fn load(sql: &mut dyn Sql, id: &str) -> Result<Option<Audit>, StoreError> {
    let Some(row) = sql.query_opt(
        &format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE id = $1"),
        &[id.into()],
    )?
    else {
        return Ok(None);
    };
    let mut audit = audit_row(&row)?;
    let rows = sql.query(
        &format!("SELECT {NODE_COLUMNS} FROM audit_nodes WHERE audit_id = $1 ORDER BY node_id"),
        &[id.into()],
    )?;
    audit.nodes = rows
        .iter()
        .map(|r| node_row(r, &audit))
        .collect::<Result<_, _>>()?;
    Ok(Some(audit))
}

/// The audit a renewing node should answer, if any (its oldest unanswered one whose
/// period has ended), counted as asked once more. Called in the renewal's transaction
/// for a renewed license.
pub fn call_for(
    sql: &mut dyn Sql,
    node_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<AuditCall>, StoreError> {
    let Some(row) = sql.query_opt(
        "SELECT a.id, a.period_from, a.period_to FROM audit_nodes n JOIN audits a ON a.id = n.audit_id
         WHERE n.node_id = $1 AND n.answered_at IS NULL AND a.period_to <= $2
         ORDER BY a.requested_at, a.id LIMIT 1",
        &[node_id.into(), ts(now)],
    )?
    else {
        return Ok(None);
    };
    let call = AuditCall {
        audit_id: row.text(0)?,
        from: time(row.int(1)?),
        to: time(row.int(2)?),
    };
    sql.execute(
        "UPDATE audit_nodes SET asked = asked + 1, first_asked_at = COALESCE(first_asked_at, $1)
         WHERE audit_id = $2 AND node_id = $3",
        &[ts(now), (&call.audit_id).into(), node_id.into()],
    )?;
    Ok(Some(call))
}

/// Why an answer was not accepted, and whether it is held against the node.
enum Refusal {
    /// Not an answer by this node at all: refused, nothing recorded.
    Foreign(ApiError),
    /// The node's answer does not do (does not cover the period, names no checkpoint
    /// this server holds): refused and recorded, not a finding.
    Incomplete(String),
    /// What the node signed does not hold: refused and kept as a finding.
    Finding(String),
}

/// What became of an answer: accepted, or refused (with the audit and node the refusal
/// was recorded against, when it was).
type Answered = Result<AnswerReceipt, (Option<(String, String)>, Refusal)>;

/// An answer refused without recording anything.
fn foreign(e: ApiError) -> Result<Answered, StoreError> {
    Ok(Err((None, Refusal::Foreign(e))))
}

/// How far a node's clock may be ahead of this server's when it signs (the request
/// window): a checkpoint dated later than that after the server received it was dated
/// ahead on purpose.
const CLOCK_SLACK_SECONDS: i64 = super::REQUEST_WINDOW_SECONDS;

/// The checks against what this server holds for the node (after the answer verified
/// with the node key), at `now`: the findings to keep with an accepted answer, or the
/// refusal.
fn check_against_held(
    sql: &mut dyn Sql,
    node_id: &str,
    audit: &Audit,
    run: &answer::Verified,
    now: DateTime<Utc>,
) -> Result<Result<Vec<String>, Refusal>, StoreError> {
    let incomplete = |why: String| Ok(Err(Refusal::Incomplete(why)));
    if now < audit.to {
        return incomplete(format!(
            "the audit's period ends at {}; answer after that",
            rfc3339(audit.to)
        ));
    }
    if let Err(missing) = run.covers(audit.from, audit.to) {
        return incomplete(format!(
            "the answer does not cover the audit's period: {missing}"
        ));
    }
    // Each checkpoint the node reported, with when this server first received it.
    let rows = sql.query(
        "SELECT ledger_id, ledger_seq, ledger_hash, MIN(received_at) FROM checkpoints
         WHERE node_id = $1 AND ledger_id IS NOT NULL GROUP BY ledger_id, ledger_seq, ledger_hash",
        &[node_id.into()],
    )?;
    let mut held = Vec::with_capacity(rows.len());
    for row in &rows {
        held.push((
            row.text(0)?,
            row.int(1)?.max(0) as u64,
            row.text(2)?,
            time(row.int(3)?),
        ));
    }
    let mut kept = Vec::new();
    // The ledger findings this server made since the period began (a replaced ledger
    // reported after it, a rollback): kept with the answer.
    let findings = sql.query(
        "SELECT received_at, finding FROM checkpoints
         WHERE node_id = $1 AND finding IS NOT NULL AND received_at >= $2 ORDER BY id",
        &[node_id.into(), ts(audit.from)],
    )?;
    for row in &findings {
        kept.push(format!(
            "ledger-finding: at {} this server found {}",
            rfc3339(time(row.int(0)?)),
            row.text(1)?
        ));
    }
    if held.is_empty() {
        kept.push(
            "unanchored: this server holds no checkpoint of the node's ledger (an air-gapped node's renewals report none), so the answer rests on the node key alone".into(),
        );
        return Ok(Ok(kept));
    }
    let run_has = |seq: u64, hash: &str| {
        run.checkpoints
            .get(&seq)
            .is_some_and(|(h, _)| hex::encode(h) == hash)
    };
    // Which ledger the run belongs to: its genesis, or a checkpoint the node reported.
    let ledger_id = match run.summary.genesis {
        Some((hash, _)) => hex::encode(hash),
        None => match held.iter().find(|(_, seq, hash, _)| run_has(*seq, hash)) {
            Some((id, ..)) => id.clone(),
            None => {
                return incomplete(
                    "none of the answer's checkpoints is one this node reported, so it cannot be tied to the ledger this server knows; renew the node (each renewal reports a checkpoint) and answer again".into(),
                )
            }
        },
    };
    let (first, last) = (run.body.first_seq, run.body.last_seq);
    for (id, seq, hash, received) in &held {
        if *id == ledger_id && (first..=last).contains(seq) {
            let Some((_, at)) = run
                .checkpoints
                .get(seq)
                .filter(|(h, _)| hex::encode(h) == *hash)
            else {
                return Ok(Err(Refusal::Finding(format!(
                    "skips-checkpoint: checkpoint {seq}, which the node reported at {}, is not on the answer's chain: the records were rewritten",
                    rfc3339(*received)
                ))));
            };
            if *at > *received + chrono::Duration::seconds(CLOCK_SLACK_SECONDS) {
                return Ok(Err(Refusal::Finding(format!(
                    "misdated: checkpoint {seq} is dated {}, after this server received it at {}: the node's records were dated ahead",
                    rfc3339(*at),
                    rfc3339(*received)
                ))));
            }
        }
        if *id != ledger_id && *received >= audit.from && *received < audit.to {
            return Ok(Err(Refusal::Finding(format!(
                "replaced: during the period the node reported another ledger ({}, checkpoint {seq} at {}) than the one answered",
                &id[..id.len().min(12)],
                rfc3339(*received)
            ))));
        }
    }
    let ours = || held.iter().filter(|(id, ..)| *id == ledger_id);
    // Both ends on this server's clock: the run reaches a checkpoint the node reported
    // after the period ended, and starts at its genesis or at one it reported before
    // the period began (so records written meanwhile lie between them).
    if !ours().any(|(_, seq, hash, received)| *received >= audit.to && run_has(*seq, hash)) {
        return incomplete(format!(
            "the answer does not reach a checkpoint this node reported after the period ended ({}): renew the node, or wait for its next checkpoint report, and answer again",
            rfc3339(audit.to)
        ));
    }
    if run.summary.genesis.is_none() {
        let (first, hash, _) = run
            .summary
            .first
            .expect("a verified run has a first record");
        let window = chrono::Duration::seconds(CLOCK_SLACK_SECONDS);
        let reported_before = ours().any(|(_, seq, h, received)| {
            *seq == first && *h == hex::encode(hash) && *received < audit.from + window
        });
        if !reported_before {
            return incomplete(format!(
                "the answer starts at checkpoint {first}, which this node did not report before the period began ({}); answer from a checkpoint it did report then (a node does), or from the genesis record",
                rfc3339(audit.from)
            ));
        }
    }
    Ok(Ok(kept))
}

fn record_refusal(
    sql: &mut dyn Sql,
    audit_id: &str,
    node_id: &str,
    reason: &str,
    finding: bool,
) -> Result<(), StoreError> {
    let reason = reason.replace(['\n', '\r'], " ");
    sql.execute(
        "UPDATE audit_nodes SET refusals = refusals + 1, last_refusal = $1 WHERE audit_id = $2 AND node_id = $3",
        &[(&reason).into(), audit_id.into(), node_id.into()],
    )?;
    if finding {
        add_finding(sql, audit_id, node_id, &reason)?;
    }
    Ok(())
}

/// Append a finding (one line) to a node's part of an audit, in one statement.
fn add_finding(
    sql: &mut dyn Sql,
    audit_id: &str,
    node_id: &str,
    finding: &str,
) -> Result<(), StoreError> {
    let finding = finding.replace(['\n', '\r'], " ");
    sql.execute(
        "UPDATE audit_nodes SET findings = CASE WHEN findings IS NULL THEN $1 ELSE findings || $2 || $1 END
         WHERE audit_id = $3 AND node_id = $4",
        &[(&finding).into(), "\n".into(), audit_id.into(), node_id.into()],
    )?;
    Ok(())
}

/// The node's enrolled signing key, if it enrolled here.
fn node_key(sql: &mut dyn Sql, node_id: &str) -> Result<Option<PublicKey>, StoreError> {
    let Some(row) = sql.query_opt(
        "SELECT node_key FROM enrollments WHERE node_id = $1 LIMIT 1",
        &[node_id.into()],
    )?
    else {
        return Ok(None);
    };
    <[u8; 32]>::try_from(row.blob(0)?.as_slice())
        .ok()
        .and_then(|k| PublicKey::from_bytes(&k).ok())
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("node {node_id}'s key")))
}

/// The first of the audits `ids` whose period the run covers.
fn first_covered(
    sql: &mut dyn Sql,
    ids: impl IntoIterator<Item = String>,
    run: &answer::Verified,
) -> Result<Option<Audit>, StoreError> {
    for id in ids {
        if let Some(a) = load(sql, &id)?.filter(|a| run.covers(a.from, a.to).is_ok()) {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// Record a refusal on the node's part of `audit_id` (a finding when it is one) and
/// answer with it.
fn refuse(
    sql: &mut dyn Sql,
    audit_id: String,
    node_id: String,
    refusal: Refusal,
) -> Result<Answered, StoreError> {
    match &refusal {
        Refusal::Finding(r) => record_refusal(sql, &audit_id, &node_id, r, true)?,
        Refusal::Incomplete(r) => record_refusal(sql, &audit_id, &node_id, r, false)?,
        Refusal::Foreign(_) => {}
    }
    Ok(Err((Some((audit_id, node_id)), refusal)))
}

/// Store an answer (its header `body`, its `records`) checked with the node key as
/// `checked` says (or the refusal), against what the database holds, in one
/// transaction.
fn take_answer(
    sql: &mut dyn Sql,
    body: AuditAnswerBody,
    records: &[u8],
    checked: Result<answer::Verified, AnswerError>,
    via: Via,
    now: DateTime<Utc>,
) -> Result<Answered, StoreError> {
    let node_id = body.node_id;
    let named = body.audit_id;
    let run = match checked {
        Ok(run) => run,
        Err(
            e @ (AnswerError::WrongSigner | AnswerError::Malformed(_) | AnswerError::TooLarge(_)),
        ) => return foreign(ApiError::Forbidden(e.to_string())),
        Err(e) => {
            let reason = format!("{}: {e}", e.kind());
            // Altered after the node signed: whoever sent it changed it, which says
            // nothing about the node. Recorded on the audit it names, not a finding.
            let finding = !matches!(e, AnswerError::RecordsAltered);
            let refusal = if finding {
                Refusal::Finding(reason.clone())
            } else {
                Refusal::Incomplete(reason.clone())
            };
            let Some(id) = named.filter(|id| part_of(sql, id, &node_id).ok() == Some(Some(false)))
            else {
                if finding {
                    // Signed by the node and wrong, naming no audit of it: on every
                    // audit it has open.
                    for id in open_audits(sql, &node_id)? {
                        record_refusal(sql, &id, &node_id, &reason, true)?;
                    }
                }
                return Ok(Err((None, refusal)));
            };
            return refuse(sql, id, node_id, refusal);
        }
    };
    let audit = match &named {
        Some(id) => match part_of(sql, id, &node_id)? {
            None => {
                return foreign(ApiError::NotFound(format!(
                    "node {node_id} is not part of audit {id}"
                )))
            }
            Some(true) => {
                return foreign(ApiError::Conflict(format!(
                    "node {node_id} already answered audit {id}"
                )))
            }
            Some(false) => load(sql, id)?,
        },
        None => {
            let open = open_audits(sql, &node_id)?;
            first_covered(sql, open, &run)?
        }
    };
    let Some(audit) = audit else {
        // Answered already (a second import, a retried upload)?
        let answered = sql
            .query(
                "SELECT audit_id FROM audit_nodes WHERE node_id = $1 AND answered_at IS NOT NULL ORDER BY audit_id",
                &[(&node_id).into()],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<Vec<_>, _>>()?;
        let message = match first_covered(sql, answered, &run)?.map(|a| a.id) {
            Some(id) => format!("node {node_id} already answered audit {id}, whose period this answer covers"),
            None => format!(
                "node {node_id} has no open audit whose period this answer covers ({} to {}); the vendor requests one with `leasehold admin audit request`",
                rfc3339(run.body.from),
                rfc3339(run.body.to)
            ),
        };
        return foreign(ApiError::Conflict(message));
    };
    let kept = match check_against_held(sql, &node_id, &audit, &run, now)? {
        Ok(kept) => kept,
        Err(refusal) => return refuse(sql, audit.id, node_id, refusal),
    };
    let (rows, _) = report::report_rows(records, Some(audit.from), Some(audit.to), Period::Quarter);
    let totals = serde_json::to_string(&report::totals(&rows))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let stored = sql.execute(
        "UPDATE audit_nodes SET answered_at = $1, via = $2, records = $3, first_seq = $4, last_seq = $5, totals = $6
         WHERE audit_id = $7 AND node_id = $8 AND answered_at IS NULL",
        &[
            ts(now),
            via.as_str().into(),
            Value::Blob(records.to_vec()),
            int(run.body.first_seq),
            int(run.body.last_seq),
            (&totals).into(),
            (&audit.id).into(),
            (&node_id).into(),
        ],
    )?;
    if stored == 0 {
        // Another replica took an answer first, in a transaction that overlapped.
        return foreign(ApiError::Conflict(format!(
            "node {node_id} already answered audit {}",
            audit.id
        )));
    }
    for finding in &kept {
        add_finding(sql, &audit.id, &node_id, finding)?;
    }
    Ok(Ok(AnswerReceipt {
        audit_id: audit.id,
        node_id,
        records: run.summary.records,
        first_seq: run.body.first_seq,
        last_seq: run.body.last_seq,
        totals: report::totals(&rows),
        findings: kept,
    }))
}

/// Whether the node is part of audit `id`: `Some(answered)`, or `None`.
fn part_of(sql: &mut dyn Sql, id: &str, node_id: &str) -> Result<Option<bool>, StoreError> {
    sql.query_opt(
        "SELECT answered_at FROM audit_nodes WHERE audit_id = $1 AND node_id = $2",
        &[id.into(), node_id.into()],
    )?
    .map(|r| r.opt_int(0).map(|a| a.is_some()))
    .transpose()
}

/// The audits the node has not answered, oldest first.
fn open_audits(sql: &mut dyn Sql, node_id: &str) -> Result<Vec<String>, StoreError> {
    sql.query(
        "SELECT n.audit_id FROM audit_nodes n JOIN audits a ON a.id = n.audit_id
         WHERE n.node_id = $1 AND n.answered_at IS NULL ORDER BY a.requested_at, a.id",
        &[node_id.into()],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

impl Service {
    /// Ask an organization's nodes (those approved now) for their records of a period.
    pub async fn request_audit(&self, request: AuditRequest, by: &str) -> Result<Audit, ApiError> {
        let org = check_name("organization", &request.org)?;
        if request.to <= request.from {
            return Err(ApiError::BadRequest(format!(
                "the audit's period ends ({}) before it starts ({})",
                rfc3339(request.to),
                rfc3339(request.from)
            )));
        }
        let now = clock::system_now();
        if request.from > now {
            return Err(ApiError::BadRequest(format!(
                "the audit's period starts in the future ({}): nodes can only answer for what they have recorded",
                rfc3339(request.from)
            )));
        }
        let max_renewals = request.max_renewals.unwrap_or(DEFAULT_MAX_RENEWALS).max(1);
        if request.note.len() > 4096 {
            return Err(ApiError::BadRequest(
                "the note is longer than 4096 bytes".into(),
            ));
        }
        let by = by.to_string();
        let id = format!("audit-{}", new_id());
        let audit = self
            .store
            .transact(move |sql| {
                let nodes = sql.query(
                    "SELECT DISTINCT node_id FROM enrollments WHERE org = $1 AND status = 'approved' ORDER BY node_id",
                    &[(&org).into()],
                )?;
                if nodes.is_empty() {
                    return Err(StoreError::NotFound(format!(
                        "organization '{org}' has no approved nodes to audit"
                    )));
                }
                sql.execute(
                    &format!("INSERT INTO audits ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                    &[
                        (&id).into(),
                        (&org).into(),
                        ts(request.from),
                        ts(request.to),
                        (&by).into(),
                        ts(now),
                        Value::Int(i64::from(max_renewals)),
                        (&request.note).into(),
                    ],
                )?;
                for node in &nodes {
                    sql.execute(
                        "INSERT INTO audit_nodes (audit_id, node_id, asked, refusals) VALUES ($1, $2, 0, 0)",
                        &[(&id).into(), node.text(0)?.into()],
                    )?;
                }
                load(sql, &id)?.ok_or_else(|| StoreError::Corrupt(format!("audit {id} vanished")))
            })
            .await?;
        tracing::info!(
            "audit {} of '{}' requested by {} for {} to {} ({} nodes)",
            audit.id,
            audit.org,
            audit.requested_by,
            rfc3339(audit.from),
            rfc3339(audit.to),
            audit.nodes.len()
        );
        Ok(audit)
    }

    /// The audits, newest first (of one organization when `org` is given).
    pub async fn audits(&self, org: Option<&str>) -> Result<AuditList, ApiError> {
        let org = org.map(str::to_string);
        let audits = self
            .store
            .transact(move |sql| {
                let rows = match &org {
                    Some(org) => sql.query(
                        &format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE org = $1 ORDER BY requested_at DESC, id"),
                        &[org.into()],
                    )?,
                    None => sql.query(
                        &format!("SELECT {AUDIT_COLUMNS} FROM audits ORDER BY requested_at DESC, id"),
                        &[],
                    )?,
                };
                let ids: Vec<String> = rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?;
                ids.iter()
                    .map(|id| {
                        load(sql, id)?.ok_or_else(|| StoreError::Corrupt(format!("audit {id} vanished")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(AuditList { audits })
    }

    /// One audit (of `org` only, when given: another organization's is not found).
    pub async fn audit(&self, id: &str, org: Option<&str>) -> Result<Audit, ApiError> {
        let key = id.to_string();
        let audit = self.store.transact(move |sql| load(sql, &key)).await?;
        match audit {
            Some(a) if org.is_none_or(|o| o == a.org) => Ok(a),
            _ => Err(ApiError::NotFound(format!("no audit {id}"))),
        }
    }

    /// One node's report for an audit, from the records it answered with.
    pub async fn audit_report(
        &self,
        id: &str,
        node_id: &str,
        by: Period,
        org: Option<&str>,
    ) -> Result<NodeReport, ApiError> {
        let audit = self.audit(id, org).await?;
        let (audit_id, node) = (audit.id.clone(), node_id.to_string());
        let records = self
            .store
            .transact(move |sql| {
                sql.query_opt(
                    "SELECT records FROM audit_nodes WHERE audit_id = $1 AND node_id = $2",
                    &[(&audit_id).into(), (&node).into()],
                )?
                .map(|r| r.opt_blob(0))
                .transpose()
            })
            .await?;
        let records = match records {
            None => {
                return Err(ApiError::NotFound(format!(
                    "node {node_id} is not part of audit {id}"
                )))
            }
            Some(None) => {
                return Err(ApiError::Conflict(format!(
                    "node {node_id} has not answered audit {id} yet"
                )))
            }
            Some(Some(r)) => r,
        };
        // Linear in the records: off the async threads.
        let (from, to) = (audit.from, audit.to);
        let (rows, _) = tokio::task::spawn_blocking(move || {
            report::report_rows(&records, Some(from), Some(to), by)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("building a report: {e}")))?;
        Ok(NodeReport {
            totals: report::totals(&rows),
            audit_id: audit.id,
            org: audit.org,
            node_id: node_id.to_string(),
            from: audit.from,
            to: audit.to,
            by,
            rows,
        })
    }

    /// Take a node's audit answer (uploaded after a renewal, or imported from a file).
    pub async fn answer_audit(&self, bytes: Vec<u8>, via: Via) -> Result<AnswerReceipt, ApiError> {
        let parsed = answer::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let (body, header_len) = (parsed.body.clone(), bytes.len() - parsed.records.len());
        let node_id = body.node_id.clone();
        let node = node_id.clone();
        let key = self
            .store
            .transact(move |sql| node_key(sql, &node))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("this server has no enrollment of node {node_id}"))
            })?;
        // Verify off the async threads and outside any transaction.
        let bytes = std::sync::Arc::new(bytes);
        let shared = bytes.clone();
        let checked = tokio::task::spawn_blocking(move || {
            answer::verify(&answer::parse(&shared).expect("parsed above"), &key)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verifying an audit answer: {e}")))?;
        let now = clock::system_now();
        let outcome = self
            .store
            .transact(move |sql| take_answer(sql, body, &bytes[header_len..], checked, via, now))
            .await?;
        match outcome {
            Ok(receipt) => {
                tracing::info!(
                    "node {} answered audit {} ({}): records {} to {}, {} requests",
                    receipt.node_id,
                    receipt.audit_id,
                    via.as_str(),
                    receipt.first_seq,
                    receipt.last_seq,
                    receipt.totals.requests
                );
                Ok(receipt)
            }
            Err((_, Refusal::Foreign(e))) => Err(e),
            Err((at, Refusal::Incomplete(reason))) => {
                let (audit, node) = at.unwrap_or_default();
                tracing::warn!("refused node {node}'s answer to audit {audit}: {reason}");
                Err(ApiError::Unprocessable(format!(
                    "the audit answer was refused: {reason}"
                )))
            }
            Err((at, Refusal::Finding(reason))) => {
                let (audit, node) = at.unwrap_or_default();
                self.metrics.finding("audit-answer");
                tracing::warn!(
                    "refused and flagged node {node}'s answer to audit {audit}: {reason}"
                );
                Err(ApiError::Unprocessable(format!(
                    "the audit answer was refused and flagged: {reason}"
                )))
            }
        }
    }
}
