//! What the vendor (and each organization, of itself) oversees: per node, the license's
//! phase, expiry, last renewal, serial, revocation and ledger findings; usage per day,
//! month and quarter against the caps, from the checkpoints nodes report.
//!
//! Usage per period: a node's checkpoints carry totals since its process started
//! (`since`); within one run the increase between two checkpoints is counted on the day
//! of the later one (UTC days, by when the server received it: an air-gapped node's
//! usage lands on the day its renewal arrived), and a run's first checkpoint counts in
//! full. A checkpoint lower than one already counted (late, or a run whose counters
//! fell: the findings say so) adds nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::registry::{self, time, Entitlement, LicenseRecord};
use super::store::sql::Sql;
use super::store::StoreError;
use super::{ApiError, Service};
use crate::license::Caps;
use crate::node::clock;

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
    Quarter,
}

impl Period {
    /// The label of the period a day falls in: `2026-12-03`, `2026-12`, `2026-Q4`.
    pub fn label(self, day: NaiveDate) -> String {
        match self {
            Period::Day => day.format("%Y-%m-%d").to_string(),
            Period::Month => day.format("%Y-%m").to_string(),
            Period::Quarter => format!("{}-Q{}", day.year(), day.month0() / 3 + 1),
        }
    }
}

/// Usage in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    pub period: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl PeriodUsage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A node's license as the vendor oversees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub model_id: String,
    pub license_id: String,
    pub serial: u64,
    /// `active` (its lease runs), `lapsed` (its lease ended without a renewal) or
    /// `revoked`.
    pub phase: String,
    pub expires_at: DateTime<Utc>,
    /// When its current license was issued: the last renewal.
    pub last_renewal: DateTime<Utc>,
    pub renewals: u64,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    /// What the server found wrong with its usage ledger.
    pub findings: Vec<String>,
    /// Usage per day (last 31 days with any).
    pub daily: Vec<PeriodUsage>,
}

/// An organization under oversight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgOverview {
    pub org: String,
    pub entitlements: Vec<Entitlement>,
    pub nodes: Vec<NodeStatus>,
    /// The organization's usage (all its nodes) per day, month and quarter.
    pub daily: Vec<PeriodUsage>,
    pub monthly: Vec<PeriodUsage>,
    pub quarterly: Vec<PeriodUsage>,
    /// The caps in force per node (those of its newest current entitlement).
    pub caps: Caps,
}

/// Each node's usage per day: node id → day → usage.
type Daily = BTreeMap<String, BTreeMap<NaiveDate, PeriodUsage>>;

fn daily_usage(sql: &mut dyn Sql, org: &str) -> Result<Daily, StoreError> {
    let rows = sql.query(
        "SELECT node_id, received_at, since, requests, prompt_tokens, completion_tokens
         FROM checkpoints WHERE org = $1 ORDER BY node_id, id",
        &[org.into()],
    )?;
    let mut out: Daily = BTreeMap::new();
    // Per node and run: the last totals seen.
    let mut last: BTreeMap<(String, i64), [u64; 3]> = BTreeMap::new();
    for row in rows {
        let node = row.text(0)?;
        let day = time(row.int(1)?).date_naive();
        let since = row.opt_int(2)?.unwrap_or(0);
        let now = [
            row.int(3)?.max(0) as u64,
            row.int(4)?.max(0) as u64,
            row.int(5)?.max(0) as u64,
        ];
        // The highest totals of the run so far: a checkpoint that arrives late (lower
        // than one already counted) adds nothing and lowers nothing.
        let best = last.entry((node.clone(), since)).or_default();
        let delta: Vec<u64> = now
            .iter()
            .zip(best.iter())
            .map(|(n, b)| n.saturating_sub(*b))
            .collect();
        for (b, n) in best.iter_mut().zip(now) {
            *b = (*b).max(n);
        }
        let u = out
            .entry(node)
            .or_default()
            .entry(day)
            .or_insert_with(|| PeriodUsage {
                period: Period::Day.label(day),
                ..PeriodUsage::default()
            });
        u.requests = u.requests.saturating_add(delta[0]);
        u.prompt_tokens = u.prompt_tokens.saturating_add(delta[1]);
        u.completion_tokens = u.completion_tokens.saturating_add(delta[2]);
    }
    Ok(out)
}

