//! The portal: a web console under `/portal/` for vendor staff and licensee
//! organizations, served by the license server from the same process and database.
//!
//! Server-rendered HTML (askama templates in `templates/portal/`), one stylesheet, no
//! JavaScript. Every page reads its session from an HttpOnly, SameSite=Strict cookie
//! (`Secure` under TLS); every form that changes something carries the session's CSRF
//! token, and the forms used before there is a session (sign-in, accepting an
//! invitation) a double-submit token. An organization's account sees only its own
//! applications: another's is "not found", as an unknown one. Everything here goes
//! through [`Service`](super::Service), as the admin API and the `admin` command do.
//!
//! Routes:
//!   GET  /portal/                          sign-in page, or the applications when signed in
//!   POST /portal/sign-in, /portal/sign-out
//!   GET|POST /portal/invitations/{token}   an organization's invitation: create its account
//!   GET  /portal/orgs, POST /portal/orgs/invitations                (staff)
//!   GET  /portal/orgs/{org}: entitlements, nodes, findings, usage    (staff)
//!   GET  /portal/usage: the same for the signed-in organization      (org)
//!   GET|POST /portal/nodes/{node}/revoke: confirm, then revoke       (staff)
//!   GET  /portal/enrollments, POST /portal/enrollments/{id}: nodes waiting for approval (staff)
//!   POST /portal/enrollment-tokens: a token for the organization's nodes (org)
//!   GET  /portal/applications, POST /portal/applications            (list; an org applies)
//!   GET  /portal/applications/new, /portal/applications/{id}
//!   POST /portal/applications/{id}/review                           (staff)
//!   GET|POST /portal/applications/{id}/resubmit                     (org, after changes asked)
//!   GET  /portal/audits: the audits (staff: all, and the request form; org: its own)
//!   POST /portal/audits: request one                                (staff)
//!   GET  /portal/audits/{id}: where each node stands, findings, reports
//!   GET  /portal/audits/{id}/nodes/{node}/report.csv|.json?by=day|month|quarter

mod audits;
mod charts;
mod pages;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::accounts::{new_secret, Account, AccountKind, InviteRequest, NewSession, Session};
use super::admin::{DecisionRequest, EnrollmentQuery, RevokeRequest};
use super::applications::{ApplicationForm, ApplicationQuery, Review, Track};
use super::http::ServerState;
use super::registry::Enrollment;
use super::{ApiError, EntitleRequest};
use crate::format::time::parse_duration;
use crate::http_auth::token_matches;
use crate::license::issue::Safeguards;
use crate::license::Caps;
use crate::node::clock;
pub use pages::path_segment;
use pages::Nav;

type Shared = std::sync::Arc<ServerState>;

const SESSION_COOKIE: &str = "leasehold_session";
const FORM_COOKIE: &str = "leasehold_form";

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/portal", get(|| async { Redirect::permanent("/portal/") }))
        .route("/portal/", get(home))
        .route("/portal/style.css", get(style))
        .route("/portal/sign-in", post(sign_in))
        .route("/portal/sign-out", post(sign_out))
        .route(
            "/portal/invitations/{token}",
            get(invitation).post(accept_invitation),
        )
        .route("/portal/orgs", get(orgs))
        .route("/portal/orgs/invitations", post(invite))
        .route("/portal/orgs/{org}", get(org_page))
        .route("/portal/usage", get(own_usage))
        .route("/portal/enrollments", get(enrollments))
        .route("/portal/enrollment-tokens", post(make_enrollment_token))
        .route("/portal/enrollments/{id}", post(decide_enrollment))
        .route("/portal/nodes/{node}/revoke", get(revoke_page).post(revoke))
        .route("/portal/applications", get(applications).post(apply))
        .route("/portal/applications/new", get(apply_page))
        .route("/portal/applications/{id}", get(application))
        .route("/portal/applications/{id}/review", post(review))
        .route(
            "/portal/applications/{id}/resubmit",
            get(resubmit_page).post(resubmit),
        )
        .route("/portal/audits", get(audits::list).post(audits::request))
        .route("/portal/audits/{id}", get(audits::show))
        .route(
            "/portal/audits/{id}/nodes/{node}/report.csv",
            get(audits::report_csv),
        )
        .route(
            "/portal/audits/{id}/nodes/{node}/report.json",
            get(audits::report_json),
        )
        .layer(middleware::from_fn(security_headers))
}

/// No framing, no inline or foreign code, no referrer (invitation links carry a
/// token), nothing cached.
async fn security_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../templates/portal/style.css"),
    )
        .into_response()
}

