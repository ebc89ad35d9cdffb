//! The OpenAI-compatible HTTP API (axum on tokio), split by stage as in
//! text-generation-inference's router: [`openai`] holds the wire types, [`validation`]
//! checks and bounds every request at the edge, and the handlers here feed the one
//! engine through its queue and stream its events back (SSE for `stream: true`).
//!
//! Every response carries the license phase in `x-leasehold-license-phase`; in grace a
//! `Warning` header says when serving stops. After lapse, inference requests get
//! HTTP 403 with error code `license_expired`.

pub mod listener;
pub mod metrics;
pub mod openai;
pub mod validation;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::format::time::rfc3339;
use crate::format::Body as _;
use crate::http_auth::{any_token_matches, bearer, token_matches};
use crate::ledger::attestation::AttestationBody;
use crate::ledger::prompt_hash::{PromptParts, PromptSalt};
use crate::node::clock;
use crate::runtime::answer::{Answer, Answerer, Piece, Question, Stopped};
use crate::runtime::caps::CapExceeded;
use crate::runtime::engine::{Engine, GenerateError, Prompt, SamplingParams};
use crate::runtime::lifecycle::{Lifecycle, Phase};
use crate::runtime::renewer::Renewer;
use metrics::NodeMetrics;
use openai::{error_body, Endpoint, ResponseMeta, Usage};
use validation::{Invalid, Limits, MAX_BODY_BYTES};

/// What the handlers share.
pub struct AppState {
    pub lifecycle: Arc<Lifecycle>,
    pub engine: Engine,
    pub limits: Limits,
    /// Accepted client API keys; empty means no key is required.
    pub api_keys: Vec<String>,
    /// The admin token; `None` disables the admin endpoints.
    pub admin_token: Option<String>,
    /// Automatic renewal from a license server, when configured.
    pub renewal: Option<Arc<Renewer>>,
    /// Answers requests: caps, queue, the engine, and the usage ledger (every request
    /// recorded before it is answered).
    pub answerer: Arc<Answerer>,
    /// With `--ledger-prompt-hash`: the salt for each record's prompt hash.
    pub prompt_salt: Option<PromptSalt>,
    /// Counters for `/metrics`.
    pub metrics: NodeMetrics,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Open and refused connections (`/metrics`).
    pub connections: Arc<listener::ConnectionStats>,
}

type Shared = Arc<AppState>;

/// An error response in the OpenAI shape.
pub struct ApiError {
    status: StatusCode,
    body: Value,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: &str,
        kind: &str,
        code: Option<&str>,
        param: Option<&str>,
    ) -> ApiError {
        ApiError {
            status,
            body: error_body(message, kind, code, param),
            retry_after: None,
        }
    }

    fn cap_exceeded(e: &CapExceeded) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            &e.to_string(),
            "license_error",
            Some("license_cap_exceeded"),
            None,
        );
        error.body["error"]["cap"] = json!(e.cap);
        error.body["error"]["resets_at"] = json!(e.resets_at.map(rfc3339));
        let retry = e
            .resets_at
            .map_or(1, |t| (t - clock::system_now()).num_seconds().max(1));
        error.retry_after = Some(retry as u64);
        error
    }

    fn invalid(e: Invalid) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            &e.message,
            "invalid_request_error",
            None,
            e.param,
        )
    }

    fn license_expired() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            &GenerateError::LicenseExpired.to_string(),
            "license_error",
            Some("license_expired"),
            None,
        )
    }

    /// The error for a request the node did not answer, or not to its end.
    fn stopped(e: &Stopped) -> ApiError {
        let message = e.to_string();
        let code = e.code().as_str();
        let (status, kind, param) = match e {
            Stopped::Lapsed | Stopped::Engine(GenerateError::LicenseExpired) => {
                return ApiError::license_expired()
            }
            Stopped::Cap(exceeded) => return ApiError::cap_exceeded(exceeded),
            Stopped::QueueFull { .. } => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &message,
                    "server_error",
                    Some(code),
                    None,
                );
                error.retry_after = Some(1);
                return error;
            }
            Stopped::Engine(GenerateError::PromptTooLong { .. } | GenerateError::EmptyPrompt) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("messages"),
            ),
            Stopped::Engine(GenerateError::ShuttingDown) | Stopped::Ledger(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", None)
            }
            Stopped::Engine(GenerateError::Template(_) | GenerateError::Decode(_))
            | Stopped::EngineStopped => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        ApiError::new(status, &message, kind, Some(code), param)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Build the router.
