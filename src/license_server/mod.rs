//! The license server: vendors (or their delegated service in a customer's datacenter)
//! run it to approve enrollments and hand out short leases that nodes renew by
//! themselves, so a long entitlement stays revocable and usage flows back.
//!
//! - [`store`]: SQLite (embedded, group-committed) or PostgreSQL (replicas), migrations.
//! - [`registry`]: the records and rules, written once for both databases.
//! - [`checkpoints`]: usage checkpoints from renewals and checkpoint reports, compared
//!   with the ones held (`ledger_check`).
//! - [`accounts`]: portal accounts (staff, invited organizations) and sessions.
//! - [`applications`]: organizations' applications for a model, the vendor's review,
//!   and its append-only history.
//! - [`oversight`]: per organization and node: license phase, renewals, findings, usage
//!   per day, month and quarter against the caps.
//! - [`portal`]: the web console under `/portal/` (server-rendered HTML).
//! - [`admin`]: the vendor's operations, with the typed requests and responses the
//!   admin API, the `admin` command line and the portal share.
//! - [`http`]: the node API (`/v1/enrollments`, `/v1/renewals`, `/v1/checkpoints`) and
//!   the admin API.
//! - [`rate_limit`]: limits on what anyone may submit without credentials.
//!
//! Renewal requests and checkpoint reports are accepted once, and only fresh: `sent_at`
//! within [`REQUEST_WINDOW_SECONDS`] of the server's clock, and a nonce not seen before
//! (nonces are remembered in the database, so this holds across replicas). A captured
//! message replayed later, to this replica or another, is refused before it touches a
//! license or the node's usage record.
//!
//! The server signs with an issuer key that the vendor's root certified (`leasehold
//! certify-issuer`); the root key stays offline. Content keys are stored encrypted
//! under a key derived from the issuer key (`crypto::at_rest`).

pub mod accounts;
pub mod admin;
pub mod applications;
pub mod audits;
pub mod checkpoints;
pub mod http;
pub mod ledger_check;
pub mod metrics;
pub mod oversight;
pub mod portal;
pub mod rate_limit;
pub mod registry;
pub mod store;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Duration, Utc};

use crate::crypto::at_rest;
use crate::crypto::keyfile;
use crate::crypto::signing::SecretKey;
use crate::crypto::ContentKey;
use crate::format::{DocumentKind, Envelope};
use crate::fsutil;
use crate::license::body::check_grace;
use crate::license::issue::{self as issuing, Safeguards, Terms};
use crate::license::issuer::ANY;
use crate::license::verify::authenticate_signer;
use crate::license::{IssuerCertBody, TrustRoots};
use crate::node::{clock, enrollment};
use crate::protocol::{self, Decision, RenewalResponseBody};
use crate::seal::Header;
use registry::{Entitlement, IssuerLimits, Renewal, RenewalInput};
use store::{Store, StoreError};

/// The issuer key and its root-signed certificate.
pub struct Issuer {
    key: SecretKey,
    certificate: Envelope,
    scope: IssuerCertBody,
}

impl Issuer {
    /// Load and check: the certificate chains to a root compiled into this build,
    /// names this key, and is valid now.
    pub fn load(key_path: &Path, cert_path: &Path) -> anyhow::Result<Issuer> {
        let key = keyfile::read_secret_key(key_path)?;
        let bytes = fsutil::read_limited(
            cert_path,
            crate::format::envelope::MAX_DOCUMENT_BYTES,
            "issuer certificate",
        )?;
        let certificate = Envelope::parse(&bytes, DocumentKind::IssuerCertificate)
            .with_context(|| format!("{} is not an issuer certificate", cert_path.display()))?;
        let now = clock::system_now();
        authenticate_signer(&certificate, &TrustRoots::compiled_in()).map_err(|v| {
            anyhow::anyhow!(
                "the issuer certificate {} is not trusted: {}",
                cert_path.display(),
                v.explain(now)
            )
        })?;
        let scope: IssuerCertBody = certificate.decode_body()?;
        if scope.issuer_key != key.public_key().to_bytes() {
            bail!(
                "the issuer certificate {} certifies key {}, not the key in {} ({})",
                cert_path.display(),
                crate::crypto::signing::PublicKey::from_bytes(&scope.issuer_key)
                    .map(|k| k.key_id())
                    .unwrap_or_else(|_| "?".into()),
                key_path.display(),
                key.public_key().key_id()
            );
        }
        if now >= scope.not_after {
            bail!(
                "the issuer certificate expired at {}; ask the vendor's root holder for a new one (`leasehold certify-issuer`)",
                scope.not_after
            );
        }
        Ok(Issuer {
            key,
            certificate,
            scope,
        })
    }