/// What a portal request can end in besides its page.
pub enum PortalError {
    /// No session: back to the sign-in page.
    SignIn,
    /// A page with a message and a status.
    Page(StatusCode, String),
}

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        let status = match &e {
            ApiError::Internal(m) => {
                tracing::error!("portal: internal error: {m}");
                return PortalError::Page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "something went wrong on the server; the error is in its log".into(),
                );
            }
            other => other.status(),
        };
        PortalError::Page(status, e.to_string())
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        match self {
            PortalError::SignIn => Redirect::to("/portal/").into_response(),
            PortalError::Page(status, message) => {
                let title = match status {
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::FORBIDDEN => "Refused",
                    StatusCode::CONFLICT => "Already done",
                    StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
                    s if s.is_client_error() => "Not accepted",
                    _ => "Server error",
                };
                (status, pages::message(None, title, &message, true)).into_response()
            }
        }
    }
}

type PortalResult = Result<Response, PortalError>;

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn set_cookie(state: &ServerState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/portal; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are base64url")
}

/// The session of this request, if any (an expired or ended one is none).
async fn session_of(
    state: &ServerState,
    headers: &HeaderMap,
) -> Result<Option<Session>, PortalError> {
    match cookie(headers, SESSION_COOKIE) {
        Some(value) => Ok(state.service.session(value).await?),
        None => Ok(None),
    }
}

/// A signed-in request's session.
async fn signed_in(state: &ServerState, headers: &HeaderMap) -> Result<Session, PortalError> {
    session_of(state, headers).await?.ok_or(PortalError::SignIn)
}

/// A form that changes something: signed in, with this session's CSRF token.
async fn signed_form(
    state: &ServerState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Session, PortalError> {
    let session = signed_in(state, headers).await?;
    if !token_matches(csrf, &session.csrf) {
        return Err(PortalError::Page(
            StatusCode::FORBIDDEN,
            "this form's security token does not match your session (an old page, or a form sent from another site); reload the page and send it again".into(),
        ));
    }
    Ok(session)
}

fn staff_only(session: &Session) -> Result<(), PortalError> {
    if session.account.is_staff() {
        Ok(())
    } else {
        Err(PortalError::Page(
            StatusCode::NOT_FOUND,
            "no such page".into(),
        ))
    }
}

fn org_only(session: &Session) -> Result<&str, PortalError> {
    session.account.org().ok_or_else(|| {
        PortalError::Page(
            StatusCode::FORBIDDEN,
            "organizations apply; vendor staff review (sign in with your organization's token)"
                .into(),
        )
    })
}

/// A page used before there is a session carries a double-submit token: a cookie and
/// the same value in the form.
fn form_token(state: &ServerState) -> (String, HeaderValue) {
    let token = new_secret();
    let cookie = set_cookie(state, FORM_COOKIE, &token, 3600);
    (token, cookie)
}

fn form_token_ok(headers: &HeaderMap, given: &str) -> Result<(), PortalError> {
    match cookie(headers, FORM_COOKIE) {
        Some(expected) if token_matches(given, expected) => Ok(()),
        _ => Err(PortalError::Page(
            StatusCode::FORBIDDEN,
            "this form's security token does not match (an old page, blocked cookies, or a form sent from another site); reload the page and send it again".into(),
        )),
    }
}

fn with_session_cookie(state: &ServerState, new: &NewSession, mut response: Response) -> Response {
    let max_age = (new.session.expires_at - clock::system_now())
        .num_seconds()
        .max(0);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, SESSION_COOKIE, &new.cookie, max_age),
    );
    response
}

async fn home(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    if session_of(&state, &headers).await?.is_some() {
        return Ok(Redirect::to("/portal/applications").into_response());
    }
    let (token, cookie) = form_token(&state);
    Ok(([(header::SET_COOKIE, cookie)], pages::sign_in(&token, None)).into_response())
}

#[derive(Deserialize)]
struct SignInForm {
    form: String,
    token: String,
}