pub fn router(state: Shared) -> Router {
    let inference = Router::new()
        .route(
            "/v1/chat/completions",
            post(infer::<openai::ChatCompletionRequest>),
        )
        .route("/v1/completions", post(infer::<openai::CompletionRequest>))
        .route("/v1/models", get(models))
        .route("/v1/license/attestation", get(attestation))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let admin = Router::new()
        .route("/admin/license", post(admin_license))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(inference)
        .merge(admin)
        .route("/health", get(health))
        .route("/v1/license", get(license))
        .route("/metrics", get(metrics_page))
        .layer(middleware::from_fn_with_state(state.clone(), phase_headers))
        .with_state(state)
}

/// Does the request carry one of the node's API keys (or does the node need none)?
fn has_api_key(state: &AppState, headers: &HeaderMap) -> bool {
    state.api_keys.is_empty()
        || bearer(headers).is_some_and(|k| any_token_matches(k, &state.api_keys))
}

async fn require_api_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if has_api_key(&state, request.headers()) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or unknown API key: send 'Authorization: Bearer <key>' with a key from the node's --api-key-file",
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
    )
    .into_response()
}

async fn require_admin(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match &state.admin_token {
        Some(token) if bearer(request.headers()).is_some_and(|t| token_matches(t, token)) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin endpoints need 'Authorization: Bearer <token>' with the token from --admin-token-file",
            "invalid_request_error",
            Some("invalid_admin_token"),
            None,
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: start serve with --admin-token-file",
            "invalid_request_error",
            Some("admin_disabled"),
            None,
        )
        .into_response(),
    }
}

async fn phase_headers(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let status = state.lifecycle.status();
    let headers = response.headers_mut();
    headers.insert(
        "x-leasehold-license-phase",
        HeaderValue::from_static(status.phase.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&status.seconds_left.to_string()) {
        headers.insert("x-leasehold-license-seconds-left", v);
    }
    if status.phase == Phase::Grace {
        let warning = format!(
            "299 leasehold \"license expired at {}; serving in grace for {} more seconds\"",
            rfc3339(status.license.body.expires_at),
            status.seconds_to_lapse.max(0)
        );
        if let Ok(v) = HeaderValue::from_str(&warning) {
            headers.insert(header::WARNING, v);
        }
    }
    response
}

/// Read a request body of at most `limit` bytes within `timeout`. A larger body is
/// drained (up to a hard bound) so that the client receives the 400 instead of a reset
/// connection; a client that sends it too slowly gets a 408.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    tokio::time::timeout(timeout, read_body_unbounded(body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
                "invalid_request_error",
                Some("request_timeout"),
                None,
            ))
        })
}

async fn read_body_unbounded(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    const DRAIN_LIMIT: usize = 64 << 20;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
                "invalid_request_error",
                None,
                None,
            )
        })?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!("the request body is larger than the {limit} bytes this server accepts"),
            "invalid_request_error",
            Some("request_too_large"),
            None,
        ));
    }
    Ok(Bytes::from(buf))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    timeout: Duration,
) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES, timeout).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!("the request body is not valid JSON for this endpoint: {e}"),
            "invalid_request_error",
            None,
            None,
        )
    })
}

fn check_model(state: &AppState, requested: Option<&str>) -> Result<String, ApiError> {
    let served = state.lifecycle.status().license.body.model.model_id;
    match requested {
        Some(m) if m != served => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            &format!("model '{m}' is not served here; this node serves '{served}'"),
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
        )),
        _ => Ok(served),
    }
}

/// What the two inference endpoints have in common.
trait InferenceRequest: serde::de::DeserializeOwned {
    const ENDPOINT: Endpoint;
    fn model(&self) -> Option<&str>;
    fn sampling(&self) -> &openai::SamplingFields;
    fn validate(self, limits: Limits) -> Result<(Prompt, SamplingParams), Invalid>;
}