/// Sum days into periods, oldest first.
pub fn group(days: &BTreeMap<NaiveDate, PeriodUsage>, period: Period) -> Vec<PeriodUsage> {
    let mut grouped: BTreeMap<String, PeriodUsage> = BTreeMap::new();
    for (day, u) in days {
        let label = period.label(*day);
        let g = grouped.entry(label.clone()).or_insert_with(|| PeriodUsage {
            period: label,
            ..PeriodUsage::default()
        });
        g.requests = g.requests.saturating_add(u.requests);
        g.prompt_tokens = g.prompt_tokens.saturating_add(u.prompt_tokens);
        g.completion_tokens = g.completion_tokens.saturating_add(u.completion_tokens);
    }
    grouped.into_values().collect()
}

/// The last `n` entries.
fn tail(mut v: Vec<PeriodUsage>, n: usize) -> Vec<PeriodUsage> {
    let drop = v.len().saturating_sub(n);
    v.drain(..drop);
    v
}

fn overview(sql: &mut dyn Sql, org: &str, now: DateTime<Utc>) -> Result<OrgOverview, StoreError> {
    let entitlements: Vec<Entitlement> = registry::entitlements(sql)?
        .into_iter()
        .filter(|e| e.org == org)
        .collect();
    let licenses: Vec<LicenseRecord> = registry::licenses(sql)?
        .into_iter()
        .filter(|l| l.org == org)
        .collect();
    let findings = registry::usage(sql, Some(org), DateTime::<Utc>::UNIX_EPOCH, now)?;
    let daily = daily_usage(sql, org)?;
    let mut all_days: BTreeMap<NaiveDate, PeriodUsage> = BTreeMap::new();
    for days in daily.values() {
        for (day, u) in days {
            let t = all_days.entry(*day).or_insert_with(|| PeriodUsage {
                period: u.period.clone(),
                ..PeriodUsage::default()
            });
            t.requests = t.requests.saturating_add(u.requests);
            t.prompt_tokens = t.prompt_tokens.saturating_add(u.prompt_tokens);
            t.completion_tokens = t.completion_tokens.saturating_add(u.completion_tokens);
        }
    }
    let nodes = licenses
        .into_iter()
        .map(|l| {
            let phase = if l.revoked_at.is_some() {
                "revoked"
            } else if l.expires_at > now {
                "active"
            } else {
                "lapsed"
            };
            let node_findings = findings
                .iter()
                .filter(|u| u.node_id == l.node_id)
                .flat_map(|u| u.ledger_findings.clone())
                .collect();
            let days = daily.get(&l.node_id).cloned().unwrap_or_default();
            NodeStatus {
                phase: phase.into(),
                findings: node_findings,
                daily: tail(group(&days, Period::Day), 31),
                node_id: l.node_id,
                model_id: l.model_id,
                license_id: l.license_id,
                serial: l.serial,
                expires_at: l.expires_at,
                last_renewal: l.issued_at,
                renewals: l.renewals,
                revoked_at: l.revoked_at,
                revoke_reason: l.revoke_reason,
            }
        })
        .collect();
    let caps = entitlements
        .iter()
        .rev()
        .find(|e| e.revoked_at.is_none() && e.term_end > now)
        .map(|e| e.caps.clone())
        .unwrap_or_default();
    Ok(OrgOverview {
        org: org.to_string(),
        entitlements,
        nodes,
        daily: tail(group(&all_days, Period::Day), 31),
        monthly: tail(group(&all_days, Period::Month), 12),
        quarterly: tail(group(&all_days, Period::Quarter), 8),
        caps,
    })
}

impl Service {
    /// An organization's licenses, nodes and usage.
    pub async fn org_overview(&self, org: &str) -> Result<OrgOverview, ApiError> {
        let org = org.to_string();
        let known = org.clone();
        let overview = self
            .store
            .transact(move |sql| overview(sql, &org, clock::system_now()))
            .await?;
        if overview.entitlements.is_empty()
            && overview.nodes.is_empty()
            && !self.orgs().await?.iter().any(|o| o.name == known)
        {
            return Err(ApiError::NotFound(format!(
                "no organization '{known}' (neither invited nor entitled)"
            )));
        }
        Ok(overview)
    }

    /// The node's organization, for a check that the caller may act on it.
    pub async fn node_org(&self, node_id: &str) -> Result<String, ApiError> {
        let node = node_id.to_string();
        let org = self
            .store
            .transact(move |sql| {
                sql.query_opt(
                    "SELECT org FROM licenses WHERE node_id = $1 UNION SELECT org FROM enrollments WHERE node_id = $1",
                    &[node.as_str().into()],
                )?
                .map(|row| row.text(0))
                .transpose()
            })
            .await?;
        org.ok_or_else(|| ApiError::NotFound(format!("no node {node_id}")))
    }
}