    pub fn key_id(&self) -> String {
        self.key.public_key().key_id()
    }

    pub fn scope(&self) -> &IssuerCertBody {
        &self.scope
    }

    /// When the issuer certificate expires.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.scope.not_after
    }

    fn limits(&self) -> IssuerLimits {
        IssuerLimits {
            not_after: self.scope.not_after,
            max_lease_seconds: self.scope.max_lease_seconds,
        }
    }

    fn covers(list: &[String], item: &str) -> bool {
        list.iter().any(|x| x == ANY || x == item)
    }

    fn sign(&self, body: &RenewalResponseBody) -> String {
        protocol::sign_response(&self.key, Some(&self.certificate), body).render()
    }
}

/// An error for an API caller: HTTP status class and a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An audit answer that does not check out (HTTP 422, code `audit_answer_refused`).
    #[error("{0}")]
    Unprocessable(String),
    /// A renewal request seen before (HTTP 409, code `replayed_request`).
    #[error("{0}")]
    Replayed(String),
    /// A renewal request signed too far from the server's time (HTTP 403, code
    /// `request_time_skewed`).
    #[error("{0}")]
    TimeSkewed(String),
    /// Too many submissions (HTTP 429 with `Retry-After`, code `rate_limited`).
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(m) => ApiError::Forbidden(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// What `admin entitle` asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EntitleRequest {
    pub org: String,
    pub models: Vec<String>,
    pub nodes: u64,
    pub term_end: DateTime<Utc>,
    pub lease_seconds: u64,
    pub grace_seconds: u64,
    #[serde(default)]
    pub caps: crate::license::Caps,
    /// A watermark and output filter every license of the entitlement mandates.
    #[serde(default)]
    pub safeguards: Safeguards,
    /// Approve enrollments that carry one of the organization's enrollment tokens on
    /// arrival, within the seats.
    #[serde(default)]
    pub auto_approve: bool,
}

/// How far (seconds) a renewal request's signed `sent_at` may be from the server's
/// clock, either way, on `POST /v1/renewals`. Its nonce is remembered at least that
/// long past `sent_at`, so a request replayed within the window is refused by nonce and
/// one replayed later by time.
pub const REQUEST_WINDOW_SECONDS: i64 = 300;

/// A kind of node-signed message held to the freshness rules: its endpoint (for
/// metrics) and its name (for messages).
pub(crate) struct SignedMessage {
    pub endpoint: &'static str,
    pub name: &'static str,
}

pub(crate) const RENEWAL_REQUEST: SignedMessage = SignedMessage {
    endpoint: "renewals",
    name: "renewal request",
};

/// A node-signed message names its node id and key: the id must be the key's.
pub(crate) fn check_node_id(
    node_id: &str,
    node_key: &[u8; 32],
    what: &str,
) -> Result<(), ApiError> {
    if crate::crypto::signing::PublicKey::from_bytes(node_key)
        .map(|k| k.key_id())
        .ok()
        .as_deref()
        != Some(node_id)
    {
        return Err(ApiError::BadRequest(format!(
            "the {what}'s node id does not match its node key"
        )));
    }
    Ok(())
}

/// Who hands the server a renewal request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPath {
    /// A node, over `POST /v1/renewals`: `sent_at` must be within the window.
    Node,
    /// The vendor with the admin token (`admin renew`, `POST /admin/renewals`): an
    /// air-gapped request file that travelled by hand, so any age; the nonce is still
    /// remembered and a replay refused.
    Admin,
}

/// Limits on enrollment submissions (unauthenticated), per minute.
pub struct EnrollmentLimits {
    pub per_address: rate_limit::RateLimit,
    pub per_org: rate_limit::RateLimit,
}

