//! Admission: everything that must hold before a node decrypts a model. `check` runs
//! it as a dry run; `serve` and `run` run it before loading, and again on renewal.
//!
//! Verify the license chain and this machine (node keys, hardware, trusted time), match
//! the sealed model against the license's model binding, and unwrap the content key.

use std::path::Path;

use crate::crypto::ContentKey;
use crate::fsutil::FsError;
use crate::license::{assess, Assessment, Checks, TrustRoots, Verdict, VerifiedLicense};
use crate::node::hardware::HardwareProfile;
use crate::node::trusted_time::{self, StateError, TimeContext};
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
    pub key: ContentKey,
    pub sealed: SealedModel,
    /// The watermark and output filter the license mandates, ready for the engine.
    pub safeguards: Safeguards,
}

/// Assess license bytes on this machine now: its hardware and clock, and, when the
/// node identity is given, its keys and trusted-time record.
pub fn assess_here(
    bytes: &[u8],
    identity: Option<&NodeIdentity>,
) -> Result<Assessment, StateError> {
    let public = identity.map(NodeIdentity::public);
    let high_water = match (identity, &public) {
        (Some(id), Some(p)) => trusted_time::load_high_water(id.dir(), p)?,
        _ => None,
    };
    let profile = HardwareProfile::collect();
    let checks = Checks {
        node: public.as_ref(),
        hardware: Some(&profile),
        time: TimeContext {
            now: clock::system_now(),
            high_water,
        },
    };
    Ok(assess(bytes, &TrustRoots::compiled_in(), &checks))
}

/// Admit license bytes for `sealed_path`: a verdict that allows serving, the sealed
/// model the license names, and the content key unwrapped with this node's key.
pub fn admit(
    bytes: &[u8],
    identity: &NodeIdentity,
    sealed_path: &Path,
) -> Result<Admitted, Refusal> {
    let Assessment { verdict, license } = assess_here(bytes, Some(identity))?;
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
        .unwrap_content_key(identity.unwrap_secret())
        .map_err(|e| Refusal::Unwrap(e.to_string()))?;
    sealed.check_key(&key)?;
    let safeguards = Safeguards::from_license(body, identity).map_err(Refusal::Safeguards)?;
    Ok(Admitted {
        license,
        verdict,
        key,
        sealed,
        safeguards,
    })
}
