//! Admission: everything that must hold before a node decrypts a model. `check` runs
//! it as a dry run; `serve` and `run` run it before loading, and again on renewal.
//!
//! Verify the license chain and this machine (node keys, hardware, trusted time), match
//! the sealed model against the license's model binding, and unwrap the content key.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::crypto::key_wrap::UnwrapError;
use crate::crypto::ContentKey;
use crate::fsutil::FsError;
use crate::ledger::{self, LEDGER_FILE};
use crate::license::{assess, Assessment, Checks, TrustRoots, Verdict, VerifiedLicense};
use crate::node::hardware::HardwareProfile;
use crate::node::trusted_time::{self, NodeStateBody, StateError, TimeContext};
use crate::node::{clock, NodeIdentity};
use crate::runtime::safeguards::Safeguards;
use crate::seal::{SealError, SealedModel};

/// Why a node may not use a license with a sealed model.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{message}")]
    Verdict { verdict: Verdict, message: String },
    #[error("{0}")]
    Sealed(#[from] SealError),
    #[error("{0}")]
    ModelMismatch(String),
    #[error("cannot unwrap the content key: {0}")]
    Unwrap(String),
    /// The TPM that holds the node's unwrap key failed (busy, lockout, gone): a fault
    /// of the device, not a verdict on the license; retrying may succeed.
    #[error("cannot unwrap the content key: {0}")]
    KeyDevice(String),
    #[error("cannot apply the safeguards the license mandates: {0}")]
    Safeguards(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A license admitted for a sealed model on this node, with its content key.
pub struct Admitted {
    pub license: VerifiedLicense,
    pub verdict: Verdict,
    /// What the node knew when it admitted the license (trusted time, its state).
    pub knowledge: NodeKnowledge,
    pub key: ContentKey,
    pub sealed: SealedModel,
    /// The watermark and output filter the license mandates, ready for the engine.
    pub safeguards: Safeguards,
}

/// Where a node keeps what it has recorded: its identity (with `state.json` and
/// `ledger.head`) and its usage ledger (`None`: the default in the node directory).
#[derive(Clone, Copy)]
pub struct NodeRecords<'a> {
    pub identity: &'a NodeIdentity,
    pub ledger: Option<&'a Path>,
}

impl<'a> NodeRecords<'a> {
    pub fn new(identity: &'a NodeIdentity) -> NodeRecords<'a> {
        NodeRecords {
            identity,
            ledger: None,
        }
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.ledger
            .map_or_else(|| self.identity.dir().join(LEDGER_FILE), Path::to_path_buf)
    }

    /// The newest time the node's usage ledger and its signed head show.
    pub fn recorded_until(&self) -> Result<Option<DateTime<Utc>>, Refusal> {
        let newest = ledger::newest_record_time(&self.ledger_path())?;
        let head = ledger::head::read(self.identity)
            .ok()
            .flatten()
            .map(|h| h.at);
        Ok(newest.max(head))
    }
}

/// What the node knows about time and licenses: its signed state, and the floor its
/// other records give. `None` state means the state file is missing.
pub struct NodeKnowledge {
    pub state: Option<NodeStateBody>,
    pub time: TimeContext,
}

impl NodeKnowledge {
    pub fn gather(records: NodeRecords) -> Result<NodeKnowledge, Refusal> {
        let state = trusted_time::load(records.identity)?;
        let recorded = records.recorded_until()?;
        let high_water = match (&state, recorded) {
            (Some(s), Some(r)) => Some(s.high_water.max(r)),
            (Some(s), None) => Some(s.high_water),
            (None, r) => r,
        };
        Ok(NodeKnowledge {
            time: TimeContext {
                now: clock::system_now(),
                high_water,
                state_missing: state.is_none(),
            },
            state,
        })
    }
}

/// Assess license bytes on this machine now: its hardware and clock, and, when the
/// node's records are given, its keys, trusted time and license memory.
pub fn assess_here(bytes: &[u8], records: Option<NodeRecords>) -> Result<Assessment, Refusal> {
    let knowledge = records.map(NodeKnowledge::gather).transpose()?;
    Ok(assess_with(bytes, records, knowledge.as_ref()))
}

fn assess_with(
    bytes: &[u8],
    records: Option<NodeRecords>,
    knowledge: Option<&NodeKnowledge>,
) -> Assessment {
    let public = records.map(|r| r.identity.public());
    // TPM nodes bind their TPM's endorsement key; without a node directory, whatever TPM
    // is here is read, for licenses that bind one.
    let tpm = match records {
        Some(r) => r.identity.tpm_tcti().map(str::to_string),
        None => crate::node::tpm_if_present(),
    };
    let profile = HardwareProfile::collect(tpm.as_deref());
    let checks = Checks {
        node: public.as_ref(),
        hardware: Some(&profile),
        time: knowledge.map_or_else(|| TimeContext::new(clock::system_now(), None), |k| k.time),
        memory: knowledge.and_then(|k| k.state.as_ref()),
    };
    assess(bytes, &TrustRoots::compiled_in(), &checks)
}

/// Admit license bytes for `sealed_path`: a verdict that allows serving, the sealed
/// model the license names, and the content key unwrapped with this node's key.
pub fn admit(bytes: &[u8], records: NodeRecords, sealed_path: &Path) -> Result<Admitted, Refusal> {
    let identity = records.identity;
    let knowledge = NodeKnowledge::gather(records)?;
    let Assessment { verdict, license } = assess_with(bytes, Some(records), Some(&knowledge));
    let now = clock::system_now();
    let license = match license {
        Some(l) if verdict.allows_serving() => l,
        _ => {
            return Err(Refusal::Verdict {
                message: verdict.explain(now),
                verdict,
            })
        }
    };
    let sealed = SealedModel::open(sealed_path)?;
    let body = &license.body;
    let header = sealed.header();
    if header.model_id != body.model.model_id
        || sealed.digest() != body.model.sealed_header_sha256.0
    {
        return Err(Refusal::ModelMismatch(format!(
            "{} is model '{}' (header sha256 {}), but the license is for model '{}' (header sha256 {})",
            sealed_path.display(),
            header.model_id,
            hex::encode(sealed.digest()),
            body.model.model_id,
            hex::encode(body.model.sealed_header_sha256.0)
        )));
    }
    let key = body
        .unwrap_content_key(identity.unwrapper())
        .map_err(|e| match e {
            UnwrapError::Device(message) => Refusal::KeyDevice(message),
            other => Refusal::Unwrap(other.to_string()),
        })?;
    sealed.check_key(&key)?;
    let safeguards = Safeguards::from_license(body, identity).map_err(Refusal::Safeguards)?;
    Ok(Admitted {
        license,
        verdict,
        knowledge,
        key,
        sealed,
        safeguards,
    })
}