/// `--enrollments-per-address` default.
pub const DEFAULT_ENROLLMENTS_PER_ADDRESS: u32 = 10;
/// `--enrollments-per-org` default.
pub const DEFAULT_ENROLLMENTS_PER_ORG: u32 = 60;

impl EnrollmentLimits {
    pub fn per_minute(per_address: u32, per_org: u32) -> EnrollmentLimits {
        EnrollmentLimits {
            per_address: rate_limit::RateLimit::per_minute(per_address),
            per_org: rate_limit::RateLimit::per_minute(per_org),
        }
    }
}

impl Default for EnrollmentLimits {
    fn default() -> Self {
        EnrollmentLimits::per_minute(DEFAULT_ENROLLMENTS_PER_ADDRESS, DEFAULT_ENROLLMENTS_PER_ORG)
    }
}

/// The server's logic, shared by its HTTP handlers.
pub struct Service {
    pub store: Store,
    pub issuer: Issuer,
    pub metrics: metrics::ServerMetrics,
    pub enrollment_limits: EnrollmentLimits,
    /// Audit answers read at once (each up to `ledger::audit::MAX_ANSWER_BYTES` in
    /// memory), per replica.
    pub audit_answers: tokio::sync::Semaphore,
}

impl Service {
    pub fn new(store: Store, issuer: Issuer, enrollment_limits: EnrollmentLimits) -> Arc<Service> {
        Arc::new(Service {
            store,
            issuer,
            metrics: Default::default(),
            enrollment_limits,
            audit_answers: tokio::sync::Semaphore::new(audits::ANSWERS_AT_ONCE),
        })
    }

    /// Forget renewal nonces whose window has passed, keeping them one window longer so
    /// that replicas whose clocks differ by up to that still agree, and portal sessions
    /// a day after they expired or ended. Run periodically.
    pub async fn forget_old_nonces(&self) -> Result<u64, ApiError> {
        let now = clock::system_now();
        let before = now - Duration::seconds(REQUEST_WINDOW_SECONDS);
        Ok(self
            .store
            .transact(move |sql| {
                accounts::forget_sessions(sql, now - Duration::days(1))?;
                registry::forget_nonces(sql, before)
            })
            .await?)
    }

    /// Store a model's header and content key (encrypted at rest).
    pub async fn add_model(
        &self,
        header_bytes: Vec<u8>,
        key: ContentKey,
    ) -> Result<Header, ApiError> {
        let header = Header::parse(&header_bytes)
            .map_err(|e| ApiError::BadRequest(format!("not a sealed model header: {e}")))?;
        if key.key_id() != header.key_id {
            return Err(ApiError::BadRequest(format!(
                "the content key (key id {}) does not belong to model '{}' (sealed with key id {}); pass the .key file written when it was sealed",
                hex::encode(key.key_id()),
                header.model_id,
                hex::encode(header.key_id)
            )));
        }
        if !Issuer::covers(&self.issuer.scope.models, &header.model_id) {
            return Err(ApiError::Forbidden(format!(
                "this server's issuer certificate does not cover model '{}' (it covers: {})",
                header.model_id,
                self.issuer.scope.models.join(", ")
            )));
        }
        let stored = at_rest::seal(&self.issuer.key, &header.model_id, &key);
        let model_id = header.model_id.clone();
        let encoded = header.encode();
        self.store
            .transact(move |sql| {
                registry::add_model(sql, &model_id, encoded, stored, clock::system_now())
            })
            .await?;
        Ok(header)
    }

    pub async fn entitle(&self, request: EntitleRequest) -> Result<Entitlement, ApiError> {
        let now = clock::system_now();
        let entitlement = self.entitlement_for(request, now)?;
        Ok(self
            .store
            .transact(move |sql| registry::entitle(sql, entitlement, now))
            .await?)
    }

