//! Enrollment: what a node sends its vendor to get a license. Public keys, salted
//! hardware hashes with the match policy it proposes, and the declared use, signed by
//! the node's own key (proof that whoever enrolls holds the key the license will bind).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::hardware::{self, BoundComponent, ComponentKind, HardwareProfile, MatchPolicy};
use super::identity::NodeIdentity;
use crate::crypto::key_wrap::UnwrapPublicKey;
use crate::crypto::random;
use crate::crypto::signing::PublicKey;
use crate::format::encoding::{base64_array, base64_vec, hex_array};
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
    /// 32 bytes (X25519) or, with `unwrap_suite`, a 65-byte P-256 point (TPM nodes).
    #[serde(with = "base64_vec")]
    pub unwrap_key: Vec<u8>,
    /// Omitted for X25519 nodes; the P-256 suite for nodes whose unwrap key is in a TPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwrap_suite: Option<String>,
    pub created_at: DateTime<Utc>,
    pub hardware: HardwareClaim,
    pub declared_use: DeclaredUse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<LicenseRequest>,
    /// TPM nodes: the TPM counter of refused rolled-back states when the node enrolled
    /// (where the license server starts counting); absent on file-key nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_rollbacks: Option<u64>,
}

impl EnrollmentBody {
    /// The node's unwrap key, checked against its suite.
    pub fn unwrap_public(&self) -> Result<UnwrapPublicKey, String> {
        UnwrapPublicKey::from_parts(self.unwrap_suite.as_deref(), &self.unwrap_key)
    }
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
    #[error("cannot read the node's TPM counters: {0}")]
    Tpm(String),
}

/// Which components to bind and how to match them.
#[derive(Debug, Clone, Default)]
pub struct BindingChoice {
    /// Bind only these kinds (default: every component this machine has).
    pub components: Option<Vec<ComponentKind>>,
    /// Components that must match (default: [`default_required`]).
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
    let asked = choice
        .components
        .iter()
        .chain(choice.required.iter())
        .flatten();
    for kind in asked {
        if profile.get(*kind).is_none() {
            return Err(EnrollmentError::Policy(format!(
                "component {kind} cannot be read on this machine: {} (see `leasehold fingerprint`)",
                profile.why_unreadable(*kind)
            )));
        }
    }
    let policy = choose_policy(&components, choice);
    policy
        .validate(&components)
        .map_err(EnrollmentError::Policy)?;
    let public = identity.public();
    let body = EnrollmentBody {
        version: EnrollmentBody::VERSION,
        node_id: public.node_id(),
        signing_key: public.signing_key.to_bytes(),
        unwrap_key: public.unwrap_key.as_bytes().to_vec(),
        unwrap_suite: public.unwrap_key.suite_field(),
        created_at: crate::format::time::whole_seconds(now),
        hardware: HardwareClaim {
            salt,
            components,
            policy,
        },
        declared_use,
        request,
        tpm_rollbacks: identity
            .state_anchor()
            .map(|a| a.rollbacks().map_err(|e| EnrollmentError::Tpm(e.message)))
            .transpose()?,
    };
    Ok(Envelope::sign(&body, identity.signer(), vec![]))
}

/// The match policy `choice` makes of `components`: the required kinds given or
/// [`default_required`], and the number of others given or up to 2.
pub fn choose_policy(components: &[BoundComponent], choice: &BindingChoice) -> MatchPolicy {
    let required = choice
        .required
        .clone()
        .unwrap_or_else(|| default_required(components));
    let others = components
        .iter()
        .filter(|c| !required.contains(&c.kind))
        .count() as u32;
    MatchPolicy {
        required,
        min_others: choice.min_others.unwrap_or(others.min(2)),
    }
}

