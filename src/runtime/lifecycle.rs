//! The license lifecycle of a running node, as an explicit state machine:
//!
//! `serving ⇄ (renewed) → grace → lapsed (weights wiped) → serving again on renewal`
//!
//! Deadlines are scheduled on the monotonic clock from the moment a license is
//! verified, so changing the system clock while running neither extends nor shortens
//! a license. A renewal (same node, same model, higher serial) replaces the lease in
//! place; after a lapse it also decrypts and loads the weights again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};

use super::admission::NodeRecords;
use super::admission::{self, Refusal};
use super::engine::{Engine, LoadReport};
use crate::license::VerifiedLicense;
use crate::node::clock::TrustedClock;
use crate::node::trusted_time::{self, HEARTBEAT};
use crate::node::{clock, NodeIdentity};

/// Where a node stands with its license (in order: a later phase never serves more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Within the license's validity: serving.
    Serving,
    /// Expired, within grace: serving, with warnings.
    Grace,
    /// Past grace (or refused): not serving; weights wiped.
    Lapsed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Grace => "grace",
            Phase::Lapsed => "lapsed",
        }
    }

    pub fn serves(self) -> bool {
        self != Phase::Lapsed
    }
}

/// The license in force and its deadlines on the monotonic clock.
#[derive(Debug, Clone)]
pub struct Lease {
    pub license: VerifiedLicense,
    /// When `expires_at` arrives (grace begins).
    pub grace_at: Instant,
    /// When grace ends (lapse).
    pub lapse_at: Instant,
}

impl Lease {
    /// Schedule `license` from now: distances measured once against the trusted clock
    /// (never behind the node's high-water mark) become monotonic deadlines.
    pub fn schedule(license: VerifiedLicense, trusted: &TrustedClock) -> Lease {
        let wall = trusted.now();
        let mono = clock::monotonic_now();
        let after = |t: DateTime<Utc>| mono + (t - wall).to_std().unwrap_or(Duration::ZERO);
        Lease {
            grace_at: after(license.body.expires_at),
            lapse_at: after(license.body.grace_ends()),
            license,
        }
    }

    fn phase_at(&self, now: Instant) -> Phase {
        if now < self.grace_at {
            Phase::Serving
        } else if now < self.lapse_at {
            Phase::Grace
        } else {
            Phase::Lapsed
        }
    }
}

/// A snapshot for `/v1/license`, `status` and response headers.
#[derive(Debug, Clone)]
pub struct LicenseStatus {
    pub phase: Phase,
    pub license: VerifiedLicense,
    /// Seconds until expiry (negative once expired), on the monotonic clock.
    pub seconds_left: i64,
    /// Seconds until serving stops.
    pub seconds_to_lapse: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the new license has serial {new}, not higher than the current {current}; an older license never replaces a newer one")]
    NotNewer { current: u64, new: u64 },
    #[error("the new license is for model '{new}', but this node serves '{current}'")]
    OtherModel { current: String, new: String },
    #[error("license {0} was revoked; it is not taken back")]
    Revoked(String),
    #[error("the renewed license was accepted but the model could not be loaded again: {0}")]
    Reload(String),
}

/// What happened at a deadline, for the caller (serve) to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    EnteredGrace,
    Lapsed,
}

struct State {
    lease: Lease,
    phase: Phase,
    /// Set when the license server revoked the license: it is never taken back.
    revoked: Option<String>,
}

/// The node's license lifecycle.
pub struct Lifecycle {
    state: Mutex<State>,
    changed: Notify,
    phase_tx: watch::Sender<Phase>,
    engine: Engine,
    identity: NodeIdentity,
    /// The usage ledger's path when not the node directory's default.
    ledger: Option<PathBuf>,
    sealed_path: PathBuf,
    clock: TrustedClock,
}

