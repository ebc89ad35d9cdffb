//! The vendor's operations on the license server's state, with the typed requests and
//! responses that the HTTP admin API (`/admin/…`), the `admin` command line and the
//! portal share. Every one goes through [`Service`]: nothing outside this module and
//! `mod.rs` reads or writes the registry.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::registry::{self, Enrollment, Entitlement, LicenseRecord, NodeUsage, RevokeTarget};
use super::{ApiError, Service};
use crate::crypto::ContentKey;
use crate::node::clock;

/// `POST /admin/models`: a sealed model's header and its content key, both base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddModelRequest {
    pub header: String,
    pub content_key: String,
}

/// A model the server now holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelAdded {
    pub model_id: String,
    /// The content key's id, hex.
    pub key_id: String,
    pub plaintext_len: u64,
}

/// `GET /admin/entitlements`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntitlementList {
    pub entitlements: Vec<Entitlement>,
}

/// `GET /admin/enrollments?status=…` (all when absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnrollmentQuery {
    pub status: Option<String>,
}

/// `GET /admin/enrollments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentList {
    pub enrollments: Vec<Enrollment>,
}

/// `POST /admin/enrollments/{id}/approve|deny`: the body is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecisionRequest {
    #[serde(default)]
    pub note: String,
}

/// An enrollment after a decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    pub enrollment: Enrollment,
}

/// `GET /admin/licenses`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LicenseList {
    pub licenses: Vec<LicenseRecord>,
}

/// `POST /admin/revoke`: exactly one of license, node or org.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub license: Option<String>,
    pub node: Option<String>,
    pub org: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// How many licenses a revocation stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked_licenses: u64,
}

/// `GET /admin/usage?org=…&from=…&to=…`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageQuery {
    pub org: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Usage per node over `[from, to)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub nodes: Vec<NodeUsage>,
}

impl RevokeRequest {
    fn target(self) -> Result<(RevokeTarget, String), ApiError> {
        let target = match (self.license, self.node, self.org) {
            (Some(l), None, None) => RevokeTarget::License(l),
            (None, Some(n), None) => RevokeTarget::Node(n),
            (None, None, Some(o)) => RevokeTarget::Org(o),
            _ => {
                return Err(ApiError::BadRequest(
                    "name exactly one of license, node or org".into(),
                ))
            }
        };
        Ok((target, self.reason))
    }
}

impl Service {
    /// Add a model from its base64 header and content key.
    pub async fn add_model_from(&self, request: AddModelRequest) -> Result<ModelAdded, ApiError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let header = b64
            .decode(request.header.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("header is not base64: {e}")))?;
        let key: [u8; 32] = b64
            .decode(request.content_key.as_bytes())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| ApiError::BadRequest("content_key is not 32 bytes of base64".into()))?;
        let header = self.add_model(header, ContentKey::from_bytes(key)).await?;
        Ok(ModelAdded {
            model_id: header.model_id,
            key_id: hex::encode(header.key_id),
            plaintext_len: header.plaintext_len,
        })
    }

    /// The ids of the models this server holds.
    pub async fn model_ids(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.store.transact(registry::model_ids).await?)
    }

    pub async fn entitlements(&self) -> Result<EntitlementList, ApiError> {
        let entitlements = self.store.transact(registry::entitlements).await?;
        Ok(EntitlementList { entitlements })
    }

    pub async fn enrollments(&self, query: EnrollmentQuery) -> Result<EnrollmentList, ApiError> {
        let enrollments = self
            .store
            .transact(move |sql| registry::enrollments(sql, query.status.as_deref()))
            .await?;
        Ok(EnrollmentList { enrollments })
    }

    /// Approve (taking a seat of the organization's entitlement) or deny a pending
    /// enrollment.
    pub async fn decide_enrollment(
        &self,
        id: String,
        approve: bool,
        request: DecisionRequest,
    ) -> Result<Decided, ApiError> {
        let enrollment = self
            .store
            .transact(move |sql| {
                registry::decide(sql, &id, approve, &request.note, clock::system_now())
            })
            .await?;
        tracing::info!(
            "enrollment {} {} (node {}, org '{}', model '{}')",
            enrollment.id,
            enrollment.status,
            enrollment.node_id,
            enrollment.org,
            enrollment.model_id
        );
        Ok(Decided { enrollment })
    }

    pub async fn licenses(&self) -> Result<LicenseList, ApiError> {
        let licenses = self.store.transact(registry::licenses).await?;
        Ok(LicenseList { licenses })
    }

    /// Revoke licenses; nodes stop at their next renewal.
    pub async fn revoke(&self, request: RevokeRequest) -> Result<Revoked, ApiError> {
        let (target, reason) = request.target()?;
        let shown = format!("{target:?}");
        let n = self
            .store
            .transact(move |sql| registry::revoke(sql, &target, &reason, clock::system_now()))
            .await?;
        tracing::warn!("revoked {shown}: {n} license(s)");
        Ok(Revoked {
            revoked_licenses: n,
        })
    }

    /// Usage per node from the checkpoints received in the period (all time when open).
    pub async fn usage(&self, query: UsageQuery) -> Result<UsageReport, ApiError> {
        let from = query.from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let to = query
            .to
            .unwrap_or_else(|| clock::system_now() + chrono::Duration::seconds(1));
        let org = query.org;
        let nodes = self
            .store
            .transact(move |sql| registry::usage(sql, org.as_deref(), from, to))
            .await?;
        Ok(UsageReport { from, to, nodes })
    }
}
