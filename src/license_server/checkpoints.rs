//! Usage checkpoints: where a node's ledger stood when it reported, from renewals and
//! from checkpoint reports (`POST /v1/checkpoints`) between them.
//!
//! A node reports at least once per checkpoint interval while it reaches the server,
//! so a node directory restored from a backup (or a VM snapshot) has lost at most one
//! interval of history the server has not seen: its next report goes backwards or
//! forks from the checkpoint held here, and [`record`] flags it with the same findings
//! as a renewal (`ledger_check`), listed by `admin usage`.
//!
//! A report is accepted once and only fresh, by the same rule as a renewal request
//! ([`Service::fresh`], [`Service::replayed`]): refused when its `sent_at` is more than
//! [`super::REQUEST_WINDOW_SECONDS`] from the server's clock (an old capture replayed,
//! or a node clock to fix) or when its nonce was seen before (nonces are remembered in
//! the database, with the renewals'). So a captured older report
//! cannot be replayed to plant a false finding against an honest node. Reports and
//! renewals share one table: a renewal always adds a row, a report only when the
//! position moved or a finding is recorded, so an idle node adds nothing.

use chrono::{DateTime, Utc};

use super::ledger_check::{self, Finding, FindingKind};
use super::store::{Sql, StoreError, Value};
use super::{check_node_id, registry, ApiError, Service, SignedMessage};
use crate::format::{Body as _, DocumentKind};
use crate::node::clock;
use crate::node::enrollment::EnrollmentBody;
use crate::protocol::checkpoint::{self, CheckpointReceiptBody, CheckpointReportBody};
use crate::protocol::{LedgerAnchor, UsageCheckpoint};

const CHECKPOINT_REPORT: SignedMessage = SignedMessage {
    endpoint: "checkpoints",
    name: "checkpoint report",
};

/// Where a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Renewal,
    Report,
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Compare a node's reported usage with the checkpoint held for it, and store it with
/// what was found. Returns the findings (the ledger's first, then the TPM's count of
/// refused rolled-back states).
pub fn record(
    sql: &mut dyn Sql,
    node_id: &str,
    license_id: &str,
    org: &str,
    usage: &UsageCheckpoint,
    source: Source,
    now: DateTime<Utc>,
) -> Result<Vec<Finding>, StoreError> {
    let ledger = usage.ledger.as_ref();
    let held = ledger_check::held(sql, node_id)?;
    let rolled_back = rollbacks_finding(sql, node_id, usage.tpm_rollbacks)?;
    let mut findings = Vec::new();
    if let (Some(held), Some(new)) = (&held, ledger) {
        if source == Source::Report && held.is(new, usage) && rolled_back.is_none() {
            // Nothing moved since the last report: nothing to store.
            return Ok(findings);
        }
        findings.extend(ledger_check::check(sql, node_id, held, new, usage)?);
    }
    findings.extend(rolled_back);
    for f in &findings {
        tracing::warn!(
            "node {node_id} ({org}) reported {}: {}",
            match f.kind {
                FindingKind::Replaced => "a usage ledger that was replaced",
                FindingKind::WentBackwards => "a usage ledger that went backwards",
                FindingKind::Forked => "a usage ledger that forked",
                FindingKind::Unconfirmed => "a usage ledger that cannot be confirmed",
                FindingKind::StateRolledBack => "refused rolled-back node states",
                FindingKind::RollbackCountUnverified => {
                    "a count of refused rolled-back states that cannot be trusted"
                }
            },
            f.detail
        );
    }
    let rendered = (!findings.is_empty()).then(|| {
        findings
            .iter()
            .map(Finding::render)
            .collect::<Vec<_>>()
            .join("; ")
    });
    sql.execute(
        "INSERT INTO checkpoints (node_id, license_id, org, received_at, since, requests, prompt_tokens, completion_tokens, ledger_id, ledger_seq, ledger_hash, finding, tpm_rollbacks)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            node_id.into(),
            license_id.into(),
            org.into(),
            Value::Int(now.timestamp()),
            Value::Int(usage.since.map_or(0, |t| t.timestamp())),
            int(usage.requests),
            int(usage.prompt_tokens),
            int(usage.completion_tokens),
            ledger.map_or(Value::Null, |l| hex::encode(l.ledger_id).into()),
            ledger.map_or(Value::Null, |l| int(l.seq)),
            ledger.map_or(Value::Null, |l| hex::encode(l.hash).into()),
            rendered.map_or(Value::Null, Value::from),
            usage.tpm_rollbacks.map_or(Value::Null, int),
        ],
    )?;
    Ok(findings)
}

