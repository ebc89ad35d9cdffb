//! The OpenAI-compatible HTTP API (axum on tokio), split by stage as in
//! text-generation-inference's router: [`openai`] holds the wire types, [`validation`]
//! checks and bounds every request at the edge, and the handlers here feed the one
//! engine through its queue and stream its events back (SSE for `stream: true`).
//!
//! Every response carries the license phase in `x-leasehold-license-phase`; in grace a
//! `Warning` header says when serving stops. After lapse, inference requests get
//! HTTP 403 with error code `license_expired`.

pub mod metrics;
pub mod openai;
pub mod validation;

use std::convert::Infallible;
use std::sync::Arc;

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

use crate::format::encoding::Digest;
use crate::format::time::rfc3339;
use crate::format::Body as _;
use crate::ledger::attestation::AttestationBody;
use crate::ledger::prompt_hash::{PromptParts, PromptSalt};
use crate::ledger::record::Entry;
use crate::ledger::Ledger;
use crate::node::clock;
use crate::runtime::caps::{self, CapExceeded, CapGate, Permit};
use crate::runtime::engine::{
    Engine, Event, FinishReason, GenerateError, GenerateRequest, Prompt, SamplingParams,
};
use crate::runtime::lifecycle::{Lifecycle, Phase};
use crate::runtime::renewal::Renewer;
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
    /// The usage ledger: every request is recorded before it is answered. `None` only
    /// with `serve --no-ledger`, which only demo-root licenses allow (benchmarks).
    pub ledger: Option<Arc<Ledger>>,
    /// With `--ledger-prompt-hash`: the salt for each record's prompt hash.
    pub prompt_salt: Option<PromptSalt>,
    /// License caps, counted from the ledger.
    pub caps: CapGate,
    /// Counters for `/metrics`.
    pub metrics: NodeMetrics,
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

    /// The error's `code`, if it has one (for the ledger's outcome).
    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
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

    fn from_generate(e: &GenerateError) -> ApiError {
        match e {
            GenerateError::LicenseExpired => ApiError::license_expired(),
            GenerateError::PromptTooLong { .. } | GenerateError::EmptyPrompt => ApiError::new(
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "invalid_request_error",
                Some("context_length_exceeded")
                    .filter(|_| matches!(e, GenerateError::PromptTooLong { .. })),
                Some("messages"),
            ),
            GenerateError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                &e.to_string(),
                "server_error",
                None,
                None,
            ),
            GenerateError::Template(_) | GenerateError::Decode(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
                "server_error",
                None,
                None,
            ),
        }
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
        .route("/v1/license/attestation", get(attestation))
        .route("/metrics", get(metrics_page))
        .layer(middleware::from_fn_with_state(state.clone(), phase_headers))
        .with_state(state)
}

/// The token of an `Authorization: Bearer` header (also used by the license server).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compare a presented token with the expected one in constant time in its content.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_api_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if state.api_keys.is_empty()
        || bearer(request.headers()).is_some_and(|k| state.api_keys.iter().any(|a| a == k))
    {
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

/// Read a request body of at most `limit` bytes. A larger body is drained (up to a
/// hard bound) so that the client receives the 400 instead of a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
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

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
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
    let req: R = read_json(body).await?;
    let model = check_model(&state, req.model())?;
    let (stream, include_usage) = (req.sampling().stream, req.sampling().include_usage());
    let (prompt, params) = req.validate(state.limits).map_err(ApiError::invalid)?;
    let meta = ResponseMeta::new(R::ENDPOINT, &model, clock::system_now().timestamp());
    let mut usage = UsageRecord::new(&state, &meta, client_key_id(&headers));
    if let Some(salt) = &state.prompt_salt {
        let parts = match &prompt {
            Prompt::Chat(messages) => PromptParts::Chat(
                messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str()))
                    .collect(),
            ),
            Prompt::Text(text) => PromptParts::Text(text),
        };
        usage.prompt_sha256 = Some(salt.hash(&parts));
    }
    generate(state, meta, usage, prompt, params, stream, include_usage).await
}

