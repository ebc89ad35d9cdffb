//! Trusted time and what this node remembers about licenses, in `state.json`, signed by
//! the node key (an edited state file is refused rather than believed).
//!
//! - The high-water mark: the highest time this node has seen. A clock behind it by
//!   more than the tolerance is *rolled back*. While a node serves, the mark moves with
//!   the monotonic clock (see [`super::clock::TrustedClock`]) one heartbeat ahead of the
//!   time served, so freezing or rewinding the wall clock between restarts gains nothing,
//!   and a `kill -9` loses no time served.
//! - Per license id: the highest serial seen (an older license never comes back), the
//!   highest serial seen lapse here (*spent*: never served again, whatever the clock
//!   says), and whether the license server revoked it.
//!
//! An enrolled node always has a state file (`enroll` creates it). A missing one is a
//! refusal, never a fresh start: only a license issued after everything this node has
//! recorded (its usage ledger) re-establishes it.
//!
//! On a TPM node the state is also anchored in the TPM ([`StateAnchor`]): a monotonic
//! NV counter and the TPM's Clock. Each write records the counter's next value and the
//! Clock, then increments the counter, so a state file older than the last write (a
//! restored backup, a VM snapshot of the disk) is behind the TPM's counter and refused
//! ([`StateError::RolledBack`]), and a removed one too ([`StateError::RemovedFromTpmNode`]:
//! only a license server's signed time makes a new one, [`observe_server_time`]); both
//! are counted in a second TPM counter that the node's reports carry to the license
//! server. Between writes, the mark moves with the TPM's Clock ([`anchored_high_water`]),
//! so the heartbeats and starts above need not write (nor wear the TPM's NV memory)
//! unless the time served gets [`anchor_slack`] ahead of what the Clock implies.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::identity::{NodeIdentity, NodePublic};
use crate::format::{Body, DocumentKind, Envelope};
use crate::fsutil::{self, FsError, Replace};

pub const STATE_FILE: &str = "state.json";
/// Held (flock) while the state is read, changed and written, so that two processes on
/// one node directory do not lose each other's updates.
const LOCK_FILE: &str = "state.lock";

/// How often a running node moves its high-water mark, and how far ahead of the time
/// served it keeps it: each start costs at least this much trusted time.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many license ids the state remembers (oldest forgotten first, revoked ones
/// last); renewals keep their id, so a node sees few.
pub const MAX_REMEMBERED: usize = 1000;

/// How far the clock may be behind the high-water mark before it counts as rolled
/// back: covers NTP steps and VM migrations, not a day's worth of rollback. Time read
/// from a clock within the tolerance is still taken as the high-water mark, so the
/// tolerance avoids false alarms and gains an operator nothing.
pub fn rollback_tolerance() -> Duration {
    Duration::minutes(5)
}

/// How far a TPM node's time served may get ahead of the mark its TPM Clock implies
/// before a heartbeat writes the state (and increments the counter): what a `kill -9`
/// can cost the mark, inside [`rollback_tolerance`].
pub fn anchor_slack() -> Duration {
    Duration::minutes(4)
}

/// The share of the TPM's Clock credited to trusted time, in twentieths: 17/20, so that
/// a TPM oscillator as fast as the TPM specification allows (15%) does not put the mark
/// ahead of true time.
const CLOCK_CREDIT_TWENTIETHS: u128 = 17;

/// At most this much Clock is credited at once (100 years): a Clock moved far ahead
/// (TPM2_ClockSet) cannot push the mark past the end of time.
const MAX_CREDIT_MS: u64 = 100 * 366 * 24 * 3600 * 1000;

/// The signed body of `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStateBody {
    pub version: u32,
    pub node_id: String,
    pub high_water: DateTime<Utc>,
    /// Licenses this node has seen, oldest first; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<SeenLicense>,
    /// TPM nodes: the TPM counter and Clock this state was written at; omitted on nodes
    /// with file keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmMark>,
}

/// Where a TPM node's state stands against its TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmMark {
    /// The NV index of the node's TPM_NT_COUNTER.
    pub nv_index: u32,
    /// The counter's value once this write is complete (the writer increments the
    /// counter to it right after the file is in place).
    pub counter: u64,
    /// The TPM's Clock (milliseconds) when `high_water` was taken.
    pub clock_ms: u64,
}

/// A TPM counter's value and the TPM's Clock, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorReading {
    pub counter: u64,
    pub clock_ms: u64,
}