async fn sign_in(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> PortalResult {
    form_token_ok(&headers, &form.form)?;
    // Failed attempts count (a guessing limit); good sign-ins do not.
    let address = peer.ip().to_string();
    if let Err(retry) = state.sign_in_limit.check(&address, clock::monotonic_now()) {
        return Err(PortalError::Page(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many sign-in attempts from your address; retry in {} s",
                retry.0
            ),
        ));
    }
    let Some(new) = state
        .service
        .sign_in(form.token.trim(), &state.admin_token)
        .await?
    else {
        tracing::warn!("portal: a sign-in from {} with an unknown token", peer.ip());
        let _ = state.sign_in_limit.take(&address, clock::monotonic_now());
        let (token, cookie) = form_token(&state);
        return Ok((
            StatusCode::UNAUTHORIZED,
            [(header::SET_COOKIE, cookie)],
            pages::sign_in(
                &token,
                Some("that token signs in no one here: check it, or ask the vendor"),
            ),
        )
            .into_response());
    };
    tracing::info!("portal: {} signed in", new.session.account.actor);
    Ok(with_session_cookie(
        &state,
        &new,
        Redirect::to("/portal/applications").into_response(),
    ))
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PortalResult {
    signed_form(&state, &headers, &form.csrf).await?;
    if let Some(value) = cookie(&headers, SESSION_COOKIE) {
        state.service.end_session(value).await?;
    }
    Ok((
        [(
            header::SET_COOKIE,
            set_cookie(&state, SESSION_COOKIE, "", 0),
        )],
        Redirect::to("/portal/"),
    )
        .into_response())
}

async fn invitation(State(state): State<Shared>, Path(token): Path<String>) -> PortalResult {
    let org = state.service.invitation(&token).await?;
    let (form, cookie) = form_token(&state);
    Ok((
        [(header::SET_COOKIE, cookie)],
        pages::invitation(&org, &token, &form),
    )
        .into_response())
}

#[derive(Deserialize)]
struct AcceptForm {
    form: String,
    contact: String,
}

async fn accept_invitation(
    State(state): State<Shared>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(form): Form<AcceptForm>,
) -> PortalResult {
    form_token_ok(&headers, &form.form)?;
    let account = state
        .service
        .accept_invitation(&token, &form.contact)
        .await?;
    let new = state
        .service
        .session_for(
            Account {
                kind: AccountKind::Org,
                name: account.org.clone(),
                actor: format!("org:{} ({})", account.org, account.contact),
            },
            &account.token,
        )
        .await?;
    let page = pages::account_created(Nav::of(&new.session), &account.org, &account.token);
    Ok(with_session_cookie(&state, &new, page.into_response()))
}

async fn orgs(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    staff_only(&session)?;
    let orgs = state.service.orgs().await?;
    Ok(pages::orgs(Nav::of(&session), &orgs, None).into_response())
}

#[derive(Deserialize)]
struct InviteForm {
    csrf: String,
    org: String,
}

async fn invite(
    State(state): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<InviteForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    staff_only(&session)?;
    let invitation = state
        .service
        .invite(InviteRequest { org: form.org }, &session.account.actor)
        .await?;
    let url = format!("{}{}", origin(&state, &headers, &uri), invitation.path);
    let orgs = state.service.orgs().await?;
    Ok(pages::orgs(Nav::of(&session), &orgs, Some((&invitation, url.as_str()))).into_response())
}

/// This server's origin for links the vendor sends on: `--public-url`, else as the
/// browser reached it (the Host header, or HTTP/2's :authority in the request URI).
fn origin(state: &ServerState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    if let Some(url) = &state.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("{}://{host}", if state.tls { "https" } else { "http" })
}

async fn applications(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let list = state
        .service
        .applications(ApplicationQuery::default(), session.account.org())
        .await?;
    Ok(pages::applications(Nav::of(&session), &list.applications).into_response())
}

async fn apply_page(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    org_only(&session)?;
    let models = state.service.model_ids().await?;
    let form = ApplicationForm {
        nodes: 1,
        term_days: 365,
        ..ApplicationForm::default()
    };
    Ok(pages::apply(Nav::of(&session), &form, &models, None, None).into_response())
}

/// The application form as posted (numbers as text: a bad one is a message, not a
/// rejected request).
#[derive(Deserialize)]
struct ApplyForm {
    csrf: String,
    model_id: String,
    use_case: String,
    downstream_applications: String,
    data_handling: String,
    security_measures: String,
    #[serde(default)]
    fine_tuning_datasets: String,
    nodes: String,
    term_days: String,
    track: String,
    #[serde(default)]
    note: String,
}

impl ApplyForm {
    fn form(&self) -> ApplicationForm {
        ApplicationForm {
            model_id: self.model_id.trim().to_string(),
            use_case: self.use_case.clone(),
            downstream_applications: self.downstream_applications.clone(),
            data_handling: self.data_handling.clone(),
            security_measures: self.security_measures.clone(),
            fine_tuning_datasets: self.fine_tuning_datasets.clone(),
            nodes: self.nodes.trim().parse().unwrap_or(0),
            term_days: self.term_days.trim().parse().unwrap_or(0),
            track: Track::parse(&self.track).unwrap_or_default(),
        }
    }
}

async fn apply(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(posted): Form<ApplyForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &posted.csrf).await?;
    let org = org_only(&session)?.to_string();
    let form = posted.form();
    match state
        .service
        .apply(&org, &session.account.actor, form.clone())
        .await
    {
        Ok(a) => Ok(Redirect::to(&format!("/portal/applications/{}", a.id)).into_response()),
        Err(e) => form_refused(&state, &session, &form, None, e).await,
    }
}