/// A short, stable id of the client's API key for the ledger (never the key itself).
fn client_key_id(headers: &HeaderMap) -> String {
    match bearer(headers) {
        Some(key) => hex::encode(&crate::crypto::sha256(&[key.as_bytes()])[..4]),
        None => "-".into(),
    }
}

/// The ledger record of one request, written once: `ok` when it finished, `refused`
/// when it was turned down, and `cancelled` if it is dropped unfinished (the client
/// went away), from the drop itself so that no path escapes it.
struct UsageRecord {
    state: Shared,
    request_id: String,
    client_key: String,
    license_id: String,
    model_id: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    prompt_sha256: Option<Digest>,
    /// The output filter rule that ended the answer, if one did.
    filter_rule: Option<String>,
    written: bool,
    /// The concurrency slot, held until the record is written.
    permit: Option<Permit>,
}

impl UsageRecord {
    fn new(state: &Shared, meta: &ResponseMeta, client_key: String) -> UsageRecord {
        let license = state.lifecycle.status().license.body;
        UsageRecord {
            state: state.clone(),
            request_id: meta.id.clone(),
            client_key,
            license_id: license.license_id,
            model_id: license.model.model_id,
            prompt_tokens: 0,
            completion_tokens: 0,
            prompt_sha256: None,
            filter_rule: None,
            written: false,
            permit: None,
        }
    }

    fn entry(&self, outcome: &str) -> Entry {
        Entry::Request {
            request_id: self.request_id.clone(),
            license_id: self.license_id.clone(),
            model_id: self.model_id.clone(),
            prompt_tokens: u64::from(self.prompt_tokens),
            completion_tokens: u64::from(self.completion_tokens),
            outcome: outcome.to_string(),
            client_key: self.client_key.clone(),
            prompt_sha256: self.prompt_sha256,
            filter_rule: self.filter_rule.clone(),
        }
    }

    /// Write the record; returns once it is durable.
    async fn write(&mut self, outcome: &str) -> Result<(), ApiError> {
        self.written = true;
        self.permit = None;
        self.state
            .metrics
            .request(outcome, self.prompt_tokens, self.completion_tokens);
        if caps::counts(outcome) {
            self.count_for_caps();
        }
        let Some(ledger) = &self.state.ledger else {
            return Ok(());
        };
        ledger
            .append(self.entry(outcome))
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the usage ledger cannot record this request ({e}); the node answers nothing it cannot record"),
                    "server_error",
                    Some("ledger_unavailable"),
                    None,
                )
            })
    }
}

impl UsageRecord {
    /// The outcome of a finished answer: `filtered` (with its rule kept for the
    /// record, and logged) when the license's output filter ended it, else `ok`.
    fn finished(&mut self, reason: FinishReason, filter_rule: Option<String>) -> &'static str {
        if reason == FinishReason::ContentFilter {
            tracing::warn!(
                "request {}: the license's output filter ({}) ended the answer; the matched text was not sent",
                self.request_id,
                filter_rule.as_deref().unwrap_or("a rule")
            );
            self.filter_rule = filter_rule;
        }
        reason.ledger_outcome()
    }

    fn count_for_caps(&self) {
        let tokens = u64::from(self.prompt_tokens) + u64::from(self.completion_tokens);
        self.state.caps.record(clock::system_now(), tokens);
    }
}

impl Drop for UsageRecord {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        self.count_for_caps();
        self.state
            .metrics
            .request("cancelled", self.prompt_tokens, self.completion_tokens);
        let entry = self.entry("cancelled");
        let Some(ledger) = self.state.ledger.clone() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = ledger.append(entry).await {
                    tracing::error!("cannot record a cancelled request in the usage ledger: {e}");
                }
            });
        }
    }
}

