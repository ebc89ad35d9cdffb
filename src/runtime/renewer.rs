//! Renewal while serving: [`Renewer`] renews the license in force at about half the
//! lease; on failure it retries with exponential backoff and jitter. While the server
//! is unreachable the node serves until lease + grace end, then lapses; the next
//! successful renewal revives it without a restart. A "revoked" answer lapses the node
//! at once; "ended" lets the lease run out. The client side of the protocol is
//! [`super::renewal`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::checkpoints::{report_once, CheckpointStatus, Checkpointer, LedgerReports};
use super::lifecycle::{Lifecycle, Phase};
use super::renewal::{backoff, sleep_jittered, write_license, ServerClient};
use crate::format::time::rfc3339;
use crate::ledger::audit::{self, BuildError};
use crate::ledger::Ledger;
use crate::license_server::audits::AnswerReceipt;
use crate::node::clock;
use crate::protocol::{AuditCall, Decision, LicenseRef, RefusalReason};

/// How long an audit answer's upload may take (it can hold a quarter of records).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Renewal state, shown in `/v1/license`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RenewalStatus {
    pub server: String,
    pub last_success: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub renewals: u64,
    /// Attempts that failed (server unreachable, bad answer) since start.
    pub failures: u64,
    /// Answers that refused (revoked, ended, denied, pending) since start.
    pub refusals: u64,
    /// Server clock minus node clock at the last answer, in seconds.
    pub clock_offset_seconds: Option<i64>,
    /// The server's last refusal (revoked, ended, …).
    pub refused: Option<String>,
    /// The checkpoint reports between renewals (absent without a usage ledger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointStatus>,
    /// The last audit the vendor requested of this node (absent until one is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

/// An audit the license server asked this node to answer, and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct AuditStatus {
    pub audit_id: String,
    /// The period asked for: ledger records dated in `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// When a renewal response first carried the request.
    pub requested_at: DateTime<Utc>,
    /// When the server accepted this node's answer, and the records it held.
    pub answered_at: Option<DateTime<Utc>>,
    pub records: Option<u64>,
    /// Why the last attempt to answer did not go through (retried at the next renewal).
    pub last_error: Option<String>,
}

/// Renews the license in force for as long as the node runs.
pub struct Renewer {
    client: ServerClient,
    lifecycle: Arc<Lifecycle>,
    license_path: PathBuf,
    /// The usage ledger whose checkpoints ride on each renewal.
    reports: Option<Arc<LedgerReports>>,
    checkpointer: OnceLock<Arc<Checkpointer>>,
    status: Mutex<RenewalStatus>,
}

impl Renewer {
    pub fn new(
        client: ServerClient,
        lifecycle: Arc<Lifecycle>,
        license_path: PathBuf,
        ledger: Option<Arc<Ledger>>,
    ) -> Arc<Renewer> {
        Arc::new(Renewer {
            status: Mutex::new(RenewalStatus {
                server: client.url().to_string(),
                ..RenewalStatus::default()
            }),
            client,
            lifecycle,
            license_path,
            reports: ledger.map(LedgerReports::new),
            checkpointer: OnceLock::new(),
        })
    }

    pub fn status(&self) -> RenewalStatus {
        let mut status = self.status.lock().unwrap().clone();
        status.checkpoints = self.checkpointer.get().map(|c| c.status());
        status
    }

    /// Between renewals, report the usage ledger's position every `interval` (now, and
    /// for as long as the node runs). Without a ledger there is nothing to report.
    pub fn report_checkpoints(&self, interval: Duration) {
        let Some(reports) = &self.reports else {
            return;
        };
        let checkpointer = Checkpointer::new(
            self.client.clone(),
            self.lifecycle.clone(),
            reports.clone(),
            interval,
        );
        if self.checkpointer.set(checkpointer.clone()).is_ok() {
            tokio::spawn(checkpointer.run());
        }
    }

