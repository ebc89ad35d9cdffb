//! The node's checkpoint reports: between renewals, tell the license server where the
//! usage ledger stands, at least once per checkpoint interval while it is reachable.
//!
//! Why: a root operator can restore a backup of the node directory (or a VM snapshot),
//! ledger, `ledger.head` and trusted-time state together. Nothing on the node can tell
//! offline; the server can, because it remembers the last checkpoint it acknowledged
//! and the restored ledger goes backwards or forks from it. Reporting every interval,
//! not only at renewal, bounds what a restore hides to one interval.
//!
//! - [`LedgerReports`]: one report at a time (a checkpoint report or a renewal), each
//!   naming the last acknowledged checkpoint; an acknowledged one is recorded in the
//!   ledger (`reported`), so the next report continues it. An idle node reports its
//!   last acknowledged position again instead of signing new records.
//! - [`Checkpointer`]: the periodic task. A receipt is verified like a renewal response
//!   (`protocol::open_answer`: trusted issuer in scope, this node, this report's nonce)
//!   before its `server_time` raises the trusted-time floor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::lifecycle::Lifecycle;
use super::renewal::{ClientError, ServerClient};
use crate::crypto::random;
use crate::ledger::record::Entry;
use crate::ledger::{Ledger, LedgerError, Position};
use crate::license::TrustRoots;
use crate::node::clock;
use crate::protocol::checkpoint::{self, CheckpointReceiptBody};
use crate::protocol::{self, Expected, LedgerAnchor, LedgerPosition, LicenseRef, UsageCheckpoint};

/// The default checkpoint interval (`serve --checkpoint-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// What a report says of the ledger: the totals at a signed checkpoint, and where
/// the ledger stands.
pub fn usage_of(p: &Position) -> UsageCheckpoint {
    UsageCheckpoint {
        since: Some(crate::format::time::whole_seconds(p.since)),
        requests: p.totals.requests,
        prompt_tokens: p.totals.prompt_tokens,
        completion_tokens: p.totals.completion_tokens,
        ledger: Some(LedgerPosition {
            ledger_id: p.ledger_id,
            seq: p.seq,
            hash: p.hash,
            reported: p.reported.map(|(seq, hash)| LedgerAnchor { seq, hash }),
        }),
        tpm_rollbacks: None,
    }
}

/// The last position a server acknowledged in this process, and the ledger's head
/// (sequence number) right after its `reported` record.
#[derive(Debug, Clone, Copy)]
struct Acknowledged {
    position: Position,
    head: u64,
}

#[derive(Debug, Default)]
struct Reporting {
    acknowledged: Option<Acknowledged>,
    /// The node is stopping: no report starts any more.
    closed: bool,
}

/// Reports of the ledger to the license server, one at a time: two in flight could
/// each name a checkpoint the other has not recorded yet, which the server would
/// rightly flag.
pub struct LedgerReports {
    ledger: Arc<Ledger>,
    state: tokio::sync::Mutex<Reporting>,
}

/// One report in progress; the next waits until this one is dropped.
pub struct Report<'a> {
    ledger: &'a Ledger,
    state: tokio::sync::MutexGuard<'a, Reporting>,
    /// The position to report.
    pub position: Position,
}

impl LedgerReports {
    pub fn new(ledger: Arc<Ledger>) -> Arc<LedgerReports> {
        Arc::new(LedgerReports {
            ledger,
            state: tokio::sync::Mutex::new(Reporting::default()),
        })
    }

    /// The ledger reported.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Start a report: the last acknowledged position when nothing was recorded since,
    /// else a fresh signed checkpoint. `None` once [`LedgerReports::close`] was called.
    pub async fn begin(&self) -> Result<Option<Report<'_>>, LedgerError> {
        self.begin_with(false).await
    }

    /// [`LedgerReports::begin`], with a fresh signed checkpoint even when nothing was
    /// recorded since the last one (an audit answer needs one dated after its period).
    pub async fn begin_with(&self, fresh: bool) -> Result<Option<Report<'_>>, LedgerError> {
        let state = self.state.lock().await;
        if state.closed {
            return Ok(None);
        }
        let position = match state.acknowledged {
            Some(a) if !fresh && self.ledger.head().seq == a.head => a.position,
            _ => self.ledger.checkpoint().await?,
        };
        Ok(Some(Report {
            ledger: &self.ledger,
            state,
            position,
        }))
    }

    /// At shutdown, before the ledger closes: let the report in flight record its
    /// answer (a server holding a checkpoint the ledger does not name as acknowledged
    /// would flag the next start as unconfirmed), for up to `patience`, and start no
    /// other.
    pub async fn close(&self, patience: Duration) {
        match tokio::time::timeout(patience, self.state.lock()).await {
            Ok(mut state) => state.closed = true,
            Err(_) => tracing::warn!(
                "a report to the license server is still in flight at shutdown; the next start may be flagged as unconfirmed"
            ),
        }
    }
}