async fn generate(
    state: Shared,
    meta: ResponseMeta,
    mut usage: UsageRecord,
    prompt: Prompt,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    if !state.lifecycle.phase().serves() {
        usage.write("refused:license_expired").await?;
        return Err(ApiError::license_expired());
    }
    let caps = state.lifecycle.status().license.body.caps;
    match state.caps.admit(&caps, clock::system_now()) {
        Ok(permit) => usage.permit = Some(permit),
        Err(exceeded) => {
            state.metrics.cap_refused(&exceeded);
            usage.write("refused:license_cap_exceeded").await?;
            return Err(ApiError::cap_exceeded(&exceeded));
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Err(e) = state.engine.submit(GenerateRequest {
        prompt,
        params,
        events: tx,
    }) {
        usage.write("refused:engine_unavailable").await?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &e.to_string(),
            "server_error",
            None,
            None,
        ));
    }
    // The first event decides the status code: started, or refused before any output.
    match rx.recv().await {
        Some(Event::Started { prompt_tokens }) => usage.prompt_tokens = prompt_tokens,
        Some(Event::Failed(e)) => {
            let error = ApiError::from_generate(&e);
            usage
                .write(&format!("refused:{}", error.code().unwrap_or("error")))
                .await?;
            return Err(error);
        }
        _ => {
            usage.write("refused:engine_stopped").await?;
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the engine ended the request without a result",
                "server_error",
                None,
                None,
            ));
        }
    };
    if stream {
        return Ok(Sse::new(sse_stream(meta, rx, include_usage, usage))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Finished {
                reason,
                completion_tokens,
                filter_rule,
                ..
            } => {
                usage.completion_tokens = completion_tokens;
                let outcome = usage.finished(reason, filter_rule);
                usage.write(outcome).await?;
                let totals = Usage::new(usage.prompt_tokens, completion_tokens);
                return Ok(Json(meta.response(&text, reason.as_str(), totals)).into_response());
            }
            Event::Failed(e) => {
                let error = ApiError::from_generate(&e);
                usage
                    .write(&format!("refused:{}", error.code().unwrap_or("error")))
                    .await?;
                return Err(error);
            }
            Event::Started { .. } => {}
        }
    }
    usage.write("refused:engine_stopped").await?;
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine ended the request without a result",
        "server_error",
        None,
        None,
    ))
}

fn sse_stream(
    meta: ResponseMeta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    mut record: UsageRecord,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream_like(move |tx| async move {
        let send = |v: Value| tx.send(SseEvent::default().data(v.to_string())).is_ok();
        if !send(meta.chunk("", true, None, None)) {
            return;
        }
        while let Some(event) = rx.recv().await {
            match event {
                Event::Text(t) => {
                    record.completion_tokens += 1;
                    if !send(meta.chunk(&t, false, None, None)) {
                        return; // client gone: dropping `rx` cancels the generation
                    }
                }
                Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    filter_rule,
                } => {
                    record.completion_tokens = completion_tokens;
                    let outcome = record.finished(reason, filter_rule);
                    // The end of the answer goes out only once its record is durable.
                    if let Err(e) = record.write(outcome).await {
                        send(e.body);
                        return;
                    }
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    send(meta.chunk("", false, Some(reason.as_str()), Some(usage)));
                    if include_usage {
                        send(meta.usage_chunk(usage));
                    }
                    let _ = tx.send(SseEvent::default().data("[DONE]"));
                    return;
                }
                Event::Failed(e) => {
                    let err = ApiError::from_generate(&e);
                    let _ = record
                        .write(&format!("refused:{}", err.code().unwrap_or("error")))
                        .await;
                    send(err.body);
                    return;
                }
                Event::Started { .. } => {}
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

async fn license(State(state): State<Shared>) -> Json<Value> {
    let mut body = license_json(&state.lifecycle);
    let w = state.caps.windows(clock::system_now());
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
async fn metrics_page(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics::render(&state),
    )
        .into_response()
}

/// `GET /v1/license/attestation`: license state and ledger head, signed by the node key.
async fn attestation(State(state): State<Shared>) -> Result<Response, ApiError> {
    let Some(ledger) = &state.ledger else {
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
        at: crate::format::time::whole_seconds(clock::system_now()),
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
    let document = crate::format::Envelope::sign(&body, identity.signing_key(), vec![]).render();
    Ok(([(header::CONTENT_TYPE, "application/json")], document).into_response())
}

async fn admin_license(State(state): State<Shared>, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, crate::license::MAX_LICENSE_BYTES as usize).await?;
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