    /// At shutdown, before the ledger closes: wait (a few seconds at most) for a report
    /// in flight to record the server's answer, and start no other.
    pub async fn finish_reports(&self) {
        if let Some(reports) = &self.reports {
            reports.close(Duration::from_secs(5)).await;
        }
    }

    /// The lease length of the license in force.
    fn lease(&self) -> Duration {
        let body = &self.lifecycle.status().license.body;
        (body.expires_at - body.not_before)
            .to_std()
            .unwrap_or(Duration::from_secs(60))
    }

    /// When to try next after a success: half of what is left of the lease.
    fn next_after_success(&self) -> Duration {
        let status = self.lifecycle.status();
        if status.phase == Phase::Serving {
            Duration::from_secs((status.seconds_left.max(2) / 2) as u64)
        } else {
            self.lease() / 2
        }
    }

    /// Run until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut wait = self.next_after_success();
        loop {
            sleep_jittered(wait.max(Duration::from_millis(500))).await;
            wait = match self.attempt().await {
                Ok(()) => self.next_after_success(),
                Err(e) => {
                    let failures = {
                        let mut s = self.status.lock().unwrap();
                        s.consecutive_failures += 1;
                        s.failures += 1;
                        s.last_error = Some(e.clone());
                        s.consecutive_failures
                    };
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            "renewal failed ({failures} in a row): {e}; serving continues until the lease and grace end"
                        );
                    }
                    let cap = (self.lease() / 4).max(Duration::from_secs(2));
                    backoff(failures, cap)
                }
            };
        }
    }

    /// One renewal attempt. `Err` only for failures worth retrying soon.
    async fn attempt(&self) -> Result<(), String> {
        let status = self.lifecycle.status();
        let body = &status.license.body;
        let current = LicenseRef {
            license_id: body.license_id.clone(),
            serial: body.serial,
        };
        let now = clock::system_now();
        self.status.lock().unwrap().last_attempt = Some(now);
        // Held until the server's answer is recorded: no checkpoint report in between.
        let report = match &self.reports {
            Some(reports) => match reports.begin().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cannot checkpoint the usage ledger for the renewal: {e}");
                    None
                }
            },
            None => None,
        };
        let opened = self
            .client
            .exchange(
                self.lifecycle.identity(),
                &body.model.model_id,
                Some((&current, &body.licensee)),
                report.as_ref().map(|r| r.usage()).unwrap_or_default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let offset = opened.clock_offset(clock::system_now()).num_seconds();
        self.lifecycle.observe_server_time(opened.body.server_time);
        let record = |refused: Option<String>| {
            let mut s = self.status.lock().unwrap();
            s.consecutive_failures = 0;
            s.last_error = None;
            s.last_success = Some(clock::system_now());
            s.clock_offset_seconds = Some(offset);
            s.refused = refused;
        };
        let audit_call = opened.body.audit.clone();
        match opened.body.decision {
            Decision::Renewed { license } => {
                if let Some(report) = report {
                    // The server now holds this checkpoint; the next report names it.
                    report.acknowledged().await;
                }
                let accepted = self
                    .lifecycle
                    .renew(license.as_bytes())
                    .await
                    .map_err(|e| format!("the renewed license was refused: {e}"))?;
                write_license(&self.license_path, &license).map_err(|e| e.to_string())?;
                record(None);
                self.status.lock().unwrap().renewals += 1;
                tracing::debug!(
                    "renewed from {}: serial {}",
                    self.client.url(),
                    accepted.body.serial
                );
                if let Some(call) = audit_call {
                    self.answer_audit(call).await;
                }
                Ok(())
            }
            Decision::Refused { reason, message } => {
                record(Some(format!("{}: {message}", reason.as_str())));
                self.status.lock().unwrap().refusals += 1;
                match reason {
                    RefusalReason::Revoked if self.lifecycle.revoked().is_none() => {
                        self.lifecycle.revoke(&message).await;
                        let mut revoked = self.license_path.clone().into_os_string();
                        revoked.push(".revoked");
                        if let Err(e) = std::fs::rename(&self.license_path, &revoked) {
                            tracing::warn!(
                                "cannot move the revoked license {} aside: {e}",
                                self.license_path.display()
                            );
                        }
                    }
                    RefusalReason::Revoked => {}
                    _ => tracing::warn!(
                        "the license server will not renew ({}): {message}; serving continues until the lease and grace end",
                        reason.as_str()
                    ),
                }
                Ok(())
            }
            Decision::Pending { message, .. } => {
                record(Some(format!("pending: {message}")));
                self.status.lock().unwrap().refusals += 1;
                Ok(())
            }
        }
    }
}

