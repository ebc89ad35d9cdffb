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

/// Read and verify the node's state; `None` when there is no state file.
pub fn load(dir: &Path, node: &NodePublic) -> Result<Option<NodeStateBody>, StateError> {
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

/// Read and verify the node's high-water mark; `None` when no state was written yet.
pub fn load_high_water(dir: &Path, node: &NodePublic) -> Result<Option<DateTime<Utc>>, StateError> {
    Ok(load(dir, node)?.map(|s| s.high_water))
}

fn write(identity: &NodeIdentity, body: &NodeStateBody) -> Result<(), StateError> {
    let envelope = Envelope::sign(body, identity.signer(), vec![]);
    fsutil::write_atomic(
        &state_path(identity.dir()),
        envelope.render().as_bytes(),
        fsutil::PUBLIC_MODE,
        Replace::Allowed,
    )?;
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

/// Change the state under its lock and write it atomically. A missing state is
/// [`StateError::Missing`]: it is created only by [`create`].
pub fn update(
    identity: &NodeIdentity,
    change: impl FnOnce(&mut NodeStateBody),
) -> Result<NodeStateBody, StateError> {
    locked(identity, || {
        let mut body =
            load(identity.dir(), &identity.public())?.ok_or_else(|| StateError::Missing {
                path: state_path(identity.dir()).display().to_string(),
            })?;
        let before = body.clone();
        change(&mut body);
        if body != before {
            write(identity, &body)?;
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
        let body = NodeStateBody::new(identity.public().node_id(), high_water);
        let envelope = Envelope::sign(&body, identity.signer(), vec![]);
        fsutil::write_atomic(
            &state_path(identity.dir()),
            envelope.render().as_bytes(),
            fsutil::PUBLIC_MODE,
            Replace::Never,
        )?;
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
    fn the_clock_within_tolerance_behind_the_mark_is_judged_at_the_mark() {
        let mark = Utc::now();
        let t = TimeContext::new(mark - Duration::minutes(4), Some(mark));
        assert_eq!(t.rolled_back(None), None);
        assert_eq!(t.trusted_now(None), mark);
        let t = TimeContext::new(mark - Duration::minutes(6), Some(mark));
        assert_eq!(t.rolled_back(None), Some(mark));
    }
}
