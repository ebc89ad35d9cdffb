//! The license server's HTTP API.
//!
//! Nodes (no credentials: every message is signed):
//!   POST /v1/enrollments   body: an enrollment document → {enrollment_id, status};
//!                          rate-limited per source address and organization (429)
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
//!   request file that travelled by hand may be of any age; its nonce is still checked).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{self, RevokeTarget};
use super::{ApiError, EntitleRequest, RequestPath, Service};
use crate::crypto::ContentKey;
use crate::http_auth::{bearer, token_matches};
use crate::node::clock;

/// Largest request body (signed documents are at most 256 KiB).
const MAX_BODY: usize = 512 * 1024;

pub struct ServerState {
    pub service: Arc<Service>,
    pub admin_token: String,
}

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
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Replayed(_) => StatusCode::CONFLICT,
            ApiError::TimeSkewed(_) => StatusCode::FORBIDDEN,
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
        .layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/v1/enrollments", post(enroll))
        .route("/v1/renewals", post(renew))
        .route("/v1/checkpoints", post(checkpoint))
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .merge(admin)
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let submitted = counted(&state, state.service.enroll(&body, peer.ip()).await)?;
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

#[derive(Deserialize)]
struct AddModel {
    header: String,
    content_key: String,
}

async fn add_model(
    State(state): State<Shared>,
    Json(req): Json<AddModel>,
) -> Result<Json<Value>, ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = b64
        .decode(req.header.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("header is not base64: {e}")))?;
    let key: [u8; 32] = b64
        .decode(req.content_key.as_bytes())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| ApiError::BadRequest("content_key is not 32 bytes of base64".into()))?;
    let header = state
        .service
        .add_model(header, ContentKey::from_bytes(key))
        .await?;
    Ok(Json(json!({
        "model_id": header.model_id,
        "key_id": hex::encode(header.key_id),
        "plaintext_len": header.plaintext_len,
    })))
}

async fn entitle(
    State(state): State<Shared>,
    Json(req): Json<EntitleRequest>,
) -> Result<Json<registry::Entitlement>, ApiError> {
    Ok(Json(state.service.entitle(req).await?))
}

async fn entitlements(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let list = state.service.store.transact(registry::entitlements).await?;
    Ok(Json(json!({ "entitlements": list })))
}

#[derive(Deserialize)]
struct EnrollmentFilter {
    status: Option<String>,
}

async fn enrollments(
    State(state): State<Shared>,
    Query(filter): Query<EnrollmentFilter>,
) -> Result<Json<Value>, ApiError> {
    let list = state
        .service
        .store
        .transact(move |sql| registry::enrollments(sql, filter.status.as_deref()))
        .await?;
    Ok(Json(json!({ "enrollments": list })))
}

#[derive(Deserialize, Default)]
struct Decision {
    #[serde(default)]
    note: String,
}

async fn decide(
    state: Shared,
    id: String,
    approve: bool,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let decision: Decision = if body.is_empty() {
        Decision::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?
    };
    let enrollment = state
        .service
        .store
        .transact(move |sql| {
            registry::decide(sql, &id, approve, &decision.note, clock::system_now())
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
    Ok(Json(json!({ "enrollment": enrollment })))
}

async fn approve(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    decide(state, id, true, body).await
}

async fn deny(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    decide(state, id, false, body).await
}

async fn licenses(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let list = state.service.store.transact(registry::licenses).await?;
    Ok(Json(json!({ "licenses": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    license: Option<String>,
    node: Option<String>,
    org: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn revoke(
    State(state): State<Shared>,
    Json(req): Json<Revoke>,
) -> Result<Json<Value>, ApiError> {
    let target = match (req.license, req.node, req.org) {
        (Some(l), None, None) => RevokeTarget::License(l),
        (None, Some(n), None) => RevokeTarget::Node(n),
        (None, None, Some(o)) => RevokeTarget::Org(o),
        _ => {
            return Err(ApiError::BadRequest(
                "name exactly one of license, node or org".into(),
            ))
        }
    };
    let reason = req.reason;
    let shown = format!("{target:?}");
    let n = state
        .service
        .store
        .transact(move |sql| registry::revoke(sql, &target, &reason, clock::system_now()))
        .await?;
    tracing::warn!("revoked {shown}: {n} license(s)");
    Ok(Json(json!({ "revoked_licenses": n })))
}

#[derive(Deserialize)]
struct UsageQuery {
    org: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

async fn usage(
    State(state): State<Shared>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let from = q.from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let to =
        q.to.unwrap_or_else(|| clock::system_now() + chrono::Duration::seconds(1));
    let list = state
        .service
        .store
        .transact(move |sql| registry::usage(sql, q.org.as_deref(), from, to))
        .await?;
    Ok(Json(json!({ "from": from, "to": to, "nodes": list })))
}
