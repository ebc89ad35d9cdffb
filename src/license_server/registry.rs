//! The license server's records and rules, written once against [`Sql`] so SQLite and
//! PostgreSQL run the same logic: models, entitlements, enrollments, licenses,
//! revocations and usage checkpoints.
//!
//! Races between replicas are settled by single conditional statements: a seat on an
//! entitlement is taken (at approval) by `UPDATE … SET enrolled = enrolled + 1 WHERE
//! enrolled < nodes`, a renewal's serial comes from `UPDATE … SET serial = serial + 1 …
//! RETURNING serial`, so two replicas never hand out the same serial, and a renewal
//! request's nonce is remembered by `INSERT … ON CONFLICT DO NOTHING`, so a request
//! replayed to any replica is refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::checkpoints;
use super::ledger_check;
use super::store::{Row, Sql, StoreError, Value};
use crate::crypto::random;
use crate::license::body::check_grace;
use crate::license::issue::Safeguards;
use crate::license::Caps;
use crate::node::enrollment::{DeclaredUse, EnrollmentBody};
use crate::protocol::{LicenseRef, RefusalReason, UsageCheckpoint};

pub(super) fn ts(t: DateTime<Utc>) -> Value {
    Value::Int(t.timestamp())
}

pub(super) fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub(super) fn opt_time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.map(time)
}

pub(super) fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

pub(super) fn new_id() -> String {
    hex::encode(random::bytes::<8>())
}

/// Store (or replace) a model's header and its stored (encrypted) content key.
pub fn add_model(
    sql: &mut dyn Sql,
    model_id: &str,
    header: Vec<u8>,
    stored_key: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sql.execute(
        "INSERT INTO models (model_id, header, stored_key, added_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (model_id) DO UPDATE SET header = excluded.header,
             stored_key = excluded.stored_key, added_at = excluded.added_at",
        &[model_id.into(), header.into(), stored_key.into(), ts(now)],
    )?;
    Ok(())
}

/// The ids of the models this server holds.
pub fn model_ids(sql: &mut dyn Sql) -> Result<Vec<String>, StoreError> {
    sql.query("SELECT model_id FROM models ORDER BY model_id", &[])?
        .iter()
        .map(|row| row.text(0))
        .collect()
}

/// What the vendor grants an organization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entitlement {
    pub id: String,
    pub org: String,
    pub models: Vec<String>,
    pub nodes: u64,
    pub enrolled: u64,
    pub term_end: DateTime<Utc>,
    pub lease_seconds: u64,
    pub grace_seconds: u64,
    pub caps: Caps,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The watermark and output filter every license of this entitlement mandates.
    #[serde(default, skip_serializing_if = "Safeguards::is_empty")]
    pub safeguards: Safeguards,
    /// Enrollments that carry one of the organization's enrollment tokens are approved
    /// on arrival while a seat is free.
    #[serde(default)]
    pub auto_approve: bool,
}

const ENTITLEMENT_COLUMNS: &str = "id, org, models, nodes, enrolled, term_end, lease_seconds, grace_seconds, caps, created_at, revoked_at, safeguards, auto_approve";

fn entitlement(row: &Row) -> Result<Entitlement, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    Ok(Entitlement {
        id: row.text(0)?,
        org: row.text(1)?,
        models: serde_json::from_str(&row.text(2)?).map_err(corrupt)?,
        nodes: row.int(3)?.max(0) as u64,
        enrolled: row.int(4)?.max(0) as u64,
        term_end: time(row.int(5)?),
        lease_seconds: row.int(6)?.max(0) as u64,
        grace_seconds: row.int(7)?.max(0) as u64,
        caps: serde_json::from_str(&row.text(8)?).map_err(corrupt)?,
        created_at: time(row.int(9)?),
        revoked_at: opt_time(row.opt_int(10)?),
        safeguards: serde_json::from_str(&row.text(11)?).map_err(corrupt)?,
        auto_approve: row.int(12)? != 0,
    })
}

impl Entitlement {
    pub fn covers(&self, model_id: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model_id)
    }
}

