//! Issuing licenses (vendor side) and certifying issuers (root side).

use chrono::{DateTime, Duration, Utc};

use super::body::{
    check_grace, Caps, FilterRules, GraceTooLong, LicenseBody, LicenseHardware, ModelBinding,
    NodeBinding, WatermarkMandate, WrappedContentKey,
};
use super::issuer::IssuerCertBody;
use super::{
    FEATURE_OUTPUT_FILTER, FEATURE_WATERMARK, FEATURE_WATERMARK_TOURNAMENT, KNOWN_FEATURES,
    SAFEGUARD_FEATURES,
};
use crate::crypto::key_wrap;
use crate::crypto::signing::SecretKey;
use crate::crypto::{random, ContentKey};
use crate::format::encoding::Digest;
use crate::format::time::whole_seconds;
use crate::format::{Body, Envelope};
use crate::node::enrollment::EnrollmentBody;
use crate::node::hardware::{self, BoundComponent};
use crate::runtime::output_filter::OutputFilter;
use crate::seal::Header;
use crate::watermark::{self, WatermarkKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("the content key does not belong to this sealed model (key id {key}, model sealed with {sealed}); pass the .key file written when this model was sealed")]
    KeyMismatch { key: String, sealed: String },
    #[error("the license would expire ({expires}) before it starts ({not_before})")]
    EmptyWindow { not_before: String, expires: String },
    #[error("license id '{0}' is not 32 hex digits")]
    LicenseId(String),
    #[error("invalid licensee: {0}")]
    Licensee(String),
    #[error("feature '{0}' is not one this build can enforce")]
    UnknownFeature(String),
    #[error("cannot wrap the content key to the node's key: {0}")]
    Wrap(String),
    #[error("invalid issuer certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Safeguards(#[from] SafeguardError),
    #[error(transparent)]
    Grace(#[from] GraceTooLong),
}

/// What to grant, for how long.
#[derive(Debug, Clone)]
pub struct Terms {
    pub licensee: String,
    pub not_before: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub grace: Duration,
    pub serial: u64,
    pub caps: Caps,
    pub features: Vec<String>,
    pub renewal: Vec<String>,
    pub issued_at: DateTime<Utc>,
    /// Keep this license id (a renewal of an existing license); `None` draws a new one.
    pub license_id: Option<String>,
    /// The watermark and output filter to mandate.
    pub safeguards: Safeguards,
}

/// What a license mandates beyond caps: a watermark (its key is derived from the
/// signer when the license is signed) and output filter rules. Kept with an
/// entitlement on the license server, so every lease of it carries them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Safeguards {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<watermark::Params>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_filter: Option<FilterRules>,
}

/// A mandated safeguard no node could apply as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafeguardError {
    #[error("invalid watermark: {0}")]
    Watermark(String),
    #[error("invalid output filter rules: {0}")]
    OutputFilter(String),
}

impl Safeguards {
    pub fn is_empty(&self) -> bool {
        self.watermark.is_none() && self.output_filter.is_none()
    }

    /// Could a node apply these? Watermark parameters in range; every filter rule
    /// valid, of bounded length and never empty. Checked when a license is issued,
    /// when an entitlement is made, and when a node verifies a license.
    pub fn check(&self) -> Result<(), SafeguardError> {
        if let Some(params) = &self.watermark {
            params.check().map_err(SafeguardError::Watermark)?;
        }
        if let Some(rules) = &self.output_filter {
            OutputFilter::new(rules).map_err(SafeguardError::OutputFilter)?;
        }
        Ok(())
    }