    /// An entitlement as requested, checked against this server's issuer certificate
    /// (not yet stored).
    pub(crate) fn entitlement_for(
        &self,
        request: EntitleRequest,
        now: DateTime<Utc>,
    ) -> Result<Entitlement, ApiError> {
        let org = request.org.trim().to_string();
        if org.is_empty() || org.len() > 256 || org.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(
                "--org must be 1 to 256 printable characters".into(),
            ));
        }
        if request.models.is_empty() {
            return Err(ApiError::BadRequest("name at least one --model".into()));
        }
        if request.nodes == 0 {
            return Err(ApiError::BadRequest("--nodes must be at least 1".into()));
        }
        if request.lease_seconds == 0 {
            return Err(ApiError::BadRequest(
                "--lease must be longer than 0 s".into(),
            ));
        }
        check_grace(request.grace_seconds)
            .map_err(|e| ApiError::BadRequest(format!("--grace: {e}")))?;
        request
            .safeguards
            .check()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let scope = &self.issuer.scope;
        if !Issuer::covers(&scope.orgs, &org) {
            return Err(ApiError::Forbidden(format!(
                "this server's issuer certificate does not cover organization '{org}' (it covers: {})",
                scope.orgs.join(", ")
            )));
        }
        if let Some(m) = request.models.iter().find(|m| {
            m.as_str() == ANY && !scope.models.iter().any(|s| s == ANY)
                || m.as_str() != ANY && !Issuer::covers(&scope.models, m)
        }) {
            return Err(ApiError::Forbidden(format!(
                "this server's issuer certificate does not cover model '{m}' (it covers: {})",
                scope.models.join(", ")
            )));
        }
        if request.lease_seconds > scope.max_lease_seconds {
            return Err(ApiError::Forbidden(format!(
                "--lease {} s is longer than the issuer certificate's maximum lease of {} s",
                request.lease_seconds, scope.max_lease_seconds
            )));
        }
        if request.lease_seconds.saturating_add(request.grace_seconds) > scope.max_lease_seconds {
            return Err(ApiError::Forbidden(format!(
                "--lease {} s plus --grace {} s is longer than the issuer certificate's maximum lease of {} s, which bounds lease and grace together",
                request.lease_seconds, request.grace_seconds, scope.max_lease_seconds
            )));
        }
        if request.term_end <= now {
            return Err(ApiError::BadRequest(format!(
                "--term-end {} is in the past",
                request.term_end
            )));
        }
        Ok(Entitlement {
            id: String::new(),
            org,
            models: request.models,
            nodes: request.nodes,
            enrolled: 0,
            term_end: crate::format::time::whole_seconds(request.term_end),
            lease_seconds: request.lease_seconds,
            grace_seconds: request.grace_seconds,
            caps: request.caps,
            created_at: now,
            revoked_at: None,
            safeguards: request.safeguards,
            auto_approve: request.auto_approve,
        })
    }

    /// A node submits its enrollment from `source`. Rate-limited per source address
    /// (before anything is parsed) and per organization named.
    /// With one of the organization's enrollment tokens (`token`), an entitlement that
    /// approves automatically approves it at once while it has a free seat.
    pub async fn enroll(
        &self,
        bytes: &[u8],
        source: IpAddr,
        token: Option<&str>,
    ) -> Result<registry::Submitted, ApiError> {
        let limits = &self.enrollment_limits;
        let limited = |what: String, limit: u32, retry: rate_limit::RetryAfter| {
            self.metrics.rejected("enrollments", "rate-limited");
            ApiError::RateLimited {
                message: format!(
                    "too many enrollment submissions {what} (at most {limit} a minute); retry in {} s",
                    retry.0
                ),
                retry_after: retry.0,
            }
        };
        let now = clock::monotonic_now();
        limits
            .per_address
            .take(&source.to_string(), now)
            .map_err(|r| limited(format!("from {source}"), limits.per_address.limit(), r))?;
        let body = enrollment::verify(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if let Some(request) = &body.request {
            // No entitlement names a longer one (`entitle` refuses it); this also
            // bounds what the limiter keeps per organization.
            if request.organization.len() > 256 {
                return Err(ApiError::BadRequest(
                    "the enrollment's organization name is longer than 256 bytes".into(),
                ));
            }
            limits
                .per_org
                .take(&request.organization, now)
                .map_err(|r| {
                    limited(
                        format!("for organization '{}'", request.organization),
                        limits.per_org.limit(),
                        r,
                    )
                })?;
        }
        let document = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::BadRequest("the enrollment is not UTF-8".into()))?;
        let token_hash = token.map(accounts::secret_hash);
        let submitted = self
            .store
            .transact(move |sql| {
                let now = clock::system_now();
                let mut submitted = registry::submit_enrollment(sql, &document, &body, now)?;
                let request = body.request.as_ref().expect("submit_enrollment checked it");
                let token_org = match &token_hash {
                    Some(hash) => accounts::enrollment_token_org(sql, hash)?,
                    None => None,
                };
                let with_token = token_org.as_deref() == Some(request.organization.as_str());
                if submitted.new && with_token {
                    sql.execute(
                        "UPDATE enrollments SET token_org = $1 WHERE id = $2",
                        &[
                            (&request.organization).into(),
                            (&submitted.enrollment_id).into(),
                        ],
                    )?;
                }
                if submitted.new
                    && with_token
                    && registry::auto_approve(
                        sql,
                        &submitted.enrollment_id,
                        &request.organization,
                        &request.model_id,
                        now,
                    )?
                {
                    submitted.status = "approved".into();
                }
                Ok(submitted)
            })
            .await?;
        self.metrics.enrollment(submitted.new);
        if submitted.new {
            tracing::info!(
                "enrollment {} submitted ({})",
                submitted.enrollment_id,
                if submitted.status == "approved" {
                    "approved on arrival: enrollment token, within the entitlement's seats"
                } else {
                    "pending approval"
                }
            );
        }
        Ok(submitted)
    }

    /// The freshness rule for node-signed messages: `sent_at` within
    /// [`REQUEST_WINDOW_SECONDS`] of this server's clock (checked only when `timed`),
    /// else refused and counted. Returns until when to remember the message's nonce.
    pub(crate) fn fresh(
        &self,
        kind: &SignedMessage,
        sent_at: DateTime<Utc>,
        now: DateTime<Utc>,
        timed: bool,
    ) -> Result<DateTime<Utc>, ApiError> {
        let window = Duration::seconds(REQUEST_WINDOW_SECONDS);
        let age = now.signed_duration_since(sent_at);
        if timed && age.abs() > window {
            self.metrics.rejected(kind.endpoint, "time-skewed");
            return Err(ApiError::TimeSkewed(format!(
                "the {} was signed at {} by the node's clock, {} s {} this server's clock ({}); one more than {} s from it is refused, so that a captured one cannot be replayed. Set the node's clock (NTP) and retry",
                kind.name,
                crate::format::time::rfc3339(sent_at),
                age.num_seconds().unsigned_abs(),
                if age > Duration::zero() { "behind" } else { "ahead of" },
                crate::format::time::rfc3339(now),
                REQUEST_WINDOW_SECONDS
            )));
        }
        Ok(if timed { now.max(sent_at) } else { now } + window)
    }

    /// The refusal of a message whose nonce this server already holds, counted.
    pub(crate) fn replayed(
        &self,
        kind: &SignedMessage,
        node_id: &str,
        nonce: &[u8; 16],
    ) -> ApiError {
        self.metrics.rejected(kind.endpoint, "replayed");
        tracing::warn!(
            "refused a replayed {} for node {node_id} (nonce {})",
            kind.name,
            hex::encode(nonce)
        );
        ApiError::Replayed(format!(
            "this {} (nonce {}) was received before: a replayed one is refused. A node signs a new one for every attempt",
            kind.name,
            hex::encode(nonce)
        ))
    }

    /// A node asks for its first license or a renewal. Always answers with a signed
    /// response unless the request itself is malformed, forged, stale or replayed.
    pub async fn renew(&self, bytes: &[u8], path: RequestPath) -> Result<String, ApiError> {
        let started = std::time::Instant::now();
        let (envelope, body) =
            protocol::parse_request(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        protocol::verify_request(&envelope, &body, &body.node_key)
            .map_err(|e| ApiError::Forbidden(e.to_string()))?;
        let input = RenewalInput {
            node_id: body.node_id.clone(),
            node_key: body.node_key,
            model_id: body.model_id.clone(),
            license: body.license.clone(),
            usage: body.usage.clone(),
        };
        check_node_id(&body.node_id, &body.node_key, "request")?;
        let usage = &body.usage;
        let counters = [usage.requests, usage.prompt_tokens, usage.completion_tokens];
        if counters
            .into_iter()
            .chain(usage.ledger.as_ref().map(|l| l.seq))
            .chain(usage.tpm_rollbacks)
            .any(|n| i64::try_from(n).is_err())
        {
            return Err(ApiError::BadRequest(
                "the request's usage counters exceed 2^63 - 1, which no real ledger holds".into(),
            ));
        }
        let limits = self.issuer.limits();
        let now = clock::system_now();
        // Fresh requests only, each once: refused before anything is written, so a
        // replayed request neither renews nor plants ledger findings against the node.
        let forget_after = self.fresh(
            &RENEWAL_REQUEST,
            body.sent_at,
            now,
            path == RequestPath::Node,
        )?;
        let nonce = body.nonce;
        let decision = self
            .store
            .transact(move |sql| {
                if !registry::remember_nonce(sql, &input.node_id, &nonce, forget_after)? {
                    return Ok(None);
                }
                let renewal = registry::renew(sql, &input, limits, now)?;
                // A renewed node also hears of the audit it has to answer, if any.
                let audit = match &renewal {
                    Renewal::Grant(_) => audits::call_for(sql, &input.node_id, now)?,
                    _ => None,
                };
                Ok(Some((renewal, audit)))
            })
            .await?;
        let Some((decision, audit)) = decision else {
            return Err(self.replayed(&RENEWAL_REQUEST, &body.node_id, &body.nonce));
        };
        let decision = match decision {
            Renewal::Grant(grant) => {
                let license = self.sign_license(&grant, now)?;
                for f in &grant.findings {
                    self.metrics.finding(f.kind.as_str());
                }
                tracing::info!(
                    "renewed license {} for node {} (serial {}, expires {})",
                    grant.license_id,
                    body.node_id,
                    grant.serial,
                    grant.expires_at
                );
                Decision::Renewed { license }
            }
            Renewal::Pending { enrollment_id } => Decision::Pending {
                message: format!(
                    "enrollment {enrollment_id} waits for the vendor's approval (`leasehold admin approve {enrollment_id}`)"
                ),
                enrollment_id,
            },
            Renewal::Refused(reason, message) => {
                tracing::info!(
                    "refused node {} ({}): {message}",
                    body.node_id,
                    reason.as_str()
                );
                Decision::Refused { reason, message }
            }
        };
        let label = match &decision {
            Decision::Renewed { .. } => "renewed".to_string(),
            Decision::Pending { .. } => "pending".to_string(),
            Decision::Refused { reason, .. } => format!("refused:{}", reason.as_str()),
        };
        self.metrics.renewal(&label, started.elapsed());
        Ok(self.issuer.sign(&RenewalResponseBody {
            version: 1,
            node_id: body.node_id,
            request_nonce: body.nonce,
            server_time: now,
            decision,
            audit,
        }))
    }

    fn sign_license(
        &self,
        grant: &registry::Grant,
        now: DateTime<Utc>,
    ) -> Result<String, ApiError> {
        let internal = |e: String| ApiError::Internal(e);
        let enrollment = enrollment::verify(grant.enrollment_document.as_bytes())
            .map_err(|e| internal(format!("stored enrollment: {e}")))?;
        let header = Header::parse(&grant.header)
            .map_err(|e| internal(format!("stored header of '{}': {e}", grant.model_id)))?;
        let key = at_rest::open(&self.issuer.key, &grant.model_id, &grant.stored_key)
            .map_err(|e| internal(e.to_string()))?;
        let terms = Terms {
            licensee: grant.org.clone(),
            not_before: grant.not_before,
            expires_at: grant.expires_at,
            grace: i64::try_from(grant.grace_seconds)
                .ok()
                .and_then(Duration::try_seconds)
                .ok_or_else(|| internal(format!("grace of {} s", grant.grace_seconds)))?,
            serial: grant.serial,
            caps: grant.caps.clone(),
            features: Vec::new(),
            renewal: Vec::new(),
            issued_at: now,
            license_id: Some(grant.license_id.clone()),
            safeguards: grant.safeguards.clone(),
        };
        let license = issuing::issue(
            &self.issuer.key,
            Some(self.issuer.certificate.clone()),
            &enrollment,
            &header,
            &key,
            &terms,
        )
        .map_err(|e| internal(e.to_string()))?;
        Ok(license.render())
    }
}