impl Renewer {
    /// Answer the audit a renewal response asked for: report a fresh checkpoint (so the
    /// server holds the run's end), then upload the ledger records of the period. A
    /// failure is logged and kept in `/v1/license`; the server asks again at the next
    /// renewal.
    async fn answer_audit(&self, call: AuditCall) {
        let now = clock::system_now();
        let new = {
            let mut s = self.status.lock().unwrap();
            let new = s.audit.as_ref().is_none_or(|a| a.audit_id != call.audit_id);
            if new {
                s.audit = Some(AuditStatus {
                    audit_id: call.audit_id.clone(),
                    from: call.from,
                    to: call.to,
                    requested_at: now,
                    answered_at: None,
                    records: None,
                    last_error: None,
                });
            }
            new
        };
        if new {
            tracing::info!(
                "the vendor requested an audit of this node's usage from {} to {} (audit {}); answering with the usage ledger's records of that period (no prompts)",
                rfc3339(call.from),
                rfc3339(call.to),
                call.audit_id
            );
        }
        let result = self.upload_answer(&call).await;
        let mut s = self.status.lock().unwrap();
        let Some(status) = s.audit.as_mut().filter(|a| a.audit_id == call.audit_id) else {
            return;
        };
        match result {
            Ok(receipt) => {
                tracing::info!(
                    "answered audit {}: {} ledger records (records {} to {}) accepted by the license server",
                    call.audit_id,
                    receipt.records,
                    receipt.first_seq,
                    receipt.last_seq
                );
                status.answered_at = Some(clock::system_now());
                status.records = Some(receipt.records);
                status.last_error = None;
            }
            Err(e) => {
                if status.last_error.as_ref() != Some(&e) {
                    tracing::warn!(
                        "cannot answer audit {} yet: {e}; trying again at the next renewal",
                        call.audit_id
                    );
                }
                status.last_error = Some(e);
            }
        }
    }

    async fn upload_answer(&self, call: &AuditCall) -> Result<AnswerReceipt, String> {
        let Some(reports) = &self.reports else {
            return Err(
                "this node keeps no usage ledger (serve --no-ledger), so it has no records to answer with"
                    .into(),
            );
        };
        // The run ends at the first checkpoint after the period that a server
        // acknowledged; when there is none yet (the period just ended), at a fresh one
        // reported now.
        let path = reports.ledger().path().to_path_buf();
        let build = |end: audit::End| {
            let (identity, path, call) = (
                self.lifecycle.identity().clone(),
                path.clone(),
                call.clone(),
            );
            tokio::task::spawn_blocking(move || {
                audit::build_from_file(
                    &identity,
                    &path,
                    Some(&call.audit_id),
                    call.from,
                    call.to,
                    end,
                    clock::system_now(),
                )
            })
        };
        let built = build(audit::End::Acknowledged)
            .await
            .map_err(|e| format!("building the answer failed: {e}"))?;
        let answer = match built {
            Err(BuildError::NotYet { .. }) => {
                let end = report_once(&self.client, &self.lifecycle, reports, true)
                    .await
                    .map_err(|e| format!("cannot report a fresh checkpoint: {e}"))?;
                build(audit::End::ReportedCheckpoint(end))
                    .await
                    .map_err(|e| format!("building the answer failed: {e}"))?
            }
            other => other,
        }
        .map_err(|e: BuildError| e.to_string())?;
        let bytes = self
            .client
            .post_slow("/v1/audits/answer", answer, UPLOAD_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the server's receipt: {e}"))
    }
}
