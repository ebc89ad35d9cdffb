//! The license server's HTTP API.
//!
//! Nodes (no credentials: every message is signed):
//!   POST /v1/enrollments   body: an enrollment document → {enrollment_id, status};
//!                          rate-limited per source address and organization (429);
//!                          with `Authorization: Bearer <enrollment token>` of its
//!                          organization, approved on arrival when the entitlement says so
//!   POST /v1/renewals      body: a renewal request → a signed renewal response; a stale
//!                          (403 `request_time_skewed`) or replayed (409
//!                          `replayed_request`) request gets an error instead
//!   POST /v1/checkpoints   body: a checkpoint report → a signed checkpoint receipt (the
//!                          same freshness and replay rules)
//!   GET  /health           {status, server_time, issuer, database}
//!   GET  /metrics          Prometheus text format (leasehold_server_*)
//!
//! Admin (`Authorization: Bearer <token from --admin-token-file>`):
//!   POST /admin/models, POST|GET /admin/entitlements, GET /admin/enrollments,
//!   POST /admin/enrollments/{id}/approve|deny, GET /admin/licenses, POST /admin/revoke,
//!   GET /admin/usage, POST /admin/renewals (air-gapped renewals: as /v1/renewals, but a
//!   request file that travelled by hand may be of any age; its nonce is still checked),
//!   POST /admin/staff, POST /admin/staff/{name}/remove, POST /admin/tokens/revoke,
//!   POST /admin/invitations, POST /admin/enrollment-tokens, GET /admin/orgs, GET /admin/orgs/{org}
//!   (licenses, nodes, findings, usage per day/month/quarter), GET /admin/applications,
//!   GET /admin/applications/{id}, POST /admin/applications/{id}/review, GET /admin/history
//!   (what the portal does, for the `admin` command).
//!
//! The portal (`/portal/…`, HTML for people): see [`super::portal`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::accounts::{
    EnrollmentToken, EnrollmentTokenRequest, Invitation, InviteRequest, OrgList,
    RevokeTokensRequest, StaffAdded, StaffRequest, TokensRevoked,
};
use super::admin::{
    AddModelRequest, Decided, DecisionRequest, EnrollmentList, EnrollmentQuery, EntitlementList,
    LicenseList, ModelAdded, RevokeRequest, Revoked, UsageQuery, UsageReport,
};
use super::applications::{ApplicationDetail, ApplicationList, ApplicationQuery, History, Review};
use super::audits::{AnswerReceipt, Audit, AuditList, AuditRequest, Via};
use super::oversight::OrgOverview;
use super::registry;
use super::{ApiError, EntitleRequest, RequestPath, Service};
use crate::http_auth::{bearer, token_matches};
use crate::ledger::report::Period;
use crate::node::clock;

/// Largest request body (signed documents are at most 256 KiB).
const MAX_BODY: usize = 512 * 1024;

pub struct ServerState {
    pub service: Arc<Service>,
    pub admin_token: String,
    /// Served over TLS, or behind an https `--public-url`: the portal's cookies are
    /// `Secure`.
    pub tls: bool,
    /// `--public-url`: the origin of the portal's links (else the request's host).
    pub public_url: Option<String>,
    /// Portal sign-in attempts per source address.
    pub sign_in_limit: super::rate_limit::RateLimit,
}

/// Portal sign-in attempts allowed per source address and minute.
pub const SIGN_INS_PER_MINUTE: u32 = 10;

type Shared = Arc<ServerState>;

/// `GET /metrics`: Prometheus text format.
async fn metrics_page(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        super::metrics::render(&state.service),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = match &self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden(_) => "refused",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unprocessable(_) => "audit_answer_refused",
            ApiError::Replayed(_) => "replayed_request",
            ApiError::TimeSkewed(_) => "request_time_skewed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(m) => {
                tracing::error!("internal error: {m}");
                "internal"
            }
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        if let ApiError::RateLimited { retry_after, .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        }
        response
    }
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Replayed(_) => StatusCode::CONFLICT,
            ApiError::TimeSkewed(_) => StatusCode::FORBIDDEN,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/admin/models", post(add_model))
        .route("/admin/entitlements", post(entitle).get(entitlements))
        .route("/admin/enrollments", get(enrollments))
        .route("/admin/enrollments/{id}/approve", post(approve))
        .route("/admin/enrollments/{id}/deny", post(deny))
        .route("/admin/licenses", get(licenses))
        .route("/admin/revoke", post(revoke))
        .route("/admin/usage", get(usage))
        .route("/admin/renewals", post(admin_renew))
        .route("/admin/staff", post(add_staff))
        .route("/admin/staff/{name}/remove", post(remove_staff))
        .route("/admin/tokens/revoke", post(revoke_tokens))
        .route("/admin/invitations", post(invite))
        .route("/admin/enrollment-tokens", post(enrollment_token))
        .route("/admin/orgs", get(orgs))
        .route("/admin/orgs/{org}", get(org_overview))
        .route("/admin/applications", get(applications))
        .route("/admin/applications/{id}", get(application))
        .route("/admin/applications/{id}/review", post(review))
        .route("/admin/history", get(history))
        .route("/admin/audits", post(request_audit).get(audits))
        .route("/admin/audits/{id}", get(audit))
        .route("/admin/audits/{id}/nodes/{node}/report", get(audit_report))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // Audit answers carry a period of ledger records: outside the small body limit
    // below; `take_answer` reads them with their own limit and deadline.
    let answers = Router::new()
        .route("/v1/audits/answer", post(answer_audit))
        .merge(
            Router::new()
                .route("/admin/audits/import", post(import_audit_answer))
                .layer(middleware::from_fn_with_state(state.clone(), require_admin)),
        );
    Router::new()
        .route("/v1/enrollments", post(enroll))
        .route("/v1/renewals", post(renew))
        .route("/v1/checkpoints", post(checkpoint))
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .merge(admin)
        .merge(super::portal::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(answers)
        .with_state(state)
}