/// A failure of the TPM that anchors the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorError {
    pub message: String,
    /// The counter is gone or replaced (not a retry away): re-enrollment is needed.
    pub gone: bool,
}

impl std::fmt::Display for AnchorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<AnchorError> for StateError {
    fn from(e: AnchorError) -> StateError {
        if e.gone {
            StateError::CounterGone(e.message)
        } else {
            StateError::Tpm(e.message)
        }
    }
}

/// What anchors a node's state in hardware: a monotonic counter only it moves, and a
/// clock that cannot be set back (the TPM's NV counter and Clock).
pub trait StateAnchor: Send + Sync {
    /// The counter's NV index, recorded in the state.
    fn nv_index(&self) -> u32;
    /// The counter's value and the Clock now.
    fn read(&self) -> Result<AnchorReading, AnchorError>;
    /// Move the counter up by one; its value after.
    fn increment(&self) -> Result<u64, AnchorError>;
    /// How many rolled-back states this node has refused: a second counter, which the
    /// node's reports carry to the license server (it only ever goes up).
    fn rollbacks(&self) -> Result<u64, AnchorError>;
    /// Count one more refused rolled-back state.
    fn record_rollback(&self) -> Result<u64, AnchorError>;
}

/// The high-water mark a state written at `mark` implies at TPM Clock `clock_ms`: the
/// mark plus 17/20 of the Clock's advance since (nothing when the Clock is behind, as
/// after a power loss that lost its last save).
pub fn anchored_high_water(
    high_water: DateTime<Utc>,
    mark: &TpmMark,
    clock_ms: u64,
) -> DateTime<Utc> {
    let elapsed = clock_ms.saturating_sub(mark.clock_ms).min(MAX_CREDIT_MS);
    let credited = u128::from(elapsed) * CLOCK_CREDIT_TWENTIETHS / 20;
    let credited = Duration::milliseconds(i64::try_from(credited).unwrap_or(i64::MAX / 2));
    crate::format::time::whole_seconds(
        high_water
            .checked_add_signed(credited)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

impl Body for NodeStateBody {
    const KIND: DocumentKind = DocumentKind::NodeState;
    const VERSION: u32 = 1;
}

/// What the node remembers about one license id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeenLicense {
    pub license_id: String,
    /// The highest serial admitted here: a lower one is refused as superseded.
    pub serial: u64,
    /// The highest serial that lapsed here: it and lower ones are never served again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<u64>,
    /// The license server revoked this license id: refused for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// Why this node's memory refuses a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remembered {
    Revoked,
    Superseded { newest: u64 },
    Spent { serial: u64 },
}

impl NodeStateBody {
    pub fn new(node_id: String, high_water: DateTime<Utc>) -> NodeStateBody {
        NodeStateBody {
            version: NodeStateBody::VERSION,
            node_id,
            high_water: crate::format::time::whole_seconds(high_water),
            licenses: Vec::new(),
            tpm: None,
        }
    }

    pub fn seen(&self, license_id: &str) -> Option<&SeenLicense> {
        self.licenses.iter().find(|l| l.license_id == license_id)
    }

    /// Would this node refuse license `license_id` at `serial` for what it remembers?
    pub fn refuses(&self, license_id: &str, serial: u64) -> Option<Remembered> {
        let seen = self.seen(license_id)?;
        if seen.revoked {
            Some(Remembered::Revoked)
        } else if serial < seen.serial {
            Some(Remembered::Superseded {
                newest: seen.serial,
            })
        } else {
            seen.spent
                .filter(|&spent| serial <= spent)
                .map(|serial| Remembered::Spent { serial })
        }
    }

    fn entry(&mut self, license_id: &str) -> &mut SeenLicense {
        let index = match self
            .licenses
            .iter()
            .position(|l| l.license_id == license_id)
        {
            Some(i) => i,
            None => {
                if self.licenses.len() >= MAX_REMEMBERED {
                    let forget = self.licenses.iter().position(|l| !l.revoked).unwrap_or(0);
                    self.licenses.remove(forget);
                }
                self.licenses.push(SeenLicense {
                    license_id: license_id.to_string(),
                    serial: 0,
                    spent: None,
                    revoked: false,
                });
                self.licenses.len() - 1
            }
        };
        &mut self.licenses[index]
    }

    /// Never lowers the mark.
    pub fn raise(&mut self, t: DateTime<Utc>) {
        let t = crate::format::time::whole_seconds(t);
        self.high_water = self.high_water.max(t);
    }

    pub fn note_serial(&mut self, license_id: &str, serial: u64) {
        let e = self.entry(license_id);
        e.serial = e.serial.max(serial);
    }

    pub fn note_spent(&mut self, license_id: &str, serial: u64) {
        let e = self.entry(license_id);
        e.serial = e.serial.max(serial);
        e.spent = Some(e.spent.map_or(serial, |s| s.max(serial)));
    }

    pub fn note_revoked(&mut self, license_id: &str) {
        self.entry(license_id).revoked = true;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path} is not a valid node state ({reason}); it was edited or damaged, so trusted time cannot be established. Recover with a fresh license from the vendor or a renewal from the license server (`serve --license-server`, or `leasehold renew`); a restored backup works only if it is newer than this node's usage ledger")]
    Invalid { path: String, reason: String },
    #[error("{path} (this node's trusted time and license memory) was removed. The node does not start afresh: recover with a fresh license from the vendor, issued after this node's last recorded use, or a renewal from the license server (`serve --license-server`, or `leasehold renew`)")]
    Missing { path: String },
    #[error("{path} (this node's trusted time and license memory) was removed. On a TPM node that is counted, like a restored backup, and only the license server re-establishes it: start with `serve --license-server URL`, or renew by file (`leasehold renew --request-out`, then `--response`); the license server is told")]
    RemovedFromTpmNode { path: String },
    #[error("{path} is older than this node's last state write: it records the node's TPM counter (NV index {nv_index:#010x}) at {state_counter}, and the TPM's counter is at {tpm_counter}. The node state was rolled back (a restored backup or VM snapshot), so trusted time and license memory cannot be believed. Recover as from a removed state: move {path} away, then get a fresh license from the vendor, issued after this node's last recorded use, or a renewal from the license server (`leasehold renew`)")]
    RolledBack {
        path: String,
        nv_index: u32,
        state_counter: u64,
        tpm_counter: u64,
    },
    /// The TPM that anchors the state failed (busy, unreachable, locked out); the
    /// message says what to do.
    #[error("cannot check the node state against the TPM: {0}")]
    Tpm(String),
    /// The state's counter is gone or replaced: the state can never be checked again.
    #[error("cannot check the node state against the TPM: {0}")]
    CounterGone(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What the node knows about time right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeContext {
    /// The system clock.
    pub now: DateTime<Utc>,
    /// The highest time the node (or a document it trusts) has seen, if any.
    pub high_water: Option<DateTime<Utc>>,
    /// The node's signed state is missing: `high_water` is then only what its other
    /// records (usage ledger) show, and only a license issued after it is believed.
    pub state_missing: bool,
}

impl TimeContext {
    /// A context from the clock and a high-water mark, with the node's state present.
    pub fn new(now: DateTime<Utc>, high_water: Option<DateTime<Utc>>) -> TimeContext {
        TimeContext {
            now,
            high_water,
            state_missing: false,
        }
    }

    fn floor(&self, floor: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match (self.high_water, floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// `Some(high_water)` when the clock is behind it by more than the tolerance.
    pub fn rolled_back(&self, floor: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let trusted = self.floor(floor)?;
        (self.now + rollback_tolerance() < trusted).then_some(trusted)
    }

    /// The time licenses are judged at: the clock, or the high-water mark when the
    /// clock is behind it (within the tolerance), so winding the clock back gains nothing.
    pub fn trusted_now(&self, floor: Option<DateTime<Utc>>) -> DateTime<Utc> {
        self.floor(floor).map_or(self.now, |f| f.max(self.now))
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Read and verify the node's state; `None` when there is no state file. On a TPM node
/// the state is checked against the TPM's counter (with the state lock held, so that a
/// write in progress is not taken for a rollback) and the returned mark is the one the
/// TPM's Clock implies ([`anchored_high_water`]).
pub fn load(identity: &NodeIdentity) -> Result<Option<NodeStateBody>, StateError> {
    if identity.state_anchor().is_some() {
        locked(identity, || Ok(load_unlocked(identity)?.map(|l| l.body)))
    } else {
        Ok(load_unlocked(identity)?.map(|l| l.body))
    }
}

/// A verified state and the TPM reading it was checked against.
struct Loaded {
    body: NodeStateBody,
    reading: Option<AnchorReading>,
}

fn load_unlocked(identity: &NodeIdentity) -> Result<Option<Loaded>, StateError> {
    let dir = identity.dir();
    let node = identity.public();
    let path = state_path(dir);
    // The TPM first: a write that lands between the two reads is then one ahead, which
    // is allowed, rather than a file behind the counter.
    let reading = identity
        .state_anchor()
        .map(|a| a.read().map_err(StateError::from))
        .transpose()?;
    let Some(mut body) = read_signed(dir, &node)? else {
        if let Some(anchor) = identity.state_anchor() {
            // The state of a TPM node never goes missing on its own: enrollment makes it.
            if let Some(reading) = reading {
                count_rollback(
                    anchor,
                    (Event::Removed, reading.counter, 0),
                    "a removed node state",
                );
            }
            return Err(StateError::RemovedFromTpmNode {
                path: path.display().to_string(),
            });
        }
        return Ok(None);
    };
    let invalid = |reason: String| StateError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    // The reading is there exactly when the anchor is (read above).
    match (identity.state_anchor().zip(reading), body.tpm) {
        (None, None) => {}
        (None, Some(mark)) => {
            return Err(invalid(format!(
                "it names TPM counter {:#010x}, but this node directory has no TPM counter ({} is missing)",
                mark.nv_index,
                crate::node::identity::TPM_COUNTER_FILE
            )))
        }
        (Some(_), None) => {
            return Err(invalid(
                "it carries no TPM counter, and this node's state is anchored in its TPM".into(),
            ))
        }
        (Some((anchor, reading)), Some(mark)) => {
            if mark.nv_index != anchor.nv_index() {
                return Err(invalid(format!(
                    "it names TPM counter {:#010x}, not this node's {:#010x}",
                    mark.nv_index,
                    anchor.nv_index()
                )));
            }
            if mark.counter < reading.counter {
                count_rollback(
                    anchor,
                    (Event::RolledBack, reading.counter, mark.counter),
                    &format!(
                        "a rolled-back node state (TPM counter {:#010x} at {}, state at {})",
                        mark.nv_index, reading.counter, mark.counter
                    ),
                );
                return Err(StateError::RolledBack {
                    path: path.display().to_string(),
                    nv_index: mark.nv_index,
                    state_counter: mark.counter,
                    tpm_counter: reading.counter,
                });
            }
            if mark.counter > reading.counter + 1 {
                return Err(invalid(format!(
                    "it records TPM counter {:#010x} at {}, ahead of the TPM's {}: the counter is not the one this state was written with",
                    mark.nv_index, mark.counter, reading.counter
                )));
            }
            body.high_water = body
                .high_water
                .max(anchored_high_water(body.high_water, &mark, reading.clock_ms));
        }
    }
    Ok(Some(Loaded { body, reading }))
}

/// Count a refused state in the TPM, where the operator cannot take it back; the next
/// renewal or checkpoint report carries the count to the license server.
///
/// Each event is counted once per process: a running node whose state goes missing
/// meets it again at every heartbeat, and must not wear the TPM's NV with it.
fn count_rollback(anchor: &dyn StateAnchor, event: (Event, u64, u64), what: &str) {
    static COUNTED: std::sync::Mutex<Vec<(Event, u64, u64)>> = std::sync::Mutex::new(Vec::new());
    {
        let mut counted = COUNTED.lock().unwrap_or_else(|e| e.into_inner());
        if counted.contains(&event) {
            return;
        }
        counted.push(event);
    }
    match anchor.record_rollback() {
        Ok(count) => tracing::warn!(
            "refused {what}; counted in the TPM for the license server (count {count})"
        ),
        Err(e) => tracing::error!("refused {what}, but cannot count it in the TPM: {e}"),
    }
}

/// What [`count_rollback`] counts: the event and the counter values it was met at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Removed,
    RolledBack,
    Recreated,
}

/// A license server's signed time, in answer to this node's fresh nonce: raise the
/// mark to it; on a TPM node whose state was removed, make the state afresh from it
/// (the one way a TPM node's state comes back, and the request that fetched it carried
/// the TPM's count of refused states to the server).
pub fn observe_server_time(
    identity: &NodeIdentity,
    server_time: DateTime<Utc>,
) -> Result<NodeStateBody, StateError> {
    if let (Some(anchor), false) = (identity.state_anchor(), state_path(identity.dir()).exists()) {
        let body = create(identity, server_time)?;
        // Counted, so that the license server hears of it even when nothing refused the
        // removed state first (a start without a license file, a renewal by file).
        if let Some(mark) = body.tpm {
            count_rollback(
                anchor,
                (Event::Recreated, mark.counter, 0),
                "a removed node state, re-established from the license server's time",
            );
        }
        tracing::warn!(
            "this TPM node's state was removed; re-established from the license server's time {server_time}"
        );
        return Ok(body);
    }
    update(identity, |s| s.raise(server_time))
}

/// Read the state file in `dir` and check that `node` signed it for itself; `None` when
/// there is none. Nothing more: [`load`] also checks a TPM node's state against its TPM.
pub fn read_signed(dir: &Path, node: &NodePublic) -> Result<Option<NodeStateBody>, StateError> {
    let path = state_path(dir);
    if !path.exists() {
        return Ok(None);
    }
    let invalid = |reason: String| StateError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let bytes = fsutil::read_limited(
        &path,
        crate::format::envelope::MAX_DOCUMENT_BYTES,
        "node state",
    )?;
    let envelope =
        Envelope::parse(&bytes, DocumentKind::NodeState).map_err(|e| invalid(e.to_string()))?;
    let signer = envelope
        .verify_signature()
        .map_err(|e| invalid(e.to_string()))?;
    if signer != node.signing_key {
        return Err(invalid("it is signed by another node's key".into()));
    }
    let body: NodeStateBody = envelope.decode_body().map_err(|e| invalid(e.to_string()))?;
    if body.node_id != node.node_id() {
        return Err(invalid(format!(
            "it names node {}, not this node",
            body.node_id
        )));
    }
    Ok(Some(body))
}

/// Write `body`; on a TPM node, record the counter's next value and the Clock of
/// `reading` (taken when the state was loaded, under the same lock), then increment the
/// counter. A counter one behind the state on disk (a write whose increment did not
/// happen) is caught up first.
fn write(
    identity: &NodeIdentity,
    body: &mut NodeStateBody,
    on_disk: Option<&TpmMark>,
    reading: Option<AnchorReading>,
    replace: Replace,
) -> Result<(), StateError> {
    let anchor = identity.state_anchor();
    if let (Some(anchor), Some(reading)) = (anchor, reading) {
        let mut counter = reading.counter;
        if on_disk.is_some_and(|m| m.counter > counter) {
            counter = anchor.increment()?;
        }
        body.tpm = Some(TpmMark {
            nv_index: anchor.nv_index(),
            counter: counter + 1,
            clock_ms: reading.clock_ms,
        });
    }
    let envelope = Envelope::sign(&*body, identity.signer(), vec![]);
    fsutil::write_atomic(
        &state_path(identity.dir()),
        envelope.render().as_bytes(),
        fsutil::PUBLIC_MODE,
        replace,
    )?;
    if let (Some(anchor), Some(mark)) = (anchor, body.tpm) {
        let after = anchor.increment()?;
        if after != mark.counter {
            return Err(StateError::Tpm(format!(
                "the TPM counter {:#010x} moved to {after}, not {}: another program increments it",
                mark.nv_index, mark.counter
            )));
        }
    }
    Ok(())
}

/// Run `f` with the state lock held.
fn locked<T>(
    identity: &NodeIdentity,
    f: impl FnOnce() -> Result<T, StateError>,
) -> Result<T, StateError> {
    let path = identity.dir().join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| FsError::io(&path, e))?;
    lock.lock().map_err(|e| FsError::io(&path, e))?;
    f()
}

/// Does the TPM's Clock already imply `new`, so that writing it would change nothing a
/// restore could take away? Only the mark moved, by at most [`anchor_slack`].
fn implied_by_anchor(identity: &NodeIdentity, loaded: &NodeStateBody, new: &NodeStateBody) -> bool {
    identity.state_anchor().is_some()
        && new.licenses == loaded.licenses
        && loaded
            .high_water
            .checked_add_signed(anchor_slack())
            .is_some_and(|limit| new.high_water <= limit)
}

/// Change the state under its lock and write it atomically. A missing state is
/// [`StateError::Missing`]: it is created only by [`create`].
pub fn update(
    identity: &NodeIdentity,
    change: impl FnOnce(&mut NodeStateBody),
) -> Result<NodeStateBody, StateError> {
    locked(identity, || {
        let Loaded {
            body: before,
            reading,
        } = load_unlocked(identity)?.ok_or_else(|| StateError::Missing {
            path: state_path(identity.dir()).display().to_string(),
        })?;
        let mut body = before.clone();
        change(&mut body);
        if body != before && !implied_by_anchor(identity, &before, &body) {
            write(
                identity,
                &mut body,
                before.tpm.as_ref(),
                reading,
                Replace::Allowed,
            )?;
        }
        Ok(body)
    })
}

/// Create the state with `high_water` (a new node, or trusted time re-established from
/// a license issued after everything this node recorded). Never replaces a state.
pub fn create(
    identity: &NodeIdentity,
    high_water: DateTime<Utc>,
) -> Result<NodeStateBody, StateError> {
    locked(identity, || {
        let reading = identity
            .state_anchor()
            .map(|a| a.read().map_err(StateError::from))
            .transpose()?;
        let mut body = NodeStateBody::new(identity.public().node_id(), high_water);
        write(identity, &mut body, None, reading, Replace::Never)?;
        Ok(body)
    })
}

/// Raise the high-water mark to `t` (never lower it); the mark now in force.
pub fn record(identity: &NodeIdentity, t: DateTime<Utc>) -> Result<DateTime<Utc>, StateError> {
    update(identity, |s| s.raise(t)).map(|s| s.high_water)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeStateBody {
        NodeStateBody::new("n".into(), Utc::now())
    }

    #[test]
    fn a_lower_serial_a_spent_one_and_a_revoked_id_are_refused() {
        let mut s = state();
        s.note_serial("a", 5);
        assert_eq!(s.refuses("a", 5), None);
        assert_eq!(
            s.refuses("a", 4),
            Some(Remembered::Superseded { newest: 5 })
        );
        assert_eq!(s.refuses("a", 6), None);
        s.note_spent("a", 5);
        assert_eq!(s.refuses("a", 5), Some(Remembered::Spent { serial: 5 }));
        assert_eq!(s.refuses("a", 6), None, "a renewal is a new lease");
        s.note_revoked("a");
        assert_eq!(s.refuses("a", 7), Some(Remembered::Revoked));
        assert_eq!(s.refuses("b", 1), None);
    }

    #[test]
    fn memory_is_bounded_and_forgets_revocations_last() {
        let mut s = state();
        s.note_revoked("revoked");
        for i in 0..MAX_REMEMBERED + 10 {
            s.note_serial(&format!("l{i}"), 1);
        }
        assert_eq!(s.licenses.len(), MAX_REMEMBERED);
        assert_eq!(s.refuses("revoked", 1), Some(Remembered::Revoked));
        assert!(s.seen("l0").is_none());
    }

    #[test]
    fn the_tpm_clock_moves_the_mark_by_seventeen_twentieths_and_never_back() {
        let high_water = "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let mark = TpmMark {
            nv_index: 0x0138_1234,
            counter: 42,
            clock_ms: 86_400_000,
        };
        // FORMATS.md's worked example: an hour of Clock credits 51 minutes.
        assert_eq!(
            anchored_high_water(high_water, &mark, 86_400_000 + 3_600_000),
            "2026-01-01T00:51:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            anchored_high_water(high_water, &mark, 86_400_000 + 1_999),
            "2026-01-01T00:00:01Z".parse::<DateTime<Utc>>().unwrap(),
            "17/20 of 1,999 ms is 1,699 ms: rounded down to a whole second"
        );
        // A Clock behind the mark (a save lost at power loss) credits nothing.
        assert_eq!(anchored_high_water(high_water, &mark, 1_000), high_water);
        // A Clock set far ahead counts at most 100 years (85 credited); nothing overflows.
        let far = anchored_high_water(high_water, &mark, u64::MAX);
        assert!(far > high_water + Duration::days(365 * 84));
        assert!(far < high_water + Duration::days(366 * 86));
    }

    #[test]
    fn a_file_key_node_refuses_a_state_that_names_a_tpm_counter() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        let mut body = create(&identity, Utc::now()).unwrap();
        assert_eq!(body.tpm, None);
        body.tpm = Some(TpmMark {
            nv_index: 0x0138_0001,
            counter: 1,
            clock_ms: 0,
        });
        let envelope = Envelope::sign(&body, identity.signer(), vec![]);
        std::fs::write(state_path(identity.dir()), envelope.render()).unwrap();
        let err = load(&identity).unwrap_err();
        assert!(matches!(err, StateError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("no TPM counter"), "{err}");
    }

    #[test]
    fn the_clock_within_tolerance_behind_the_mark_is_judged_at_the_mark() {
        let mark = Utc::now();
        let t = TimeContext::new(mark - Duration::minutes(4), Some(mark));
        assert_eq!(t.rolled_back(None), None);
        assert_eq!(t.trusted_now(None), mark);
        let t = TimeContext::new(mark - Duration::minutes(6), Some(mark));
        assert_eq!(t.rolled_back(None), Some(mark));
    }
}