/// A TPM node's count of refused rolled-back states against the last one it reported
/// (or, before its first, the count its enrollment carried). The count lives in a TPM
/// counter, which the operator cannot lower: a rise is *state-rolled-back*; a count
/// that goes down, or goes missing from the reports of a node that had one, is
/// *rollback-count-unverified* (flagged when it happens: the next report is compared
/// with the new value, so nothing repeats at every report).
fn rollbacks_finding(
    sql: &mut dyn Sql,
    node_id: &str,
    reported: Option<u64>,
) -> Result<Option<Finding>, StoreError> {
    // Compared as stored: a count past 2^63 - 1 (no TPM's) is kept as 2^63 - 1.
    let reported = reported.map(|n| n.min(i64::MAX as u64));
    let last_row = sql
        .query_opt(
            "SELECT tpm_rollbacks FROM checkpoints WHERE node_id = $1 ORDER BY id DESC LIMIT 1",
            &[node_id.into()],
        )?
        .map(|row| row.opt_int(0))
        .transpose()?;
    let last_count = sql
        .query_opt(
            "SELECT tpm_rollbacks FROM checkpoints WHERE node_id = $1 AND tpm_rollbacks IS NOT NULL ORDER BY id DESC LIMIT 1",
            &[node_id.into()],
        )?
        .map(|row| row.int(0))
        .transpose()?
        .map(|v| v.max(0) as u64);
    let (before, since) = match last_count {
        Some(c) => (Some(c), "its last report"),
        None => (enrolled_rollbacks(sql, node_id)?, "it enrolled"),
    };
    let unverified = |detail: String| {
        Some(Finding {
            kind: FindingKind::RollbackCountUnverified,
            detail,
        })
    };
    Ok(match (reported, before) {
        (Some(now), Some(before)) if now > before => Some(Finding {
            kind: FindingKind::StateRolledBack,
            detail: format!(
                "the node refused {} rolled-back or removed node state(s) since {since} (its TPM's count went from {before} to {now}): its node directory or state.json was restored from a backup or a VM snapshot, or removed",
                now - before
            ),
        }),
        (Some(now), Some(before)) if now < before => unverified(format!(
            "the node's TPM count of refused rolled-back states is {now}, below the {before} it reported before, which a TPM counter never does: the counter it reports is not the one it had (counter.tpm edited, or the counter deleted and made again)"
        )),
        // Missing now, there before (the last report had one, or the enrollment did).
        (None, Some(_)) if last_row.is_none_or(|l| l.is_some()) => unverified(
            "a TPM node's report carries no count of refused rolled-back states: its TPM did not answer, or the counter was deleted"
                .into(),
        ),
        _ => None,
    })
}

/// The count of refused rolled-back states a node's enrollments carried (the lowest,
/// when it enrolled for several models).
fn enrolled_rollbacks(sql: &mut dyn Sql, node_id: &str) -> Result<Option<u64>, StoreError> {
    let rows = sql.query(
        "SELECT document FROM enrollments WHERE node_id = $1",
        &[node_id.into()],
    )?;
    let mut lowest: Option<u64> = None;
    for row in rows {
        let document = row.text(0)?;
        let body = crate::format::Envelope::parse(document.as_bytes(), DocumentKind::Enrollment)
            .ok()
            .and_then(|e| e.decode_body::<EnrollmentBody>().ok());
        if let Some(count) = body.and_then(|b| b.tpm_rollbacks) {
            lowest = Some(lowest.map_or(count, |l| l.min(count)));
        }
    }
    Ok(lowest)
}

