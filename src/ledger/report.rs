//! `audit report`'s tally of a ledger: one row per (period, license, model, client key)
//! with requests, tokens, cancellations, filtered answers, refusals and interrupted
//! requests. The license server builds its audit reports with the same function, so a
//! report downloaded from the portal equals `leasehold audit report` on the node's
//! ledger for the same period.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use super::record::{self, Entry};

/// How records are grouped in time.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Period {
    Day,
    Month,
    Quarter,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Quarter => "quarter",
        }
    }

    /// The period's label for a time: `2026-10-03`, `2026-10` or `2026-Q4` (UTC).
    pub fn label(self, at: DateTime<Utc>) -> String {
        match self {
            Period::Day => at.format("%Y-%m-%d").to_string(),
            Period::Month => at.format("%Y-%m").to_string(),
            Period::Quarter => format!("{}-Q{}", at.year(), (at.month() - 1) / 3 + 1),
        }
    }
}

/// One row of a report.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReportRow {
    pub period: String,
    pub license_id: String,
    pub model_id: String,
    pub client_key: String,
    /// Served requests (answered, cancelled, filtered or interrupted).
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cancelled: u64,
    /// Answers the license's output filter ended.
    pub filtered: u64,
    /// Turned down before admission, or ended by an error.
    pub refused: u64,
    /// Admitted, with no `completed` record: the node stopped mid-answer (a crash,
    /// `kill -9`), so the completion tokens are unknown.
    pub interrupted: u64,
}

/// The CSV header (and table columns), in order.
pub const REPORT_COLUMNS: [&str; 11] = [
    "period",
    "license_id",
    "model_id",
    "client_key",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cancelled",
    "filtered",
    "refused",
    "interrupted",
];

impl ReportRow {
    pub fn cells(&self) -> [String; 11] {
        [
            self.period.clone(),
            self.license_id.clone(),
            self.model_id.clone(),
            self.client_key.clone(),
            self.requests.to_string(),
            self.prompt_tokens.to_string(),
            self.completion_tokens.to_string(),
            self.cancelled.to_string(),
            self.filtered.to_string(),
            self.refused.to_string(),
            self.interrupted.to_string(),
        ]
    }
}

/// The sums of a report's rows (saturating).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReportTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cancelled: u64,
    pub filtered: u64,
    pub refused: u64,
    pub interrupted: u64,
}

pub fn totals(rows: &[ReportRow]) -> ReportTotals {
    let sum = |f: fn(&ReportRow) -> u64| rows.iter().map(f).fold(0u64, u64::saturating_add);
    ReportTotals {
        requests: sum(|r| r.requests),
        prompt_tokens: sum(|r| r.prompt_tokens),
        completion_tokens: sum(|r| r.completion_tokens),
        cancelled: sum(|r| r.cancelled),
        filtered: sum(|r| r.filtered),
        refused: sum(|r| r.refused),
        interrupted: sum(|r| r.interrupted),
    }
}

/// The report as CSV (RFC 4180): the header line, then one line per row.
pub fn csv(rows: &[ReportRow]) -> String {
    let mut out = REPORT_COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.cells().map(|c| csv_cell(&c)).join(","));
        out.push('\n');
    }
    out
}