impl Lifecycle {
    /// Admit `license_bytes`, decrypt and load the model; then serve.
    pub async fn start(
        license_bytes: &[u8],
        identity: NodeIdentity,
        ledger: Option<PathBuf>,
        sealed_path: &Path,
        engine: Engine,
        progress: Option<indicatif::ProgressBar>,
    ) -> Result<(Arc<Lifecycle>, LoadReport), StartError> {
        let records = NodeRecords {
            identity: &identity,
            ledger: ledger.as_deref(),
        };
        let admitted = admission::admit(license_bytes, records, sealed_path)?;
        let body = &admitted.license.body;
        let floor = admitted.knowledge.time.trusted_now(Some(body.issued_at));
        let clock = TrustedClock::start(Some(floor));
        if admitted.knowledge.state.is_none() {
            trusted_time::create(&identity, clock.now()).map_err(Refusal::from)?;
            tracing::warn!(
                "this node's trusted-time state was missing; re-established from license {} (serial {}, issued {}), which is newer than anything this node recorded",
                body.license_id,
                body.serial,
                body.issued_at
            );
        }
        // Each start is charged a heartbeat ahead, so restarts cannot stop the mark.
        trusted_time::update(&identity, |s| {
            s.raise(clock.now() + HEARTBEAT);
            s.note_serial(&body.license_id, body.serial);
        })
        .map_err(Refusal::from)?;
        let lease = Lease::schedule(admitted.license, &clock);
        drop(admitted.sealed);
        let report = engine
            .load(
                sealed_path.to_path_buf(),
                admitted.key,
                Arc::new(admitted.safeguards),
                progress,
            )
            .await
            .map_err(|_| StartError::Load("the engine stopped".into()))?
            .map_err(StartError::Load)?;
        let phase = lease.phase_at(clock::monotonic_now());
        let (phase_tx, _) = watch::channel(phase);
        Ok((
            Arc::new(Lifecycle {
                state: Mutex::new(State {
                    lease,
                    phase,
                    revoked: None,
                }),
                changed: Notify::new(),
                phase_tx,
                engine,
                identity,
                ledger,
                sealed_path: sealed_path.to_path_buf(),
                clock,
            }),
            report,
        ))
    }