/// An application form the service refused: a bad answer shows the form again with
/// what the organization typed and the message; anything else is an error page.
async fn form_refused(
    state: &ServerState,
    session: &Session,
    form: &ApplicationForm,
    resubmit: Option<&str>,
    error: ApiError,
) -> PortalResult {
    let ApiError::BadRequest(message) = error else {
        return Err(error.into());
    };
    let models = state.service.model_ids().await?;
    Ok((
        StatusCode::BAD_REQUEST,
        pages::apply(Nav::of(session), form, &models, resubmit, Some(&message)),
    )
        .into_response())
}

async fn application(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let detail = state
        .service
        .application(&id, session.account.org())
        .await?;
    Ok(pages::application(Nav::of(&session), &detail, None).into_response())
}

#[derive(Deserialize)]
struct ReviewForm {
    csrf: String,
    /// The application's version the page showed.
    #[serde(default)]
    seen: Option<u64>,
    decision: String,
    #[serde(default)]
    note: String,
    nodes: Option<String>,
    term_end: Option<String>,
    lease: Option<String>,
    grace: Option<String>,
    #[serde(default)]
    caps: String,
    #[serde(default)]
    watermark: String,
    /// Output filter rules, TOML as `admin entitle --filter-rules` reads them.
    #[serde(default)]
    filter_rules: String,
    #[serde(default)]
    auto_approve: String,
}

impl ReviewForm {
    fn review(&self) -> Result<Review, String> {
        let note = self.note.trim().to_string();
        match self.decision.as_str() {
            "approve" => {
                let field = |v: &Option<String>, what: &str| {
                    v.as_deref()
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .ok_or_else(|| format!("give {what}"))
                };
                let nodes: u64 = field(&self.nodes, "the nodes")?
                    .parse()
                    .map_err(|_| "nodes: a whole number".to_string())?;
                let day = field(&self.term_end, "the term's end")?;
                let term_end = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                    .map_err(|_| format!("term end '{day}' is not a date (YYYY-MM-DD)"))?
                    .and_hms_opt(23, 59, 59)
                    .expect("a valid time of day")
                    .and_utc();
                let seconds = |text: String, what: &str| {
                    parse_duration(&text)
                        .map(|d| d.num_seconds().max(0) as u64)
                        .map_err(|e| format!("{what}: {e}"))
                };
                let mut caps = Caps::default();
                for line in self.caps.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    caps.set(line)?;
                }
                let watermark = match self.watermark.trim() {
                    "" => None,
                    text => Some(
                        crate::watermark::Params::parse(text)
                            .map_err(|e| format!("watermark {text}: {e}"))?,
                    ),
                };
                // Validity (bounded, non-empty rules) is checked with the entitlement.
                let output_filter = match self.filter_rules.trim() {
                    "" => None,
                    text => Some(
                        crate::license::FilterRules::parse_toml(text)
                            .map_err(|e| format!("output filter rules: {e}"))?,
                    ),
                };
                Ok(Review::Approve {
                    terms: Box::new(EntitleRequest {
                        org: String::new(),
                        models: Vec::new(),
                        nodes,
                        term_end,
                        lease_seconds: seconds(field(&self.lease, "the lease")?, "lease")?,
                        grace_seconds: seconds(field(&self.grace, "the grace")?, "grace")?,
                        caps,
                        safeguards: Safeguards {
                            watermark,
                            output_filter,
                        },
                        auto_approve: self.auto_approve == "yes",
                    }),
                    note,
                })
            }
            "deny" => Ok(Review::Deny { note }),
            "request-changes" => Ok(Review::RequestChanges { note }),
            other => Err(format!("unknown decision '{other}'")),
        }
    }
}