/// Record a new entitlement; returns it with its id.
pub fn entitle(
    sql: &mut dyn Sql,
    mut e: Entitlement,
    now: DateTime<Utc>,
) -> Result<Entitlement, StoreError> {
    e.id = new_id();
    e.enrolled = 0;
    e.created_at = now;
    e.revoked_at = None;
    sql.execute(
        &format!("INSERT INTO entitlements ({ENTITLEMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11, $12)"),
        &[
            (&e.id).into(),
            (&e.org).into(),
            serde_json::to_string(&e.models).unwrap_or_default().into(),
            int(e.nodes),
            int(0),
            ts(e.term_end),
            int(e.lease_seconds),
            int(e.grace_seconds),
            serde_json::to_string(&e.caps).unwrap_or_default().into(),
            ts(now),
            serde_json::to_string(&e.safeguards)
                .unwrap_or_default()
                .into(),
            Value::Int(i64::from(e.auto_approve)),
        ],
    )?;
    Ok(e)
}

pub fn entitlements(sql: &mut dyn Sql) -> Result<Vec<Entitlement>, StoreError> {
    sql.query(
        &format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements ORDER BY created_at, id"),
        &[],
    )?
    .iter()
    .map(entitlement)
    .collect()
}

/// An enrollment as the approver sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub id: String,
    pub node_id: String,
    pub org: String,
    pub model_id: String,
    pub entitlement_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub declared_use: DeclaredUse,
    pub hardware: String,
    /// It came with one of its organization's enrollment tokens (else anyone could have
    /// submitted it: an enrollment names its organization, unauthenticated).
    #[serde(default)]
    pub with_token: bool,
}

const ENROLLMENT_COLUMNS: &str =
    "id, node_id, org, model_id, entitlement_id, status, created_at, decided_at, note, document, token_org";

fn enrollment(row: &Row) -> Result<Enrollment, StoreError> {
    let document = row.text(9)?;
    // Verified when it was submitted; parsed again here only to show it.
    let body: EnrollmentBody = crate::node::enrollment::verify(document.as_bytes())
        .map_err(|e| StoreError::Corrupt(format!("stored enrollment {}: {e}", row.0.len())))?;
    Ok(Enrollment {
        id: row.text(0)?,
        node_id: row.text(1)?,
        org: row.text(2)?,
        model_id: row.text(3)?,
        entitlement_id: row.text(4)?,
        status: row.text(5)?,
        created_at: time(row.int(6)?),
        decided_at: opt_time(row.opt_int(7)?),
        note: row.opt_text(8)?,
        declared_use: body.declared_use.clone(),
        hardware: body.hardware.policy.describe(&body.hardware.components),
        with_token: row.opt_text(10)?.is_some(),
    })
}

/// Outcome of submitting an enrollment.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub enrollment_id: String,
    pub status: String,
    /// False when the same enrollment had been submitted before.
    pub new: bool,
}

/// The current entitlements of `org` that cover `model_id`, oldest first.
fn current_entitlements(
    sql: &mut dyn Sql,
    org: &str,
    model_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Entitlement>, StoreError> {
    Ok(sql
        .query(
            &format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE org = $1 AND revoked_at IS NULL AND term_end > $2 ORDER BY created_at, id"),
            &[org.into(), ts(now)],
        )?
        .iter()
        .map(entitlement)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|e| e.covers(model_id))
        .collect())
}

fn no_entitlement(org: &str, model_id: &str) -> StoreError {
    StoreError::Refused(format!(
        "organization '{org}' has no current entitlement for model '{model_id}'; the vendor grants one with `leasehold admin entitle`"
    ))
}