impl Report<'_> {
    pub fn usage(&self) -> UsageCheckpoint {
        usage_of(&self.position)
    }

    /// The server holds this position now: record that in the ledger, so the next
    /// report names it as the last acknowledged.
    pub async fn acknowledged(mut self) {
        if matches!(self.state.acknowledged, Some(a) if a.position == self.position) {
            return;
        }
        let entry = Entry::Reported {
            seq: self.position.seq,
            hash: self.position.hash,
        };
        self.state.acknowledged = match self.ledger.append(entry).await {
            Ok(head) => Some(Acknowledged {
                position: self.position,
                head,
            }),
            Err(e) => {
                tracing::error!(
                    "cannot record the server's acknowledgement in the usage ledger: {e}"
                );
                None
            }
        };
    }
}

/// Checkpoint reports as `/v1/license` shows them (under `renewal`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStatus {
    pub interval_seconds: u64,
    pub reports: u64,
    pub last_success: Option<DateTime<Utc>>,
    /// The ledger checkpoint the server acknowledged last.
    pub acknowledged_seq: Option<u64>,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// Why a report did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot checkpoint the usage ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "the license server's receipt acknowledges checkpoint {found}, not the reported {sent}"
    )]
    WrongCheckpoint { sent: u64, found: u64 },
    #[error("the node is stopping")]
    Closed,
}

/// Reports the ledger's position every interval for as long as the node runs.
pub struct Checkpointer {
    client: ServerClient,
    lifecycle: Arc<Lifecycle>,
    reports: Arc<LedgerReports>,
    interval: Duration,
    status: Mutex<CheckpointStatus>,
}

impl Checkpointer {
    pub fn new(
        client: ServerClient,
        lifecycle: Arc<Lifecycle>,
        reports: Arc<LedgerReports>,
        interval: Duration,
    ) -> Arc<Checkpointer> {
        Arc::new(Checkpointer {
            status: Mutex::new(CheckpointStatus {
                interval_seconds: interval.as_secs(),
                ..CheckpointStatus::default()
            }),
            client,
            lifecycle,
            reports,
            interval,
        })
    }

    pub fn status(&self) -> CheckpointStatus {
        self.status.lock().unwrap().clone()
    }

    /// Report now, then every interval (a little less, at random, so a fleet spreads
    /// out and the interval is never exceeded by the wait).
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.report().await {
                Err(ReportError::Closed) => return,
                Ok(acknowledged) => {
                    let mut s = self.status.lock().unwrap();
                    s.reports += 1;
                    s.last_success = Some(clock::system_now());
                    s.acknowledged_seq = Some(acknowledged);
                    s.consecutive_failures = 0;
                    s.last_error = None;
                }
                Err(e) => {
                    let failures = {
                        let mut s = self.status.lock().unwrap();
                        s.failures += 1;
                        s.consecutive_failures += 1;
                        s.last_error = Some(e.to_string());
                        s.consecutive_failures
                    };
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            "checkpoint report failed ({failures} in a row): {e}; retrying in {} s",
                            self.interval.as_secs()
                        );
                    }
                }
            }
            let unit = u32::from_le_bytes(random::bytes::<4>()) as f64 / u32::MAX as f64;
            tokio::time::sleep(self.interval.mul_f64(0.9 + 0.1 * unit)).await;
        }
    }

    /// One report; the acknowledged checkpoint's sequence number.
    async fn report(&self) -> Result<u64, ReportError> {
        report_once(&self.client, &self.lifecycle, &self.reports, false).await
    }
}

/// Report the ledger's position once (a fresh checkpoint when `fresh`); the
/// acknowledged checkpoint's sequence number.
pub async fn report_once(
    client: &ServerClient,
    lifecycle: &Lifecycle,
    reports: &LedgerReports,
    fresh: bool,
) -> Result<u64, ReportError> {
    let status = lifecycle.status();
    let body = &status.license.body;
    let report = reports
        .begin_with(fresh)
        .await?
        .ok_or(ReportError::Closed)?;
    let (document, nonce) = checkpoint::sign_report(
        lifecycle.identity(),
        &body.model.model_id,
        LicenseRef {
            license_id: body.license_id.clone(),
            serial: body.serial,
        },
        report.usage(),
        clock::system_now(),
    );
    let bytes = client
        .post("/v1/checkpoints", document.render().into_bytes())
        .await?;
    let node_id = lifecycle.identity().public().node_id();
    let (receipt, _) = protocol::open_answer::<CheckpointReceiptBody>(
        &bytes,
        &TrustRoots::compiled_in(),
        &Expected {
            node_id: &node_id,
            nonce,
            scope: Some((&body.licensee, &body.model.model_id)),
        },
    )
    .map_err(ClientError::from)?;
    let sent = LedgerAnchor {
        seq: report.position.seq,
        hash: report.position.hash,
    };
    if receipt.acknowledged != sent {
        return Err(ReportError::WrongCheckpoint {
            sent: sent.seq,
            found: receipt.acknowledged.seq,
        });
    }
    lifecycle.observe_server_time(receipt.server_time);
    report.acknowledged().await;
    Ok(sent.seq)
}