async fn review(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReviewForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    staff_only(&session)?;
    let result = match form.review() {
        Ok(review) => {
            state
                .service
                .review(&id, &session.account.actor, review, form.seen)
                .await
        }
        Err(message) => Err(ApiError::BadRequest(message)),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/portal/applications/{id}")).into_response()),
        Err(ApiError::BadRequest(message) | ApiError::Forbidden(message)) => {
            let detail = state.service.application(&id, None).await?;
            Ok((
                StatusCode::BAD_REQUEST,
                pages::application(Nav::of(&session), &detail, Some(&message)),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn resubmit_page(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let org = org_only(&session)?;
    let detail = state.service.application(&id, Some(org)).await?;
    let models = state.service.model_ids().await?;
    Ok(pages::apply(
        Nav::of(&session),
        &detail.application.form,
        &models,
        Some(&id),
        None,
    )
    .into_response())
}

async fn resubmit(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(posted): Form<ApplyForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &posted.csrf).await?;
    let org = org_only(&session)?.to_string();
    let form = posted.form();
    match state
        .service
        .resubmit(
            &id,
            &org,
            &session.account.actor,
            form.clone(),
            posted.note.trim(),
        )
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/portal/applications/{id}")).into_response()),
        Err(e) => form_refused(&state, &session, &form, Some(&id), e).await,
    }
}

async fn org_page(
    State(state): State<Shared>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    // An organization sees its own page only (as /portal/usage); another's is unknown.
    if session.account.org().is_some_and(|own| own != org) {
        return Err(PortalError::Page(
            StatusCode::NOT_FOUND,
            "no such page".into(),
        ));
    }
    let overview = state.service.org_overview(&org).await?;
    Ok(pages::org(Nav::of(&session), &overview).into_response())
}

async fn own_usage(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let org = org_only(&session)?;
    let overview = state.service.org_overview(org).await?;
    Ok(pages::org(Nav::of(&session), &overview).into_response())
}

async fn revoke_page(
    State(state): State<Shared>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    staff_only(&session)?;
    let org = state.service.node_org(&node).await?;
    Ok(pages::revoke(Nav::of(&session), &node, &org).into_response())
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: String,
    reason: String,
    /// The confirmation box: a revocation is never one click.
    #[serde(default)]
    confirm: String,
}

async fn revoke(
    State(state): State<Shared>,
    Path(node): Path<String>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    staff_only(&session)?;
    if form.confirm != "yes" {
        return Err(PortalError::Page(
            StatusCode::BAD_REQUEST,
            "tick the confirmation box to revoke".into(),
        ));
    }
    let org = state.service.node_org(&node).await?;
    let reason = format!("{} (by {})", form.reason.trim(), session.account.actor);
    state
        .service
        .revoke(RevokeRequest {
            node: Some(node),
            reason,
            ..RevokeRequest::default()
        })
        .await?;
    Ok(Redirect::to(&format!("/portal/orgs/{}", pages::path_segment(&org))).into_response())
}

async fn enrollments(State(state): State<Shared>, headers: HeaderMap) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    staff_only(&session)?;
    let pending = pending_enrollments(&state).await?;
    Ok(pages::enrollments(Nav::of(&session), &pending, None).into_response())
}

async fn pending_enrollments(state: &ServerState) -> Result<Vec<Enrollment>, PortalError> {
    let query = EnrollmentQuery {
        status: Some("pending".into()),
    };
    Ok(state.service.enrollments(query).await?.enrollments)
}

#[derive(Deserialize)]
struct EnrollmentDecisionForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    note: String,
}

async fn decide_enrollment(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<EnrollmentDecisionForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    staff_only(&session)?;
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(PortalError::Page(
                StatusCode::BAD_REQUEST,
                format!("unknown decision '{other}'"),
            ))
        }
    };
    let note = form.note.trim().to_string();
    let note = if note.is_empty() {
        format!("by {}", session.account.actor)
    } else {
        format!("{note} (by {})", session.account.actor)
    };
    match state
        .service
        .decide_enrollment(id, approve, DecisionRequest { note })
        .await
    {
        Ok(_) => Ok(Redirect::to("/portal/enrollments").into_response()),
        // No free seat, or decided meanwhile: say so on the queue.
        Err(ApiError::Conflict(message) | ApiError::Forbidden(message)) => {
            let pending = pending_enrollments(&state).await?;
            Ok((
                StatusCode::CONFLICT,
                pages::enrollments(Nav::of(&session), &pending, Some(&message)),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn make_enrollment_token(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    let org = org_only(&session)?.to_string();
    let made = state
        .service
        .enrollment_token(
            super::accounts::EnrollmentTokenRequest { org },
            &session.account.actor,
        )
        .await?;
    Ok(pages::enrollment_token(Nav::of(&session), &made.org, &made.token).into_response())
}