/// Record a verified report for the license it names. The node must be enrolled for
/// the model with the key that signed the report, and the license must be the one
/// this server issued for that enrollment (revoked or not: what a revoked node's
/// ledger does still matters to the vendor).
fn receive(
    sql: &mut dyn Sql,
    report: &CheckpointReportBody,
    now: DateTime<Utc>,
) -> Result<Vec<Finding>, StoreError> {
    let row = sql
        .query_opt(
            "SELECT e.node_key, l.license_id, l.org FROM enrollments e
             LEFT JOIN licenses l ON l.enrollment_id = e.id
             WHERE e.node_id = $1 AND e.model_id = $2",
            &[(&report.node_id).into(), (&report.model_id).into()],
        )?
        .ok_or_else(|| {
            StoreError::Refused(format!(
                "this server has no enrollment of node {} for model '{}'; enroll with `leasehold enroll --server URL --org ORG --model {}`",
                report.node_id, report.model_id, report.model_id
            ))
        })?;
    if row.blob(0)? != report.node_key {
        return Err(StoreError::Refused(format!(
            "node {} enrolled with another key",
            report.node_id
        )));
    }
    let (Some(license_id), Some(org)) = (row.opt_text(1)?, row.opt_text(2)?) else {
        return Err(StoreError::Refused(format!(
            "this server issued no license to node {} for model '{}' yet; the node reports checkpoints once it holds one",
            report.node_id, report.model_id
        )));
    };
    if license_id != report.license.license_id {
        return Err(StoreError::Refused(format!(
            "the report names license {}, but this server's license for node {} and model '{}' is {license_id}",
            report.license.license_id, report.node_id, report.model_id
        )));
    }
    record(
        sql,
        &report.node_id,
        &license_id,
        &org,
        &report.usage,
        Source::Report,
        now,
    )
}

impl Service {
    /// A node reports its ledger position (`POST /v1/checkpoints`): check the report,
    /// record it, and answer with a signed receipt.
    pub async fn checkpoint(&self, bytes: &[u8]) -> Result<String, ApiError> {
        let (envelope, report) =
            checkpoint::parse_report(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        check_node_id(&report.node_id, &report.node_key, "report")?;
        // Against the key it names here; `receive` checks that key is the enrolled one.
        checkpoint::verify_report(&envelope, &report, &report.node_key)
            .map_err(|e| ApiError::Forbidden(e.to_string()))?;
        let now = clock::system_now();
        let forget_after = self.fresh(&CHECKPOINT_REPORT, report.sent_at, now, true)?;
        let position = report
            .usage
            .ledger
            .as_ref()
            .map(|l| LedgerAnchor {
                seq: l.seq,
                hash: l.hash,
            })
            .ok_or_else(|| ApiError::BadRequest("the report names no ledger position".into()))?;
        let (node_id, nonce) = (report.node_id.clone(), report.nonce);
        let finding = self
            .store
            .transact(move |sql| {
                if !registry::remember_nonce(sql, &report.node_id, &report.nonce, forget_after)? {
                    return Ok(None);
                }
                receive(sql, &report, now).map(Some)
            })
            .await?;
        let Some(findings) = finding else {
            return Err(self.replayed(&CHECKPOINT_REPORT, &node_id, &nonce));
        };
        for f in &findings {
            self.metrics.finding(f.kind.as_str());
        }
        let receipt = CheckpointReceiptBody {
            version: CheckpointReceiptBody::VERSION,
            node_id,
            request_nonce: nonce,
            server_time: crate::format::time::whole_seconds(now),
            acknowledged: position,
        };
        Ok(
            checkpoint::sign_receipt(&self.issuer.key, Some(&self.issuer.certificate), &receipt)
                .render(),
        )
    }
}