impl InferenceRequest for openai::ChatCompletionRequest {
    const ENDPOINT: Endpoint = Endpoint::Chat;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    fn sampling(&self) -> &openai::SamplingFields {
        &self.sampling
    }
    fn validate(self, limits: Limits) -> Result<(Prompt, SamplingParams), Invalid> {
        validation::chat(self, limits)
    }
}

impl InferenceRequest for openai::CompletionRequest {
    const ENDPOINT: Endpoint = Endpoint::Completion;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    fn sampling(&self) -> &openai::SamplingFields {
        &self.sampling
    }
    fn validate(self, limits: Limits) -> Result<(Prompt, SamplingParams), Invalid> {
        validation::completion(self, limits)
    }
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
async fn infer<R: InferenceRequest>(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: R = read_json(body, state.body_timeout).await?;
    let model = check_model(&state, req.model())?;
    let (stream, include_usage) = (req.sampling().stream, req.sampling().include_usage());
    let (prompt, params) = req.validate(state.limits).map_err(ApiError::invalid)?;
    let meta = ResponseMeta::new(R::ENDPOINT, &model, clock::system_now().timestamp());
    let prompt_sha256 = state.prompt_salt.as_ref().map(|salt| {
        let parts = match &prompt {
            Prompt::Chat(messages) => PromptParts::Chat(
                messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str()))
                    .collect(),
            ),
            Prompt::Text(text) => PromptParts::Text(text),
        };
        salt.hash(&parts)
    });
    let question = Question {
        request_id: meta.id.clone(),
        client_key: client_key_id(&headers),
        prompt,
        params,
        prompt_sha256,
    };
    let mut answer = state
        .answerer
        .begin(question)
        .await
        .map_err(|e| ApiError::stopped(&e))?;
    if stream {
        return Ok(Sse::new(sse_stream(meta, answer, include_usage))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut text = String::new();
    loop {
        match answer.next().await.map_err(|e| ApiError::stopped(&e))? {
            Some(Piece::Text(t)) => text.push_str(&t),
            Some(Piece::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                ..
            }) => {
                let totals = Usage::new(prompt_tokens, completion_tokens);
                return Ok(Json(meta.response(&text, reason.as_str(), totals)).into_response());
            }
            None => return Err(ApiError::stopped(&Stopped::EngineStopped)),
        }
    }
}

/// A short, stable id of the client's API key for the ledger (never the key itself).
fn client_key_id(headers: &HeaderMap) -> String {
    match bearer(headers) {
        Some(key) => hex::encode(&crate::crypto::sha256(&[key.as_bytes()])[..4]),
        None => "-".into(),
    }
}

fn sse_stream(
    meta: ResponseMeta,
    mut answer: Answer,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream_like(move |tx| async move {
        let send = |v: Value| tx.send(SseEvent::default().data(v.to_string())).is_ok();
        if !send(meta.chunk("", true, None, None)) {
            return;
        }
        loop {
            match answer.next().await {
                Ok(Some(Piece::Text(t))) => {
                    if !send(meta.chunk(&t, false, None, None)) {
                        return; // client gone: dropping the answer cancels and records it
                    }
                }
                Ok(Some(Piece::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    ..
                })) => {
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    send(meta.chunk("", false, Some(reason.as_str()), Some(usage)));
                    if include_usage {
                        send(meta.usage_chunk(usage));
                    }
                    let _ = tx.send(SseEvent::default().data("[DONE]"));
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    send(ApiError::stopped(&e).body);
                    return;
                }
            }
        }
    })
}

