//! Trusted time: the system clock, checked against the highest time this node has ever
//! seen. The high-water mark lives in `state.json`, signed by the node key, so a clock
//! wound back (to stretch an expired license) is detected, and an edited state file is
//! refused rather than believed.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::identity::{NodeIdentity, NodePublic};
use crate::format::{Body, DocumentKind, Envelope};
use crate::fsutil::{self, FsError, Replace};

pub const STATE_FILE: &str = "state.json";

/// How far the clock may be behind the high-water mark before it counts as rolled
/// back: covers NTP steps and VM migrations, not a day's worth of rollback.
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
}

impl Body for NodeStateBody {
    const KIND: DocumentKind = DocumentKind::NodeState;
    const VERSION: u32 = 1;
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path} is not a valid node state ({reason}); it was edited or damaged. Trusted time cannot be established: restore it from a backup or re-enroll this node")]
    Invalid { path: String, reason: String },
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
}

impl TimeContext {
    /// `Some(high_water)` when the clock is behind it by more than the tolerance.
    pub fn rolled_back(&self, floor: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let trusted = match (self.high_water, floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }?;
        (self.now + rollback_tolerance() < trusted).then_some(trusted)
    }
}

/// Read and verify the node's high-water mark; `None` when no state was written yet.
pub fn load_high_water(dir: &Path, node: &NodePublic) -> Result<Option<DateTime<Utc>>, StateError> {
    let path = dir.join(STATE_FILE);
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
    Ok(Some(body.high_water))
}

/// Raise the high-water mark to `now` (never lower it) and write it atomically.
pub fn record(identity: &NodeIdentity, now: DateTime<Utc>) -> Result<DateTime<Utc>, StateError> {
    let public = identity.public();
    let previous = load_high_water(identity.dir(), &public)?;
    let high_water = crate::format::time::whole_seconds(previous.map_or(now, |p| p.max(now)));
    let body = NodeStateBody {
        version: NodeStateBody::VERSION,
        node_id: public.node_id(),
        high_water,
    };
    let envelope = Envelope::sign(&body, identity.signing_key(), vec![]);
    fsutil::write_atomic(
        &identity.dir().join(STATE_FILE),
        envelope.render().as_bytes(),
        fsutil::PUBLIC_MODE,
        Replace::Allowed,
    )?;
    Ok(high_water)
}