/// The components the default policy requires among `components`: `machine-id` (a new
/// OS installation is a new node), `tpm-ek` (bound by TPM nodes) and every component a
/// copy of the disk does not carry ([`ComponentKind::CLONE_RESISTANT`]) that this machine
/// offers. Those it does not offer are left out, so the policy stays satisfiable;
/// `leasehold enroll` says which.
pub fn default_required(components: &[BoundComponent]) -> Vec<ComponentKind> {
    components
        .iter()
        .map(|c| c.kind)
        .filter(|kind| {
            matches!(kind, ComponentKind::MachineId | ComponentKind::TpmEk)
                || ComponentKind::CLONE_RESISTANT.contains(kind)
        })
        .collect()
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
    body.unwrap_public().map_err(invalid)?;
    body.hardware
        .policy
        .validate(&body.hardware.components)
        .map_err(EnrollmentError::Policy)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::hardware::compare;

    fn enroll(profile: &HardwareProfile, choice: &BindingChoice) -> EnrollmentBody {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        let envelope = create(
            &identity,
            profile,
            choice,
            DeclaredUse::default(),
            None,
            chrono::Utc::now(),
        )
        .unwrap();
        verify(envelope.render().as_bytes()).unwrap()
    }

    fn matches(enrollment: &EnrollmentBody, machine: &HardwareProfile) -> hardware::MatchReport {
        let claim = &enrollment.hardware;
        compare(&claim.components, &claim.policy, machine, |kind, value| {
            hardware::enrollment_hash(&claim.salt, kind, value)
        })
    }

    fn box_with(uuid: &str, disk: &str, mac: &str) -> HardwareProfile {
        use ComponentKind::*;
        HardwareProfile::from_pairs(&[
            (MachineId, "0123456789abcdef0123456789abcdef"),
            (ProductUuid, uuid),
            (RootDiskSerial, disk),
            (DefaultRouteMac, mac),
            (CpuModel, "Test CPU 9000"),
            (MemoryClass, "32GiB"),
            (MacAddress, mac),
            (Hostname, "node-a"),
        ])
    }

    #[test]
    fn a_cloned_disk_in_another_box_of_the_same_model_is_refused() {
        let original = box_with("4c4c4544-0001", "WD-WX11A", "3c:ec:ef:00:00:01");
        let enrollment = enroll(&original, &BindingChoice::default());
        assert_eq!(
            enrollment.hardware.policy.required,
            vec![
                ComponentKind::MachineId,
                ComponentKind::ProductUuid,
                ComponentKind::RootDiskSerial,
                ComponentKind::DefaultRouteMac,
            ]
        );
        assert!(matches(&enrollment, &original).passes());

        // The disk copied into a second box of the same model: machine-id, host name,
        // CPU and memory come along; the board's UUID and the disk's serial do not.
        let clone = box_with("4c4c4544-0002", "WD-WX22B", "3c:ec:ef:00:00:01");
        let report = matches(&enrollment, &clone);
        assert!(!report.passes(), "{report:?}");
        assert_eq!(
            report.required_missing,
            vec![ComponentKind::ProductUuid, ComponentKind::RootDiskSerial]
        );
        // Any one of them differing is enough.
        let other_disk = box_with("4c4c4544-0001", "WD-WX22B", "3c:ec:ef:00:00:01");
        assert!(!matches(&enrollment, &other_disk).passes());
    }

    #[test]
    fn the_default_policy_requires_only_what_this_machine_offers() {
        use ComponentKind::*;
        // A VM with no DMI table and a disk without a serial: only the route MAC is left.
        let vm = HardwareProfile::from_pairs(&[
            (MachineId, "0123456789abcdef0123456789abcdef"),
            (DefaultRouteMac, "52:54:00:12:34:56"),
            (CpuModel, "Test CPU 9000"),
            (MemoryClass, "8GiB"),
            (Hostname, "vm-a"),
        ]);
        let enrollment = enroll(&vm, &BindingChoice::default());
        assert_eq!(
            enrollment.hardware.policy.required,
            vec![MachineId, DefaultRouteMac]
        );
        assert_eq!(enrollment.hardware.policy.min_others, 2);
        assert!(matches(&enrollment, &vm).passes());
    }

    #[test]
    fn requiring_an_unreadable_component_says_why() {
        let mut profile = HardwareProfile::from_pairs(&[(ComponentKind::MachineId, "m1")]);
        profile.unreadable.push(hardware::Unreadable {
            kind: ComponentKind::ProductUuid,
            reason: "no DMI table".into(),
        });
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        let choice = BindingChoice {
            required: Some(vec![ComponentKind::ProductUuid]),
            ..Default::default()
        };
        let err = create(
            &identity,
            &profile,
            &choice,
            DeclaredUse::default(),
            None,
            chrono::Utc::now(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("product-uuid cannot be read on this machine: no DMI table"),
            "{err}"
        );
    }
}
