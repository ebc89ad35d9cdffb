//! `NODE_DIR/ledger.head`: the last checkpoint this node signed into its ledger, kept
//! beside the ledger and signed by the node key. At start the ledger must still hold
//! that record with that hash, so a ledger deleted, replaced by another, or rolled back
//! to an earlier copy is detected rather than silently started afresh.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::format::encoding::hex_array;
use crate::format::{Body, DocumentKind, Envelope};
use crate::fsutil::{self, FsError, Replace};
use crate::node::NodeIdentity;

pub const HEAD_FILE: &str = "ledger.head";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerHeadBody {
    pub version: u32,
    pub node_id: String,
    /// Sequence number and hash of the last checkpoint record.
    pub seq: u64,
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
    pub at: DateTime<Utc>,
}

impl Body for LedgerHeadBody {
    const KIND: DocumentKind = DocumentKind::LedgerHead;
    const VERSION: u32 = 1;
}

/// Record the head (atomically, fsynced).
pub fn write(
    identity: &NodeIdentity,
    seq: u64,
    hash: [u8; 32],
    at: DateTime<Utc>,
) -> Result<(), FsError> {
    let body = LedgerHeadBody {
        version: LedgerHeadBody::VERSION,
        node_id: identity.public().node_id(),
        seq,
        hash,
        at: crate::format::time::whole_seconds(at),
    };
    let envelope = Envelope::sign(&body, identity.signer(), vec![]);
    fsutil::write_atomic(
        &identity.dir().join(HEAD_FILE),
        envelope.render().as_bytes(),
        fsutil::SECRET_MODE,
        Replace::Allowed,
    )
}

/// The recorded head, if any. `Err` when the file exists but is not a valid head
/// signed by this node (edited, or another node's).
pub fn read(identity: &NodeIdentity) -> Result<Option<LedgerHeadBody>, String> {
    let path = identity.dir().join(HEAD_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fsutil::read_limited(&path, 64 * 1024, "ledger head").map_err(|e| e.to_string())?;
    let envelope = Envelope::parse(&bytes, DocumentKind::LedgerHead).map_err(|e| e.to_string())?;
    let signer = envelope.verify_signature().map_err(|e| e.to_string())?;
    if signer != identity.public().signing_key {
        return Err("it is signed by another key than this node's".into());
    }
    envelope
        .decode_body()
        .map(Some)
        .map_err(|e: crate::format::BodyError| e.to_string())
}