    fn records(&self) -> NodeRecords<'_> {
        NodeRecords {
            identity: &self.identity,
            ledger: self.ledger.as_deref(),
        }
    }

    /// Trusted time for this running node (caps windows, deadlines).
    pub fn clock(&self) -> &TrustedClock {
        &self.clock
    }

    /// Change the node's signed state; a failure is logged (the node keeps serving
    /// under what it already verified).
    fn remember(&self, what: &str, change: impl FnOnce(&mut trusted_time::NodeStateBody)) {
        if let Err(e) = trusted_time::update(&self.identity, change) {
            tracing::error!("cannot record {what} in the node's trusted-time state: {e}");
        }
    }

    /// A license server's signed time (a verified response to this node's fresh
    /// nonce): a floor for trusted time.
    pub fn observe_server_time(&self, server_time: DateTime<Utc>) {
        // On a TPM node whose state was removed while it ran, this makes it again.
        if let Err(e) = trusted_time::observe_server_time(&self.identity, server_time) {
            tracing::error!(
                "cannot record the license server's time in the node's trusted-time state: {e}"
            );
        }
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Why the license was revoked, once it was.
    pub fn revoked(&self) -> Option<String> {
        self.state.lock().unwrap().revoked.clone()
    }

    /// The license server revoked the license: lapse now, wipe the weights, and never
    /// take this license id back.
    pub async fn revoke(&self, reason: &str) {
        {
            let mut state = self.state.lock().unwrap();
            if state.revoked.is_some() {
                return;
            }
            let license_id = state.lease.license.body.license_id.clone();
            self.remember("the revocation", |s| s.note_revoked(&license_id));
            state.revoked = Some(license_id);
            self.set_phase(&mut state, Phase::Lapsed);
            tracing::warn!(
                "license {} revoked by the license server ({reason}): serving stops now",
                state.lease.license.body.license_id
            );
        }
        self.changed.notify_waiters();
        let _ = self.engine.unload().await;
        tracing::warn!("model unloaded, weights wiped after the revocation");
    }

    /// The phase now: the one the deadline task last applied, or a later one when a
    /// deadline has passed on the monotonic clock and the task has not woken yet (its
    /// timer runs on the runtime's clock, which a preloaded time-faking library can
    /// slow). Requests are judged by this, so they stop at the deadline either way.
    pub fn phase(&self) -> Phase {
        let state = self.state.lock().unwrap();
        state
            .phase
            .max(state.lease.phase_at(clock::monotonic_now()))
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    pub fn status(&self) -> LicenseStatus {
        let state = self.state.lock().unwrap();
        let now = clock::monotonic_now();
        let signed = |t: Instant| {
            if t >= now {
                (t - now).as_secs() as i64
            } else {
                -((now - t).as_secs() as i64)
            }
        };
        LicenseStatus {
            phase: state.phase.max(state.lease.phase_at(now)),
            license: state.lease.license.clone(),
            seconds_left: signed(state.lease.grace_at),
            seconds_to_lapse: signed(state.lease.lapse_at),
        }
    }

    fn set_phase(&self, state: &mut State, phase: Phase) {
        state.phase = phase;
        self.phase_tx.send_replace(phase);
    }

    /// Wait for the next deadline (or a renewal) and apply it. Call in a loop.
    pub async fn next_transition(&self) -> Option<Transition> {
        let (deadline, phase) = {
            let state = self.state.lock().unwrap();
            let deadline = match state.phase {
                Phase::Serving => Some(state.lease.grace_at),
                Phase::Grace => Some(state.lease.lapse_at),
                Phase::Lapsed => None,
            };
            (deadline, state.phase)
        };
        // Keep the trusted-time high-water mark a heartbeat ahead of the time served.
        let wait = deadline.map_or(HEARTBEAT, |d| {
            d.saturating_duration_since(clock::monotonic_now())
                .min(HEARTBEAT)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.changed.notified() => return None,
        }
        self.remember("the time served", |s| s.raise(self.clock.now() + HEARTBEAT));
        let now = clock::monotonic_now();
        let mut state = self.state.lock().unwrap();
        let due = state.lease.phase_at(now);
        if state.phase != phase || due == phase {
            return None;
        }
        match due {
            Phase::Grace => {
                self.set_phase(&mut state, Phase::Grace);
                tracing::warn!(
                    "license {} expired at {}; serving in grace until {} — renew it now",
                    state.lease.license.body.license_id,
                    state.lease.license.body.expires_at,
                    state.lease.license.body.grace_ends()
                );
                Some(Transition::EnteredGrace)
            }
            Phase::Lapsed => {
                self.set_phase(&mut state, Phase::Lapsed);
                let body = state.lease.license.body.clone();
                drop(state);
                // Spent: this license (up to this serial) is never served here again.
                self.remember("the lapse", |s| s.note_spent(&body.license_id, body.serial));
                Some(Transition::Lapsed)
            }
            Phase::Serving => None,
        }
    }

    /// Unload the model and wipe its weights (called on lapse).
    pub async fn wipe(&self) {
        let _ = self.engine.unload().await;
        let state = self.state.lock().unwrap();
        tracing::warn!(
            "license {} lapsed (grace ended {}): model unloaded, weights wiped; new requests are refused until a renewed license arrives",
            state.lease.license.body.license_id,
            state.lease.license.body.grace_ends()
        );
    }

    /// Take over a renewed license: same node and model, higher serial. After a lapse
    /// the weights are decrypted and loaded again.
    pub async fn renew(&self, license_bytes: &[u8]) -> Result<VerifiedLicense, RenewError> {
        trusted_time::record(&self.identity, self.clock.now()).map_err(Refusal::from)?;
        let admitted = admission::admit(license_bytes, self.records(), &self.sealed_path)?;
        {
            let state = self.state.lock().unwrap();
            let current = &state.lease.license.body;
            let new = &admitted.license.body;
            if state.revoked.as_deref() == Some(new.license_id.as_str()) {
                return Err(RenewError::Revoked(new.license_id.clone()));
            }
            if new.model.model_id != current.model.model_id {
                return Err(RenewError::OtherModel {
                    current: current.model.model_id.clone(),
                    new: new.model.model_id.clone(),
                });
            }
            if new.serial <= current.serial {
                return Err(RenewError::NotNewer {
                    current: current.serial,
                    new: new.serial,
                });
            }
        }
        let was_lapsed = self.phase() == Phase::Lapsed;
        let new = &admitted.license.body;
        trusted_time::update(&self.identity, |s| {
            s.note_serial(&new.license_id, new.serial)
        })
        .map_err(Refusal::from)?;
        let lease = Lease::schedule(admitted.license.clone(), &self.clock);
        let safeguards = Arc::new(admitted.safeguards);
        if was_lapsed {
            drop(admitted.sealed);
            self.engine
                .load(self.sealed_path.clone(), admitted.key, safeguards, None)
                .await
                .map_err(|_| RenewError::Reload("the engine stopped".into()))?
                .map_err(RenewError::Reload)?;
        } else {
            // The renewed license's terms apply to requests admitted from now on.
            self.engine.set_safeguards(safeguards);
        }
        {
            let mut state = self.state.lock().unwrap();
            let phase = lease.phase_at(clock::monotonic_now());
            state.lease = lease;
            self.set_phase(&mut state, phase);
        }
        self.changed.notify_waiters();
        tracing::info!(
            "license renewed: serial {}, expires {}{}",
            admitted.license.body.serial,
            admitted.license.body.expires_at,
            if was_lapsed {
                "; weights decrypted and loaded again"
            } else {
                ""
            }
        );
        Ok(admitted.license)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot load the model: {0}")]
    Load(String),
}