/// A cell as CSV: quoted when it holds a separator, and prefixed with `'` when a
/// spreadsheet would take it for a formula (a hand-written ledger can hold anything;
/// the client key `-`, "no key", stays as it is).
fn csv_cell(cell: &str) -> String {
    let formula =
        cell.starts_with(['=', '+', '@', '\t', '\r']) || (cell.starts_with('-') && cell.len() > 1);
    let guarded = if formula {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// A report row: (period, license, model, client key).
type ReportKey = (String, String, String, String);

fn report_row(rows: &mut BTreeMap<ReportKey, ReportRow>, key: ReportKey) -> &mut ReportRow {
    rows.entry(key.clone()).or_insert_with(|| ReportRow {
        period: key.0,
        license_id: key.1,
        model_id: key.2,
        client_key: key.3,
        ..ReportRow::default()
    })
}

/// The tally of a ledger: one row per (period, license, model, client key) over the
/// intact records dated in `[from, to)`, and the number of lines that are not intact
/// records (left out). A request belongs to the period it was admitted (or refused)
/// in; its `completed` record joins it whenever it came. Reads untrusted bytes: fuzzed
/// (`crate::fuzzing`).
pub fn report_rows(
    ledger: &[u8],
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    by: Period,
) -> (Vec<ReportRow>, u64) {
    let mut rows: BTreeMap<ReportKey, ReportRow> = Default::default();
    let mut unreadable = 0u64;
    // Admitted requests waiting for their completed record: request id → row.
    let mut open: HashMap<String, ReportKey> = Default::default();
    for parsed in record::each(ledger) {
        let Some(parsed) = parsed.filter(|p| p.actual_hash == p.written_hash) else {
            unreadable += 1;
            continue;
        };
        let at = parsed.body.at;
        let in_range = !(from.is_some_and(|f| at < f) || to.is_some_and(|t| at >= t));
        match parsed.body.entry {
            Entry::Request {
                license_id,
                model_id,
                client_key,
                prompt_tokens,
                completion_tokens,
                outcome,
                ..
            } if in_range => {
                let key = (by.label(at), license_id, model_id, client_key);
                let row = report_row(&mut rows, key);
                if !outcome.served() {
                    row.refused += 1;
                    continue;
                }
                row.requests += 1;
                // Token counts come from the file: a hand-written ledger can carry them
                // past 2^64 - 1 (`audit verify` reports it). Saturate, never panic.
                row.prompt_tokens = row.prompt_tokens.saturating_add(prompt_tokens);
                row.completion_tokens = row.completion_tokens.saturating_add(completion_tokens);
                row.cancelled += u64::from(outcome == record::Outcome::Cancelled);
                row.filtered += u64::from(outcome == record::Outcome::Filtered);
            }
            Entry::Admitted {
                request_id,
                license_id,
                model_id,
                client_key,
                prompt_tokens,
                ..
            } if in_range => {
                let key = (by.label(at), license_id, model_id, client_key);
                let row = report_row(&mut rows, key.clone());
                row.requests += 1;
                row.prompt_tokens = row.prompt_tokens.saturating_add(prompt_tokens);
                row.interrupted += 1; // until its completed record turns up
                open.insert(request_id, key);
            }
            Entry::Completed {
                request_id,
                completion_tokens,
                outcome,
                ..
            } => {
                // Counted in the period its request was admitted in.
                if let Some(row) = open.remove(&request_id).and_then(|k| rows.get_mut(&k)) {
                    row.interrupted -= 1;
                    row.completion_tokens = row.completion_tokens.saturating_add(completion_tokens);
                    row.cancelled += u64::from(outcome == record::Outcome::Cancelled);
                    row.filtered += u64::from(outcome == record::Outcome::Filtered);
                }
            }
            _ => {}
        }
    }
    (rows.into_values().collect(), unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::{Outcome, RecordBody};

    #[test]
    fn report_token_sums_past_u64_saturate_instead_of_panicking() {
        // A hand-written ledger (intact hashes) whose token counts add past 2^64 - 1:
        // found by fuzzing `audit report`.
        let mut text = String::new();
        let mut prev = [0; 32];
        for (seq, tokens) in [u64::MAX - 1, 5].into_iter().enumerate() {
            let body = RecordBody {
                seq: seq as u64,
                prev,
                at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                entry: Entry::Request {
                    request_id: format!("r{seq}"),
                    license_id: "l".into(),
                    model_id: "m".into(),
                    prompt_tokens: tokens,
                    completion_tokens: tokens,
                    outcome: Outcome::Ok,
                    client_key: "-".into(),
                    prompt_sha256: None,
                    filter_rule: None,
                },
            };
            let (line, hash) = record::encode(&body, None);
            text.push_str(&line);
            prev = hash;
        }
        let (rows, unreadable) = report_rows(text.as_bytes(), None, None, Period::Month);
        assert_eq!(unreadable, 0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].requests, 2);
        assert_eq!(rows[0].prompt_tokens, u64::MAX);
        assert_eq!(rows[0].completion_tokens, u64::MAX);
    }
}