    /// In words: "watermark (gamma 0.25, delta 2, context 1), output filter (1 term,
    /// 2 patterns)", or "none".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.watermark {
            parts.push(format!("watermark ({})", w.describe()));
        }
        if let Some(f) = &self.output_filter {
            let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
            parts.push(format!(
                "output filter ({}, {})",
                n(f.terms.len(), "term"),
                n(f.patterns.len(), "pattern")
            ));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Sign a license for the enrolled node and sealed model. `chain` carries the issuer
/// certificate when `signer` is an issuer rather than a root.
pub fn issue(
    signer: &SecretKey,
    chain: Option<Envelope>,
    enrollment: &EnrollmentBody,
    sealed: &Header,
    content_key: &ContentKey,
    terms: &Terms,
) -> Result<Envelope, IssueError> {
    if content_key.key_id() != sealed.key_id {
        return Err(IssueError::KeyMismatch {
            key: hex::encode(content_key.key_id()),
            sealed: hex::encode(sealed.key_id),
        });
    }
    let recipient = enrollment
        .unwrap_public()
        .map_err(|e| IssueError::Wrap(format!("the enrollment's unwrap key: {e}")))?;
    let licensee = terms.licensee.trim();
    if licensee.is_empty() || licensee.len() > 256 || licensee.chars().any(char::is_control) {
        return Err(IssueError::Licensee(
            "give the organization's name, 1 to 256 printable characters".into(),
        ));
    }
    let not_before = whole_seconds(terms.not_before);
    let expires_at = whole_seconds(terms.expires_at);
    if expires_at <= not_before {
        return Err(IssueError::EmptyWindow {
            not_before: not_before.to_rfc3339(),
            expires: expires_at.to_rfc3339(),
        });
    }
    if let Some(f) = terms
        .features
        .iter()
        .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
    {
        return Err(IssueError::UnknownFeature(f.clone()));
    }
    let grace_seconds = terms.grace.num_seconds().max(0) as u64;
    check_grace(grace_seconds)?;
    let license_id = match &terms.license_id {
        Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => id.clone(),
        Some(id) => return Err(IssueError::LicenseId(id.clone())),
        None => hex::encode(random::bytes::<16>()),
    };
    // These two are listed from the terms that mandate them, never on their own.
    terms.safeguards.check()?;
    let mut features: Vec<String> = terms
        .features
        .iter()
        .filter(|f| !SAFEGUARD_FEATURES.contains(&f.as_str()))
        .cloned()
        .collect();
    let watermark = match &terms.safeguards.watermark {
        None => None,
        Some(params) => {
            let key = WatermarkKey::derive(signer, &license_id, &sealed.model_id);
            let info = key_wrap::watermark_binding_info(&license_id, &sealed.model_id);
            let wrapped = key_wrap::wrap_secret(&recipient, &info, key.as_bytes())
                .map_err(|e| IssueError::Wrap(e.to_string()))?;
            features.push(FEATURE_WATERMARK.to_string());
            if let watermark::Params::Tournament(_) = params {
                features.push(FEATURE_WATERMARK_TOURNAMENT.to_string());
            }
            Some(WatermarkMandate {
                params: params.issued(),
                key: WrappedContentKey::from_wrapped(&recipient, wrapped),
            })
        }
    };
    if terms.safeguards.output_filter.is_some() {
        features.push(FEATURE_OUTPUT_FILTER.to_string());
    }
    features.sort();
    features.dedup();
    let license_salt = random::bytes::<16>();
    let components = enrollment
        .hardware
        .components
        .iter()
        .map(|c| BoundComponent {
            kind: c.kind,
            hashes: c
                .hashes
                .iter()
                .map(|h| Digest(hardware::license_hash(&license_salt, &h.0)))
                .collect(),
        })
        .collect();
    let info = key_wrap::binding_info(&license_id, &sealed.model_id);
    let wrapped = key_wrap::wrap(&recipient, &info, content_key)
        .map_err(|e| IssueError::Wrap(e.to_string()))?;
    let body = LicenseBody {
        version: LicenseBody::VERSION,
        license_id,
        serial: terms.serial,
        licensee: licensee.to_string(),
        issued_at: whole_seconds(terms.issued_at),
        not_before,
        expires_at,
        grace_seconds,
        node: NodeBinding {
            node_id: enrollment.node_id.clone(),
            signing_key: enrollment.signing_key,
            unwrap_key: recipient.as_bytes().to_vec(),
            unwrap_suite: recipient.suite_field(),
            hardware: LicenseHardware {
                enrollment_salt: enrollment.hardware.salt,
                license_salt,
                components,
                policy: enrollment.hardware.policy.clone(),
            },
        },
        model: ModelBinding {
            model_id: sealed.model_id.clone(),
            sealed_header_sha256: Digest(sealed.digest()),
            plaintext_sha256: Digest(sealed.plaintext_sha256),
            plaintext_len: sealed.plaintext_len,
            key_id: sealed.key_id,
        },
        caps: terms.caps.clone(),
        features,
        renewal: terms.renewal.clone(),
        content_key: WrappedContentKey::from_wrapped(&recipient, wrapped),
        watermark,
        output_filter: terms.safeguards.output_filter.clone(),
        extensions: Vec::new(),
    };
    Ok(Envelope::sign(&body, signer, chain.into_iter().collect()))
}

/// Root-sign an issuer certificate.
pub fn certify(root: &SecretKey, certificate: &IssuerCertBody) -> Result<Envelope, IssueError> {
    if certificate.not_after <= certificate.not_before {
        return Err(IssueError::Certificate(
            "its validity ends before it starts".into(),
        ));
    }
    if certificate.orgs.is_empty() || certificate.models.is_empty() {
        return Err(IssueError::Certificate(
            "name at least one organization and one model (or '*')".into(),
        ));
    }
    Ok(Envelope::sign(certificate, root, vec![]))
}
