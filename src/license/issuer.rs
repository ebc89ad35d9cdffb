//! Issuer certificates: the root delegates issuing to an issuer key (the license
//! server's) within a scope, so the root itself can stay offline.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::body::LicenseBody;
use crate::format::encoding::base64_array;
use crate::format::{Body, DocumentKind};

/// Wildcard meaning "any organization" or "any model" in a certificate's scope.
pub const ANY: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerCertBody {
    pub version: u32,
    #[serde(with = "base64_array")]
    pub issuer_key: [u8; 32],
    /// Licensee organizations the issuer may license (`*` for any).
    pub orgs: Vec<String>,
    /// Model ids the issuer may license (`*` for any).
    pub models: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Longest license the issuer may sign, in seconds: from not_before to the end of
    /// grace (`expires_at - not_before + grace_seconds`), so grace cannot stretch a lease.
    pub max_lease_seconds: u64,
}

impl Body for IssuerCertBody {
    const KIND: DocumentKind = DocumentKind::IssuerCertificate;
    const VERSION: u32 = 1;
}

impl IssuerCertBody {
    /// Is `license` within what this certificate allows? Names the first violation.
    pub fn authorizes(&self, license: &LicenseBody) -> Result<(), String> {
        let in_scope = |list: &[String], item: &str| list.iter().any(|x| x == ANY || x == item);
        if !in_scope(&self.orgs, &license.licensee) {
            return Err(format!(
                "the issuer is not certified for organization '{}' (certified for: {})",
                license.licensee,
                self.orgs.join(", ")
            ));
        }
        if !in_scope(&self.models, &license.model.model_id) {
            return Err(format!(
                "the issuer is not certified for model '{}' (certified for: {})",
                license.model.model_id,
                self.models.join(", ")
            ));
        }
        if license.issued_at < self.not_before || license.issued_at > self.not_after {
            return Err(format!(
                "the license was issued at {}, outside the issuer certificate's validity ({} to {})",
                license.issued_at, self.not_before, self.not_after
            ));
        }
        let max = i64::try_from(self.max_lease_seconds).unwrap_or(i64::MAX);
        let lease = (license.expires_at - license.not_before).num_seconds();
        if lease > max {
            return Err(format!(
                "the license lasts {lease} s, longer than the issuer's maximum lease of {} s",
                self.max_lease_seconds
            ));
        }
        let grace = i64::try_from(license.grace_seconds).unwrap_or(i64::MAX);
        if lease.saturating_add(grace) > max {
            return Err(format!(
                "the license lasts {lease} s plus {grace} s of grace, longer than the issuer's maximum lease of {} s (which bounds lease and grace together)",
                self.max_lease_seconds
            ));
        }
        if license.grace_ends() > self.not_after {
            return Err(format!(
                "the license runs (with grace) until {}, past the issuer certificate's end {}",
                license.grace_ends(),
                self.not_after
            ));
        }
        Ok(())
    }
}