/// A stream fed by an async producer through a channel; the producer stops when the
/// stream (the client connection) is dropped.
fn async_stream_like<F, Fut>(producer: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(mpsc::UnboundedSender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(producer(tx));
    let guard = AbortOnDrop(task);
    futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|e| (Ok(e), (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn models(State(state): State<Shared>) -> Json<Value> {
    let status = state.lifecycle.status();
    let body = &status.license.body;
    Json(json!({
        "object": "list",
        "data": [{"id": body.model.model_id, "object": "model", "created": body.issued_at.timestamp(), "owned_by": body.licensee}],
    }))
}

async fn health(State(state): State<Shared>) -> Response {
    let phase = state.lifecycle.phase();
    let code = if phase.serves() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": if phase.serves() { "ok" } else { "lapsed" }, "phase": phase.as_str()}))).into_response()
}

/// The license state as JSON (also used by `leasehold status`).
pub fn license_json(lifecycle: &Lifecycle) -> Value {
    let status = lifecycle.status();
    let b = &status.license.body;
    let caps: serde_json::Map<String, Value> = b
        .caps
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "licensee": b.licensee,
        "license_id": b.license_id,
        "serial": b.serial,
        "model_id": b.model.model_id,
        "node_id": b.node.node_id,
        "not_before": rfc3339(b.not_before),
        "expires_at": rfc3339(b.expires_at),
        "grace_ends": rfc3339(b.grace_ends()),
        "seconds_left": status.seconds_left,
        "seconds_to_lapse": status.seconds_to_lapse,
        "phase": status.phase.as_str(),
        "caps": caps,
        "features": b.features,
        "safeguards": b.safeguards_json(),
        "demo_root": status.license.authority.is_demo(),
        "revoked": lifecycle.revoked().is_some(),
    })
}

async fn license(State(state): State<Shared>, headers: HeaderMap) -> Json<Value> {
    if !has_api_key(&state, &headers) {
        // Public for monitoring, but who holds the license and for what stays private.
        let status = state.lifecycle.status();
        let b = &status.license.body;
        return Json(json!({
            "phase": status.phase.as_str(),
            "seconds_left": status.seconds_left,
            "seconds_to_lapse": status.seconds_to_lapse,
            "expires_at": rfc3339(b.expires_at),
            "grace_ends": rfc3339(b.grace_ends()),
            "revoked": state.lifecycle.revoked().is_some(),
            "redacted": "send an API key (Authorization: Bearer) to see the licensee, model, license and usage",
        }));
    }
    let mut body = license_json(&state.lifecycle);
    let w = state.answerer.caps().windows(state.lifecycle.clock().now());
    body["usage"] = json!({
        "requests_today": w.day_requests,
        "tokens_today": w.day_tokens,
        "requests_this_month": w.month_requests,
        "tokens_this_month": w.month_tokens,
    });
    if let Some(renewer) = &state.renewal {
        body["renewal"] = json!(renewer.status());
    }
    Json(body)
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics::render(&state, has_api_key(&state, &headers)),
    )
        .into_response()
}

/// `GET /v1/license/attestation`: license state and ledger head, signed by the node key.
async fn attestation(State(state): State<Shared>) -> Result<Response, ApiError> {
    let Some(ledger) = state.answerer.ledger() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node runs without a usage ledger (--no-ledger), so it has nothing to attest",
            "invalid_request_error",
            Some("no_ledger"),
            None,
        ));
    };
    let status = state.lifecycle.status();
    let b = &status.license.body;
    let head = ledger.head();
    let identity = state.lifecycle.identity();
    let body = AttestationBody {
        version: AttestationBody::VERSION,
        node_id: identity.public().node_id(),
        at: crate::format::time::whole_seconds(state.lifecycle.clock().now()),
        license_id: b.license_id.clone(),
        serial: b.serial,
        licensee: b.licensee.clone(),
        model_id: b.model.model_id.clone(),
        phase: status.phase.as_str().to_string(),
        expires_at: b.expires_at,
        grace_ends: b.grace_ends(),
        ledger_seq: head.seq,
        ledger_head: head.hash,
        totals: head.totals,
    };
    let document = crate::format::Envelope::sign(&body, identity.signer(), vec![]).render();
    Ok(([(header::CONTENT_TYPE, "application/json")], document).into_response())
}

async fn admin_license(State(state): State<Shared>, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(
        body,
        crate::license::MAX_LICENSE_BYTES as usize,
        state.body_timeout,
    )
    .await?;
    match state.lifecycle.renew(&bytes).await {
        Ok(_) => Ok(Json(license_json(&state.lifecycle))),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("renewal refused, the current license stays in force: {e}"),
            "license_error",
            Some("renewal_refused"),
            None,
        )),
    }
}