async fn require_admin(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(t) if token_matches(t, &state.admin_token) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "invalid_admin_token", "message": "admin endpoints need 'Authorization: Bearer <token>' with the token from the server's --admin-token-file"}})),
        )
            .into_response(),
    }
}

async fn health(State(state): State<Shared>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "server_time": crate::format::time::rfc3339(clock::system_now()),
        "issuer": state.service.issuer.key_id(),
        "database": state.service.store.kind(),
    }))
}

/// Count an error answer for `/metrics`.
fn counted<T>(state: &ServerState, result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &result {
        state.service.metrics.error(e.status().as_u16());
    }
    result
}

async fn enroll(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An organization's enrollment token, when the node has one.
    let token = bearer(&headers);
    let submitted = counted(&state, state.service.enroll(&body, peer.ip(), token).await)?;
    let status = if submitted.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted)).into_response())
}

async fn renew(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    renew_from(state, body, RequestPath::Node).await
}

/// Air-gapped renewals the vendor submits: exempt from the request window.
async fn admin_renew(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    renew_from(state, body, RequestPath::Admin).await
}

async fn renew_from(state: Shared, body: Bytes, path: RequestPath) -> Result<Response, ApiError> {
    let document = counted(&state, state.service.renew(&body, path).await)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], document).into_response())
}

async fn checkpoint(State(state): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let receipt = counted(&state, state.service.checkpoint(&body).await)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], receipt).into_response())
}

async fn add_model(
    State(state): State<Shared>,
    Json(req): Json<AddModelRequest>,
) -> Result<Json<ModelAdded>, ApiError> {
    Ok(Json(state.service.add_model_from(req).await?))
}

async fn entitle(
    State(state): State<Shared>,
    Json(req): Json<EntitleRequest>,
) -> Result<Json<registry::Entitlement>, ApiError> {
    Ok(Json(state.service.entitle(req).await?))
}

async fn entitlements(State(state): State<Shared>) -> Result<Json<EntitlementList>, ApiError> {
    Ok(Json(state.service.entitlements().await?))
}

async fn enrollments(
    State(state): State<Shared>,
    Query(query): Query<EnrollmentQuery>,
) -> Result<Json<EnrollmentList>, ApiError> {
    Ok(Json(state.service.enrollments(query).await?))
}

/// The decision's body is optional JSON (`{"note": …}`).
async fn decide(
    state: Shared,
    id: String,
    approve: bool,
    body: Bytes,
) -> Result<Json<Decided>, ApiError> {
    let request: DecisionRequest = if body.is_empty() {
        DecisionRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?
    };
    Ok(Json(
        state
            .service
            .decide_enrollment(id, approve, request)
            .await?,
    ))
}

async fn approve(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(state, id, true, body).await
}

async fn deny(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(state, id, false, body).await
}

async fn licenses(State(state): State<Shared>) -> Result<Json<LicenseList>, ApiError> {
    Ok(Json(state.service.licenses().await?))
}

async fn revoke(
    State(state): State<Shared>,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    Ok(Json(state.service.revoke(req).await?))
}

async fn usage(
    State(state): State<Shared>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    Ok(Json(state.service.usage(query).await?))
}

/// The admin token acts as staff member `admin` in the history.
const ADMIN_ACTOR: &str = "staff:admin";

async fn add_staff(
    State(state): State<Shared>,
    Json(req): Json<StaffRequest>,
) -> Result<Json<StaffAdded>, ApiError> {
    Ok(Json(state.service.add_staff(req).await?))
}

async fn remove_staff(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let removed = state.service.remove_staff(&name).await?;
    Ok(Json(json!({ "name": name, "removed": removed })))
}