/// Record a node's enrollment, pending approval, against its organization's entitlement.
/// It takes no seat: anyone can submit one, so seats are taken at approval ([`decide`]).
pub fn submit_enrollment(
    sql: &mut dyn Sql,
    document: &str,
    body: &EnrollmentBody,
    now: DateTime<Utc>,
) -> Result<Submitted, StoreError> {
    let request = body.request.as_ref().ok_or_else(|| {
        StoreError::Refused(
            "the enrollment names no organization and model; run `leasehold enroll --server URL --org ORG --model ID`".into(),
        )
    })?;
    if let Some(row) = sql.query_opt(
        "SELECT id, status, document FROM enrollments WHERE node_id = $1 AND model_id = $2",
        &[(&body.node_id).into(), (&request.model_id).into()],
    )? {
        let (id, status) = (row.text(0)?, row.text(1)?);
        if row.text(2)? == document {
            return Ok(Submitted {
                enrollment_id: id,
                status,
                new: false,
            });
        }
        return Err(StoreError::Conflict(format!(
            "node {} is already enrolled for model '{}' as enrollment {id} ({status}); a node enrolls once per model",
            body.node_id, request.model_id
        )));
    }
    // Which entitlement it would count against; approval may pick another with a free seat.
    let entitlement_id = current_entitlements(sql, &request.organization, &request.model_id, now)?
        .into_iter()
        .next()
        .ok_or_else(|| no_entitlement(&request.organization, &request.model_id))?
        .id;
    let id = new_id();
    sql.execute(
        "INSERT INTO enrollments (id, node_id, node_key, org, model_id, entitlement_id, document, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
        &[
            (&id).into(),
            (&body.node_id).into(),
            body.signing_key.to_vec().into(),
            (&request.organization).into(),
            (&request.model_id).into(),
            entitlement_id.into(),
            document.into(),
            ts(now),
        ],
    )?;
    Ok(Submitted {
        enrollment_id: id,
        status: "pending".into(),
        new: true,
    })
}

pub fn enrollments(sql: &mut dyn Sql, status: Option<&str>) -> Result<Vec<Enrollment>, StoreError> {
    let rows = match status {
        Some(s) => sql.query(
            &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE status = $1 ORDER BY created_at, id"),
            &[s.into()],
        )?,
        None => sql.query(
            &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments ORDER BY created_at, id"),
            &[],
        )?,
    };
    rows.iter().map(enrollment).collect()
}

/// Approve or deny a pending enrollment. Approving takes a seat on a current entitlement
/// of its organization for its model, and is refused when all are taken.
pub fn decide(
    sql: &mut dyn Sql,
    id: &str,
    approve: bool,
    note: &str,
    now: DateTime<Utc>,
) -> Result<Enrollment, StoreError> {
    let row = sql
        .query_opt(
            "SELECT status, org, model_id FROM enrollments WHERE id = $1",
            &[id.into()],
        )?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no enrollment {id}; see `leasehold admin enrollments`"
            ))
        })?;
    let status = row.text(0)?;
    if status != "pending" {
        return Err(StoreError::Conflict(format!(
            "enrollment {id} is already {status}"
        )));
    }
    let new_status = if approve { "approved" } else { "denied" };
    let changed = sql.execute(
        "UPDATE enrollments SET status = $1, decided_at = $2, note = $3 WHERE id = $4 AND status = 'pending'",
        &[new_status.into(), ts(now), note.into(), id.into()],
    )?;
    if changed != 1 {
        return Err(StoreError::Conflict(format!(
            "enrollment {id} was decided by someone else meanwhile"
        )));
    }
    if approve {
        let (org, model_id) = (row.text(1)?, row.text(2)?);
        let entitlement_id = take_seat(sql, &org, &model_id, now)?;
        sql.execute(
            "UPDATE enrollments SET entitlement_id = $1 WHERE id = $2",
            &[entitlement_id.into(), id.into()],
        )?;
    }
    let row = sql
        .query_opt(
            &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE id = $1"),
            &[id.into()],
        )?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    enrollment(&row)
}

/// Take a seat for `org` and `model_id` on the oldest current entitlement with one free;
/// its id. One conditional UPDATE per entitlement, so replicas never oversell.
fn take_seat(
    sql: &mut dyn Sql,
    org: &str,
    model_id: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let candidates = current_entitlements(sql, org, model_id, now)?;
    if candidates.is_empty() {
        return Err(no_entitlement(org, model_id));
    }
    for e in &candidates {
        let taken = sql.execute(
            "UPDATE entitlements SET enrolled = enrolled + 1 WHERE id = $1 AND enrolled < nodes",
            &[(&e.id).into()],
        )?;
        if taken == 1 {
            return Ok(e.id.clone());
        }
    }
    let total = candidates
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.nodes));
    Err(StoreError::Conflict(format!(
        "the entitlement of '{org}' for model '{model_id}' covers {total} node(s), and all are taken by approved nodes; deny this enrollment, or raise --nodes with a new `leasehold admin entitle`"
    )))
}

