//! Enrollment: what a node sends its vendor to get a license. Public keys, salted
//! hardware hashes with the match policy it proposes, and the declared use, signed by
//! the node's own key (proof that whoever enrolls holds the key the license will bind).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::hardware::{self, BoundComponent, ComponentKind, HardwareProfile, MatchPolicy};
use super::identity::NodeIdentity;
use crate::crypto::random;
use crate::crypto::signing::PublicKey;
use crate::format::encoding::{base64_array, hex_array};
use crate::format::{Body, DocumentKind, Envelope};

/// Hardware as an enrollment binds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareClaim {
    #[serde(with = "hex_array")]
    pub salt: [u8; 16],
    pub components: Vec<BoundComponent>,
    pub policy: MatchPolicy,
}

/// What the operator declares the node is for; shown to whoever approves it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredUse {
    pub use_case: String,
    pub data_handling: String,
    /// Security measures around the node (access control, network placement).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub security_measures: String,
}

/// What an enrollment submitted to a license server asks for: which organization's
/// entitlement it counts against and which model it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseRequest {
    pub organization: String,
    pub model_id: String,
}

/// The signed body of an enrollment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentBody {
    pub version: u32,
    pub node_id: String,
    #[serde(with = "base64_array")]
    pub signing_key: [u8; 32],
    #[serde(with = "base64_array")]
    pub unwrap_key: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub hardware: HardwareClaim,
    pub declared_use: DeclaredUse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<LicenseRequest>,
}

impl Body for EnrollmentBody {
    const KIND: DocumentKind = DocumentKind::Enrollment;
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentError {
    #[error("not a valid enrollment: {0}")]
    Invalid(String),
    #[error("the enrollment's hardware policy cannot be met: {0}")]
    Policy(String),
}

/// Which components to bind and how to match them.
#[derive(Debug, Clone, Default)]
pub struct BindingChoice {
    /// Bind only these kinds (default: every component this machine has).
    pub components: Option<Vec<ComponentKind>>,
    /// Components that must match (default: machine-id, when present).
    pub required: Option<Vec<ComponentKind>>,
    /// How many of the other components must match (default: up to 2).
    pub min_others: Option<u32>,
}

/// Build and sign an enrollment for this node.
pub fn create(
    identity: &NodeIdentity,
    profile: &HardwareProfile,
    choice: &BindingChoice,
    declared_use: DeclaredUse,
    request: Option<LicenseRequest>,
    now: DateTime<Utc>,
) -> Result<Envelope, EnrollmentError> {
    let salt = random::bytes::<16>();
    let components = hardware::bind(profile, &salt, choice.components.as_deref());
    if let Some(wanted) = &choice.components {
        for kind in wanted {
            if profile.get(*kind).is_none() {
                return Err(EnrollmentError::Policy(format!(
                    "component {kind} cannot be read on this machine (see `leasehold fingerprint`)"
                )));
            }
        }
    }
    let required = choice.required.clone().unwrap_or_else(|| {
        components
            .iter()
            .filter(|c| c.kind == ComponentKind::MachineId)
            .map(|c| c.kind)
            .collect()
    });
    let others = components
        .iter()
        .filter(|c| !required.contains(&c.kind))
        .count() as u32;
    let policy = MatchPolicy {
        required,
        min_others: choice.min_others.unwrap_or(others.min(2)),
    };
    policy
        .validate(&components)
        .map_err(EnrollmentError::Policy)?;
    let public = identity.public();
    let body = EnrollmentBody {
        version: EnrollmentBody::VERSION,
        node_id: public.node_id(),
        signing_key: public.signing_key.to_bytes(),
        unwrap_key: public.unwrap_key,
        created_at: crate::format::time::whole_seconds(now),
        hardware: HardwareClaim {
            salt,
            components,
            policy,
        },
        declared_use,
        request,
    };
    Ok(Envelope::sign(&body, identity.signing_key(), vec![]))
}

/// Parse and verify an enrollment: well-formed, self-signed by the key it declares.
pub fn verify(bytes: &[u8]) -> Result<EnrollmentBody, EnrollmentError> {
    let invalid = |e: String| EnrollmentError::Invalid(e);
    let envelope =
        Envelope::parse(bytes, DocumentKind::Enrollment).map_err(|e| invalid(e.to_string()))?;
    let signer = envelope
        .verify_signature()
        .map_err(|e| invalid(e.to_string()))?;
    let body: EnrollmentBody = envelope.decode_body().map_err(|e| invalid(e.to_string()))?;
    if body.signing_key != signer.to_bytes() {
        return Err(invalid(
            "it is signed by a key other than the node key it declares".into(),
        ));
    }
    let declared = PublicKey::from_bytes(&body.signing_key).map_err(|e| invalid(e.to_string()))?;
    if body.node_id != declared.key_id() {
        return Err(invalid("its node id does not match its signing key".into()));
    }
    body.hardware
        .policy
        .validate(&body.hardware.components)
        .map_err(EnrollmentError::Policy)?;
    Ok(body)
}