async fn revoke_tokens(
    State(state): State<Shared>,
    Json(req): Json<RevokeTokensRequest>,
) -> Result<Json<TokensRevoked>, ApiError> {
    Ok(Json(state.service.revoke_org_tokens(req).await?))
}

async fn invite(
    State(state): State<Shared>,
    Json(req): Json<InviteRequest>,
) -> Result<Json<Invitation>, ApiError> {
    Ok(Json(state.service.invite(req, ADMIN_ACTOR).await?))
}

async fn enrollment_token(
    State(state): State<Shared>,
    Json(req): Json<EnrollmentTokenRequest>,
) -> Result<Json<EnrollmentToken>, ApiError> {
    Ok(Json(
        state.service.enrollment_token(req, ADMIN_ACTOR).await?,
    ))
}

async fn orgs(State(state): State<Shared>) -> Result<Json<OrgList>, ApiError> {
    Ok(Json(OrgList {
        orgs: state.service.orgs().await?,
    }))
}

async fn org_overview(
    State(state): State<Shared>,
    Path(org): Path<String>,
) -> Result<Json<OrgOverview>, ApiError> {
    Ok(Json(state.service.org_overview(&org).await?))
}

async fn applications(
    State(state): State<Shared>,
    Query(query): Query<ApplicationQuery>,
) -> Result<Json<ApplicationList>, ApiError> {
    Ok(Json(state.service.applications(query, None).await?))
}

async fn application(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ApplicationDetail>, ApiError> {
    Ok(Json(state.service.application(&id, None).await?))
}

async fn review(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Json(review): Json<Review>,
) -> Result<Json<ApplicationDetail>, ApiError> {
    Ok(Json(
        state.service.review(&id, ADMIN_ACTOR, review, None).await?,
    ))
}

/// `?org=…`: one organization's.
#[derive(serde::Deserialize)]
struct HistoryQuery {
    org: Option<String>,
}

async fn history(
    State(state): State<Shared>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    Ok(Json(state.service.history(query.org.as_deref()).await?))
}

async fn request_audit(
    State(state): State<Shared>,
    Json(req): Json<AuditRequest>,
) -> Result<Json<Audit>, ApiError> {
    Ok(Json(state.service.request_audit(req, "admin-token").await?))
}

async fn audits(
    State(state): State<Shared>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<AuditList>, ApiError> {
    Ok(Json(state.service.audits(query.org.as_deref()).await?))
}

async fn audit(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Audit>, ApiError> {
    Ok(Json(state.service.audit(&id, None).await?))
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    by: Option<Period>,
    format: Option<String>,
}

/// A node's report: JSON, or `?format=csv` (the CSV of `leasehold audit report`).
async fn audit_report(
    State(state): State<Shared>,
    Path((id, node)): Path<(String, String)>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let by = query.by.unwrap_or(Period::Quarter);
    let report = state.service.audit_report(&id, &node, by, None).await?;
    Ok(match query.format.as_deref() {
        Some("csv") => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::ledger::report::csv(&report.rows),
        )
            .into_response(),
        None | Some("json") => Json(report).into_response(),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format '{other}' is neither 'json' nor 'csv'"
            )))
        }
    })
}

/// A node uploads its answer to an audit (after a renewal asked for it).
async fn answer_audit(
    State(state): State<Shared>,
    body: axum::body::Body,
) -> Result<Json<AnswerReceipt>, ApiError> {
    take_answer(state, body, Via::Upload).await
}

/// The vendor imports an answer an air-gapped node exported.
async fn import_audit_answer(
    State(state): State<Shared>,
    body: axum::body::Body,
) -> Result<Json<AnswerReceipt>, ApiError> {
    take_answer(state, body, Via::Import).await
}

/// Read an answer (only while fewer than `ANSWERS_AT_ONCE` are being read, so that
/// large bodies cannot pile up in memory) and take it.
async fn take_answer(
    state: Shared,
    body: axum::body::Body,
    via: Via,
) -> Result<Json<AnswerReceipt>, ApiError> {
    let result = async {
        let _permit = state
            .service
            .audit_answers
            .try_acquire()
            .map_err(|_| ApiError::RateLimited {
                message: "the license server is reading other audit answers; send this one again later (a node does so at its next renewal)".into(),
                retry_after: 30,
            })?;
        let limit = crate::ledger::audit::MAX_ANSWER_BYTES as usize;
        let deadline = std::time::Duration::from_secs(super::audits::ANSWER_READ_SECONDS);
        let bytes = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit))
            .await
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "the audit answer did not arrive within {} s",
                    deadline.as_secs()
                ))
            })?
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "cannot read the audit answer (at most {limit} bytes): {e}"
                ))
            })?;
        state.service.answer_audit(Vec::from(bytes), via).await
    }
    .await;
    Ok(Json(counted(&state, result)?))
}