/// Approve a just-submitted enrollment by itself, taking a seat of one of its
/// organization's current entitlements that approve automatically; false (it stays
/// pending) when none does or none has a free seat.
pub fn auto_approve(
    sql: &mut dyn Sql,
    id: &str,
    org: &str,
    model_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    for e in current_entitlements(sql, org, model_id, now)?
        .iter()
        .filter(|e| e.auto_approve)
    {
        let taken = sql.execute(
            "UPDATE entitlements SET enrolled = enrolled + 1 WHERE id = $1 AND enrolled < nodes",
            &[(&e.id).into()],
        )?;
        if taken == 1 {
            sql.execute(
                "UPDATE enrollments SET status = 'approved', decided_at = $1, note = $2, entitlement_id = $3 WHERE id = $4 AND status = 'pending'",
                &[
                    ts(now),
                    "approved on enrollment (enrollment token; the entitlement approves within its seats)".into(),
                    (&e.id).into(),
                    id.into(),
                ],
            )?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A license as the vendor sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LicenseRecord {
    pub license_id: String,
    pub node_id: String,
    pub org: String,
    pub model_id: String,
    pub serial: u64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub renewals: u64,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
}

const LICENSE_COLUMNS: &str = "license_id, node_id, org, model_id, serial, issued_at, expires_at, renewals, revoked_at, revoke_reason";

fn license_record(row: &Row) -> Result<LicenseRecord, StoreError> {
    Ok(LicenseRecord {
        license_id: row.text(0)?,
        node_id: row.text(1)?,
        org: row.text(2)?,
        model_id: row.text(3)?,
        serial: row.int(4)?.max(0) as u64,
        issued_at: time(row.int(5)?),
        expires_at: time(row.int(6)?),
        renewals: row.int(7)?.max(0) as u64,
        revoked_at: opt_time(row.opt_int(8)?),
        revoke_reason: row.opt_text(9)?,
    })
}

pub fn licenses(sql: &mut dyn Sql) -> Result<Vec<LicenseRecord>, StoreError> {
    sql.query(
        &format!("SELECT {LICENSE_COLUMNS} FROM licenses ORDER BY org, node_id, model_id"),
        &[],
    )?
    .iter()
    .map(license_record)
    .collect()
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    License(String),
    Node(String),
    Org(String),
}

/// Revoke licenses (and, for an organization, its entitlements). Returns how many
/// licenses were revoked now.
pub fn revoke(
    sql: &mut dyn Sql,
    target: &RevokeTarget,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let (column, value) = match target {
        RevokeTarget::License(id) => ("license_id", id),
        RevokeTarget::Node(id) => ("node_id", id),
        RevokeTarget::Org(org) => ("org", org),
    };
    let n = sql.execute(
        &format!("UPDATE licenses SET revoked_at = $1, revoke_reason = $2 WHERE {column} = $3 AND revoked_at IS NULL"),
        &[ts(now), reason.into(), value.into()],
    )?;
    // Enrollments that have no license yet must not get one either.
    let (e_column, e_value) = match target {
        RevokeTarget::License(_) => ("", value),
        RevokeTarget::Node(id) => ("node_id", id),
        RevokeTarget::Org(org) => ("org", org),
    };
    let mut pending = 0;
    if !e_column.is_empty() {
        pending = sql.execute(
            &format!("UPDATE enrollments SET status = 'revoked', decided_at = $1, note = $2 WHERE {e_column} = $3 AND status IN ('pending', 'approved')"),
            &[ts(now), reason.into(), e_value.into()],
        )?;
    }
    if let RevokeTarget::Org(org) = target {
        sql.execute(
            "UPDATE entitlements SET revoked_at = $1 WHERE org = $2 AND revoked_at IS NULL",
            &[ts(now), org.into()],
        )?;
    }
    if n == 0 && pending == 0 {
        return Err(StoreError::NotFound(format!(
            "nothing to revoke for {column} '{value}' (unknown, or already revoked)"
        )));
    }
    Ok(n)
}

/// Remember a renewal request's nonce until `forget_after`. `false` when this node's
/// nonce is remembered already: the request is a replay. The primary key makes this one
/// atomic statement, so two replicas racing with the same request admit it once.
pub fn remember_nonce(
    sql: &mut dyn Sql,
    node_id: &str,
    nonce: &[u8; 16],
    forget_after: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let inserted = sql.execute(
        "INSERT INTO renewal_nonces (node_id, nonce, forget_after) VALUES ($1, $2, $3)
         ON CONFLICT (node_id, nonce) DO NOTHING",
        &[node_id.into(), hex::encode(nonce).into(), ts(forget_after)],
    )?;
    Ok(inserted == 1)
}

/// Forget nonces remembered until before `before`; how many.
pub fn forget_nonces(sql: &mut dyn Sql, before: DateTime<Utc>) -> Result<u64, StoreError> {
    sql.execute(
        "DELETE FROM renewal_nonces WHERE forget_after < $1",
        &[ts(before)],
    )
}

/// What the issuer's certificate allows, applied to every renewal.
#[derive(Debug, Clone, Copy)]
pub struct IssuerLimits {
    pub not_after: DateTime<Utc>,
    pub max_lease_seconds: u64,
}

/// A license to sign: everything the issuer needs beyond its keys.
#[derive(Debug, Clone)]
pub struct Grant {
    /// What the ledger comparison found, if anything.
    pub findings: Vec<ledger_check::Finding>,
    pub license_id: String,
    pub serial: u64,
    pub org: String,
    pub not_before: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub grace_seconds: u64,
    pub caps: Caps,
    pub safeguards: Safeguards,
    pub enrollment_document: String,
    pub model_id: String,
    pub header: Vec<u8>,
    pub stored_key: Vec<u8>,
}

/// The server's decision on a renewal request.
#[derive(Debug, Clone)]
pub enum Renewal {
    Grant(Box<Grant>),
    Pending { enrollment_id: String },
    Refused(RefusalReason, String),
}

/// A verified renewal request, reduced to what the registry needs.
#[derive(Debug, Clone)]
pub struct RenewalInput {
    pub node_id: String,
    pub node_key: [u8; 32],
    pub model_id: String,
    pub license: Option<LicenseRef>,
    pub usage: UsageCheckpoint,
}

/// Decide a renewal, take the next serial and record the usage checkpoint.
pub fn renew(
    sql: &mut dyn Sql,
    input: &RenewalInput,
    limits: IssuerLimits,
    now: DateTime<Utc>,
) -> Result<Renewal, StoreError> {
    let Some(row) = sql.query_opt(
        "SELECT id, node_key, status, entitlement_id, document, org, note FROM enrollments WHERE node_id = $1 AND model_id = $2",
        &[(&input.node_id).into(), (&input.model_id).into()],
    )?
    else {
        return Ok(Renewal::Refused(
            RefusalReason::UnknownNode,
            format!(
                "this server has no enrollment of node {} for model '{}'; enroll with `leasehold enroll --server URL --org ORG --model {}`",
                input.node_id, input.model_id, input.model_id
            ),
        ));
    };
    let enrollment_id = row.text(0)?;
    if row.blob(1)? != input.node_key {
        return Ok(Renewal::Refused(
            RefusalReason::UnknownNode,
            format!("node {} enrolled with another key", input.node_id),
        ));
    }
    match row.text(2)?.as_str() {
        "pending" => return Ok(Renewal::Pending { enrollment_id }),
        "denied" => {
            return Ok(Renewal::Refused(
                RefusalReason::Denied,
                format!(
                    "enrollment {enrollment_id} was denied by the vendor{}",
                    row.opt_text(6)?
                        .filter(|n| !n.is_empty())
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ),
            ))
        }
        _ => {}
    }
    let entitlement_id = row.text(3)?;
    let document = row.text(4)?;
    let org = row.text(5)?;
    let existing = sql.query_opt(
        "SELECT license_id, revoked_at, revoke_reason FROM licenses WHERE enrollment_id = $1",
        &[(&enrollment_id).into()],
    )?;
    let revoked = match &existing {
        Some(l) => l.opt_int(1)?.map(|_| l.opt_text(2)).transpose()?,
        None if row.text(2)? == "revoked" => Some(row.opt_text(6)?),
        None => None,
    };
    if let Some(reason) = revoked {
        return Ok(Renewal::Refused(
            RefusalReason::Revoked,
            format!(
                "the license was revoked by the vendor{}",
                reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let ent = sql
        .query_opt(
            &format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE id = $1"),
            &[(&entitlement_id).into()],
        )?
        .ok_or_else(|| StoreError::Corrupt(format!("entitlement {entitlement_id} is missing")))?;
    let ent = entitlement(&ent)?;
    if ent.revoked_at.is_some() {
        return Ok(Renewal::Refused(
            RefusalReason::Revoked,
            format!("the entitlement of '{}' was revoked by the vendor", ent.org),
        ));
    }
    // `admin entitle` bounds the grace; a row it did not write (an older build, a hand
    // edit) is refused here rather than overflowing the arithmetic below.
    let Some(grace) = check_grace(ent.grace_seconds)
        .ok()
        .and_then(|()| i64::try_from(ent.grace_seconds).ok())
        .and_then(chrono::Duration::try_seconds)
    else {
        return Ok(Renewal::Refused(
            RefusalReason::Ended,
            format!(
                "the entitlement of '{}' has a grace of {} s, more than a license may carry; the vendor must entitle again",
                ent.org, ent.grace_seconds
            ),
        ));
    };
    // The issuer's maximum lease bounds lease and grace together.
    let lease = ent
        .lease_seconds
        .min(limits.max_lease_seconds.saturating_sub(ent.grace_seconds));
    let lease_end = i64::try_from(lease)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let certificate_end = limits
        .not_after
        .checked_sub_signed(grace)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let expires_at = lease_end.min(ent.term_end).min(certificate_end);
    if expires_at <= now {
        return Ok(Renewal::Refused(
            RefusalReason::Ended,
            if ent.term_end <= now {
                format!("the entitlement of '{}' ended at {}", ent.org, ent.term_end)
            } else if lease == 0 {
                format!(
                    "the entitlement's grace of {} s leaves no lease within the issuer certificate's maximum of {} s (lease and grace together); the vendor must entitle again with a shorter --grace",
                    ent.grace_seconds, limits.max_lease_seconds
                )
            } else {
                format!(
                    "the issuer's certificate ends at {}; the vendor must certify the license server again",
                    limits.not_after
                )
            },
        ));
    }
    let license_id = match existing {
        Some(l) => l.text(0)?,
        None => {
            // First license of this enrollment. Replicas racing here both insert-or-skip
            // and then read the one row that won.
            sql.execute(
                "INSERT INTO licenses (license_id, enrollment_id, node_id, org, model_id, entitlement_id, serial, issued_at, expires_at, renewals)
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, 0) ON CONFLICT (enrollment_id) DO NOTHING",
                &[
                    hex::encode(random::bytes::<16>()).into(),
                    (&enrollment_id).into(),
                    (&input.node_id).into(),
                    (&org).into(),
                    (&input.model_id).into(),
                    (&entitlement_id).into(),
                    ts(now),
                ],
            )?;
            sql.query_opt(
                "SELECT license_id FROM licenses WHERE enrollment_id = $1",
                &[(&enrollment_id).into()],
            )?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("no license row for enrollment {enrollment_id}"))
            })?
            .text(0)?
        }
    };
    let serial = sql
        .query_opt(
            "UPDATE licenses SET serial = serial + 1, issued_at = $1, expires_at = $2, renewals = renewals + 1
             WHERE license_id = $3 RETURNING serial",
            &[ts(now), ts(expires_at), (&license_id).into()],
        )?
        .ok_or_else(|| StoreError::Corrupt(format!("license {license_id} vanished")))?
        .int(0)?;
    let findings = checkpoints::record(
        sql,
        &input.node_id,
        &license_id,
        &org,
        &input.usage,
        checkpoints::Source::Renewal,
        now,
    )?;
    let model = sql
        .query_opt(
            "SELECT header, stored_key FROM models WHERE model_id = $1",
            &[(&input.model_id).into()],
        )?
        .ok_or_else(|| {
            StoreError::Refused(format!(
                "model '{}' is not on this server; the vendor adds it with `leasehold admin model add`",
                input.model_id
            ))
        })?;
    Ok(Renewal::Grant(Box::new(Grant {
        findings,
        license_id,
        serial: serial.max(0) as u64,
        org,
        not_before: now,
        expires_at,
        grace_seconds: ent.grace_seconds,
        caps: ent.caps,
        safeguards: ent.safeguards,
        enrollment_document: document,
        model_id: input.model_id.clone(),
        header: model.blob(0)?,
        stored_key: model.blob(1)?,
    })))
}

/// Usage per node over a period, from the checkpoints nodes sent with renewals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeUsage {
    pub org: String,
    pub node_id: String,
    pub license_id: String,
    pub checkpoints: u64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// A checkpoint reported lower counters than an earlier one of the same run.
    pub went_backwards: bool,
    /// What renewals found wrong with the node's ledger (`kind: detail`, with the time).
    pub ledger_findings: Vec<String>,
}

/// Sum usage per node: counters are totals since the node's `since` (its process
/// start); each run contributes its highest totals.
pub fn usage(
    sql: &mut dyn Sql,
    org: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<NodeUsage>, StoreError> {
    let rows = sql.query(
        "SELECT org, node_id, license_id, received_at, since, requests, prompt_tokens, completion_tokens, finding
         FROM checkpoints WHERE received_at >= $1 AND received_at < $2 ORDER BY org, node_id, id",
        &[ts(from), ts(to)],
    )?;
    let mut out: Vec<NodeUsage> = Vec::new();
    // Per node: (since, best counters of that run).
    let mut runs: Vec<(i64, [u64; 3])> = Vec::new();
    let flush = |u: &mut NodeUsage, runs: &mut Vec<(i64, [u64; 3])>| {
        for (_, c) in runs.drain(..) {
            let sums = [
                u.requests.checked_add(c[0]),
                u.prompt_tokens.checked_add(c[1]),
                u.completion_tokens.checked_add(c[2]),
            ];
            if let [Some(r), Some(p), Some(t)] = sums {
                (u.requests, u.prompt_tokens, u.completion_tokens) = (r, p, t);
            } else {
                // Only counters no real ledger holds get here: say so, keep the maximum.
                (u.requests, u.prompt_tokens, u.completion_tokens) = (u64::MAX, u64::MAX, u64::MAX);
                if !u.ledger_findings.iter().any(|f| f.starts_with("overflow")) {
                    u.ledger_findings.push(
                        "overflow: the node's reported counters add up past 2^64 - 1, which no real ledger holds".into(),
                    );
                }
            }
        }
    };
    for row in rows {
        let row_org = row.text(0)?;
        if org.is_some_and(|o| o != row_org) {
            continue;
        }
        let node_id = row.text(1)?;
        if out.last().is_none_or(|u| u.node_id != node_id) {
            if let Some(u) = out.last_mut() {
                flush(u, &mut runs);
            }
            out.push(NodeUsage {
                org: row_org,
                node_id: node_id.clone(),
                ..NodeUsage::default()
            });
        }
        let u = out.last_mut().expect("pushed above");
        let at = time(row.int(3)?);
        u.license_id = row.text(2)?;
        u.checkpoints += 1;
        if let Some(finding) = row.opt_text(8)? {
            if finding.starts_with("went-backwards") {
                u.went_backwards = true;
            }
            u.ledger_findings
                .push(format!("{}: {finding}", crate::format::time::rfc3339(at)));
        }
        u.first = u.first.or(Some(at));
        u.last = Some(at);
        let since = row.opt_int(4)?.unwrap_or(0);
        let counters = [
            row.int(5)?.max(0) as u64,
            row.int(6)?.max(0) as u64,
            row.int(7)?.max(0) as u64,
        ];
        match runs.iter_mut().find(|(s, _)| *s == since) {
            Some((_, best)) => {
                if counters.iter().zip(best.iter()).any(|(c, b)| c < b) {
                    u.went_backwards = true;
                }
                for (b, c) in best.iter_mut().zip(counters) {
                    *b = (*b).max(c);
                }
            }
            None => runs.push((since, counters)),
        }
    }
    if let Some(u) = out.last_mut() {
        flush(u, &mut runs);
    }
    Ok(out)
}
