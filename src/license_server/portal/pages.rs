//! The portal's pages: askama templates (`templates/portal/`, HTML-escaped) and the
//! views they show, with times and terms already written out for people.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::super::accounts::{Invitation, Org, Session};
use super::super::applications::{
    Application, ApplicationDetail, ApplicationEvent, ApplicationForm,
};
use super::super::oversight::{OrgOverview, PeriodUsage};
use super::super::registry::{Enrollment, Entitlement};
use crate::format::time::rfc3339;

/// Render a page; a template error (none is expected: templates are checked when the
/// binary is built) is a 500 with a line in the log.
pub fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("portal: a page failed to render: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The signed-in user, for the header.
pub struct Nav {
    pub actor: String,
    pub staff: bool,
    pub csrf: String,
}

impl Nav {
    pub fn of(session: &Session) -> Option<Nav> {
        Some(Nav {
            actor: session.account.actor.clone(),
            staff: session.account.is_staff(),
            csrf: session.csrf.clone(),
        })
    }
}

fn csrf(nav: &Option<Nav>) -> String {
    nav.as_ref().map(|n| n.csrf.clone()).unwrap_or_default()
}

/// Text as one URL path segment (percent-encoded).
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn day(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[derive(Template)]
#[template(path = "portal/signin.html")]
struct SignIn<'a> {
    nav: Option<Nav>,
    form_token: &'a str,
    error: Option<&'a str>,
}

pub fn sign_in(form_token: &str, error: Option<&str>) -> Response {
    render(&SignIn {
        nav: None,
        form_token,
        error,
    })
}

#[derive(Template)]
#[template(path = "portal/message.html")]
struct Message<'a> {
    nav: Option<Nav>,
    title: &'a str,
    message: &'a str,
    error: bool,
}

pub fn message(nav: Option<Nav>, title: &str, message: &str, error: bool) -> Response {
    render(&Message {
        nav,
        title,
        message,
        error,
    })
}

#[derive(Template)]
#[template(path = "portal/invitation.html")]
struct InvitationPage<'a> {
    nav: Option<Nav>,
    org: &'a str,
    token: &'a str,
    form_token: &'a str,
}

pub fn invitation(org: &str, token: &str, form_token: &str) -> Response {
    render(&InvitationPage {
        nav: None,
        org,
        token,
        form_token,
    })
}

#[derive(Template)]
#[template(path = "portal/account.html")]
struct AccountCreated<'a> {
    nav: Option<Nav>,
    org: &'a str,
    token: &'a str,
}

pub fn account_created(nav: Option<Nav>, org: &str, token: &str) -> Response {
    render(&AccountCreated { nav, org, token })
}

struct OrgView {
    name: String,
    href: String,
    since: String,
    accounts: u64,
    open_invitations: u64,
}

struct LinkView {
    org: String,
    url: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "portal/orgs.html")]
struct Orgs {
    nav: Option<Nav>,
    nav_csrf: String,
    orgs: Vec<OrgView>,
    invitation: Option<LinkView>,
}

pub fn orgs(nav: Option<Nav>, orgs: &[Org], invitation: Option<(&Invitation, &str)>) -> Response {
    render(&Orgs {
        nav_csrf: csrf(&nav),
        nav,
        orgs: orgs
            .iter()
            .map(|o| OrgView {
                name: o.name.clone(),
                href: path_segment(&o.name),
                since: day(o.created_at),
                accounts: o.accounts,
                open_invitations: o.open_invitations,
            })
            .collect(),
        invitation: invitation.map(|(i, url)| LinkView {
            org: i.org.clone(),
            url: url.to_string(),
            expires: day(i.expires_at),
        }),
    })
}

/// An application, written out.
struct ApplicationView {
    id: String,
    version: u64,
    org: String,
    status: String,
    model_id: String,
    nodes: u64,
    term_days: u64,
    track: &'static str,
    use_case: String,
    downstream_applications: String,
    data_handling: String,
    security_measures: String,
    fine_tuning_datasets: String,
    created: String,
    updated: String,
    vendor_note: Option<String>,
}

impl ApplicationView {
    fn of(a: &Application) -> ApplicationView {
        let f = &a.form;
        ApplicationView {
            id: a.id.clone(),
            version: a.version,
            org: a.org.clone(),
            status: a.status.clone(),
            model_id: f.model_id.clone(),
            nodes: f.nodes,
            term_days: f.term_days,
            track: f.track.as_str(),
            use_case: f.use_case.clone(),
            downstream_applications: f.downstream_applications.clone(),
            data_handling: f.data_handling.clone(),
            security_measures: f.security_measures.clone(),
            fine_tuning_datasets: if f.fine_tuning_datasets.trim().is_empty() {
                "none".into()
            } else {
                f.fine_tuning_datasets.clone()
            },
            created: day(a.created_at),
            updated: day(a.updated_at),
            vendor_note: a.vendor_note.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/applications.html")]
struct Applications {
    nav: Option<Nav>,
    staff: bool,
    applications: Vec<ApplicationView>,
}

pub fn applications(nav: Option<Nav>, list: &[Application]) -> Response {
    render(&Applications {
        staff: nav.as_ref().is_some_and(|n| n.staff),
        nav,
        applications: list.iter().map(ApplicationView::of).collect(),
    })
}

/// The form's values as the inputs show them.
struct FormView {
    model_id: String,
    use_case: String,
    downstream_applications: String,
    data_handling: String,
    security_measures: String,
    fine_tuning_datasets: String,
    nodes: String,
    term_days: String,
    track: &'static str,
}

#[derive(Template)]
#[template(path = "portal/apply.html")]
struct Apply<'a> {
    nav: Option<Nav>,
    nav_csrf: String,
    form: FormView,
    models: &'a [String],
    resubmit: Option<&'a str>,
    error: Option<&'a str>,
}

pub fn apply(
    nav: Option<Nav>,
    form: &ApplicationForm,
    models: &[String],
    resubmit: Option<&str>,
    error: Option<&str>,
) -> Response {
    let number = |n: u64| if n == 0 { String::new() } else { n.to_string() };
    render(&Apply {
        nav_csrf: csrf(&nav),
        nav,
        form: FormView {
            model_id: form.model_id.clone(),
            use_case: form.use_case.clone(),
            downstream_applications: form.downstream_applications.clone(),
            data_handling: form.data_handling.clone(),
            security_measures: form.security_measures.clone(),
            fine_tuning_datasets: form.fine_tuning_datasets.clone(),
            nodes: number(form.nodes),
            term_days: number(form.term_days),
            track: form.track.as_str(),
        },
        models,
        resubmit,
        error,
    })
}

struct EventView {
    at: String,
    actor: String,
    action: String,
    note: String,
}

impl EventView {
    fn of(e: &ApplicationEvent) -> EventView {
        EventView {
            at: day(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            note: e.note.clone(),
        }
    }
}

struct EntitlementView {
    id: String,
    nodes: u64,
    enrolled: u64,
    term_end: String,
    lease: String,
    caps: String,
}

impl EntitlementView {
    fn of(e: &Entitlement) -> EntitlementView {
        EntitlementView {
            id: e.id.clone(),
            nodes: e.nodes,
            enrolled: e.enrolled,
            term_end: rfc3339(e.term_end),
            lease: format!(
                "{} s, renewed automatically; {} s grace",
                e.lease_seconds, e.grace_seconds
            ),
            caps: caps_text(&e.caps),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/application.html")]
struct ApplicationPage<'a> {
    nav: Option<Nav>,
    nav_csrf: String,
    staff: bool,
    a: ApplicationView,
    history: Vec<EventView>,
    entitlement: Option<EntitlementView>,
    term_end_default: String,
    error: Option<&'a str>,
}

pub fn application(nav: Option<Nav>, detail: &ApplicationDetail, error: Option<&str>) -> Response {
    let a = &detail.application;
    let term_end = a.created_at.max(crate::node::clock::system_now())
        + chrono::Duration::days(i64::try_from(a.form.term_days).unwrap_or(365).min(3650));
    render(&ApplicationPage {
        nav_csrf: csrf(&nav),
        staff: nav.as_ref().is_some_and(|n| n.staff),
        nav,
        a: ApplicationView::of(a),
        history: detail.history.iter().map(EventView::of).collect(),
        entitlement: detail.entitlement.as_ref().map(EntitlementView::of),
        term_end_default: term_end.format("%Y-%m-%d").to_string(),
        error,
    })
}

struct EntitlementRow {
    id: String,
    models: String,
    nodes: u64,
    enrolled: u64,
    term_end: String,
    lease: String,
    caps: String,
    state: &'static str,
}

struct NodeRow {
    node_id: String,
    model_id: String,
    license_id: String,
    serial: u64,
    renewals: u64,
    phase: String,
    revoked: Option<String>,
    expires: String,
    last_renewal: String,
    findings: Vec<String>,
    chart: Option<String>,
}

struct UsageTable {
    id: &'static str,
    title: &'static str,
    rows: Vec<PeriodUsage>,
}

#[derive(Template)]
#[template(path = "portal/org.html")]
struct OrgPage {
    nav: Option<Nav>,
    staff: bool,
    /// An organization's own page offers it an enrollment token (this is the CSRF).
    token_form: Option<String>,
    org: String,
    /// The organization as a query value (staff's link to request an audit of it).
    org_query: String,
    entitlements: Vec<EntitlementRow>,
    nodes: Vec<NodeRow>,
    chart_requests: String,
    chart_tokens: String,
    tables: Vec<UsageTable>,
}

/// A license's caps for people (`requests per day: 500, …`), or "none".
fn caps_text(caps: &crate::license::Caps) -> String {
    let text = serde_json::to_value(caps)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}: {v}", k.replace('_', " ")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if text.is_empty() {
        "none".into()
    } else {
        text
    }
}

pub fn org(nav: Option<Nav>, o: &OrgOverview) -> Response {
    let now = crate::node::clock::system_now();
    let series = |rows: &[PeriodUsage], f: fn(&PeriodUsage) -> u64| -> Vec<(String, u64)> {
        rows.iter().map(|u| (u.period.clone(), f(u))).collect()
    };
    // The organization's total against the per-node cap times its nodes.
    let nodes_entitled: u64 = o
        .entitlements
        .iter()
        .filter(|e| e.revoked_at.is_none() && e.term_end > now)
        .map(|e| e.nodes)
        .sum();
    let scaled = |cap: Option<u64>| cap.map(|c| c.saturating_mul(nodes_entitled.max(1)));
    render(&OrgPage {
        staff: nav.as_ref().is_some_and(|n| n.staff),
        token_form: nav.as_ref().filter(|n| !n.staff).map(|n| n.csrf.clone()),
        nav,
        org: o.org.clone(),
        org_query: path_segment(&o.org),
        entitlements: o
            .entitlements
            .iter()
            .map(|e| EntitlementRow {
                id: e.id.clone(),
                models: e.models.join(", "),
                nodes: e.nodes,
                enrolled: e.enrolled,
                term_end: day(e.term_end),
                lease: format!("{} s + {} s", e.lease_seconds, e.grace_seconds),
                caps: caps_text(&e.caps),
                state: if e.revoked_at.is_some() {
                    "revoked"
                } else if e.term_end <= now {
                    "ended"
                } else {
                    "current"
                },
            })
            .collect(),
        nodes: o
            .nodes
            .iter()
            .map(|n| NodeRow {
                node_id: n.node_id.clone(),
                model_id: n.model_id.clone(),
                license_id: n.license_id.clone(),
                serial: n.serial,
                renewals: n.renewals,
                phase: n.phase.clone(),
                revoked: n.revoked_at.map(|at| {
                    format!(
                        "{}{}",
                        day(at),
                        n.revoke_reason
                            .as_deref()
                            .filter(|r| !r.is_empty())
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                }),
                expires: day(n.expires_at),
                last_renewal: day(n.last_renewal),
                findings: n.findings.clone(),
                chart: (!n.daily.is_empty()).then(|| {
                    super::charts::bars(
                        &format!("node {} requests per day", n.node_id),
                        &series(&n.daily, |u| u.requests),
                        o.caps.requests_per_day,
                    )
                }),
            })
            .collect(),
        chart_requests: super::charts::bars(
            "requests per day, all nodes",
            &series(&o.daily, |u| u.requests),
            scaled(o.caps.requests_per_day),
        ),
        chart_tokens: super::charts::bars(
            "tokens per day, all nodes",
            &series(&o.daily, PeriodUsage::tokens),
            scaled(o.caps.tokens_per_day),
        ),
        tables: vec![
            UsageTable {
                id: "day",
                title: "Per day",
                rows: o.daily.clone(),
            },
            UsageTable {
                id: "month",
                title: "Per month",
                rows: o.monthly.clone(),
            },
            UsageTable {
                id: "quarter",
                title: "Per quarter",
                rows: o.quarterly.clone(),
            },
        ],
    })
}

#[derive(Template)]
#[template(path = "portal/revoke.html")]
struct RevokePage<'a> {
    nav: Option<Nav>,
    nav_csrf: String,
    node_id: &'a str,
    org: &'a str,
    org_href: String,
}

pub fn revoke(nav: Option<Nav>, node_id: &str, org: &str) -> Response {
    render(&RevokePage {
        nav_csrf: csrf(&nav),
        nav,
        node_id,
        org,
        org_href: path_segment(org),
    })
}

struct EnrollmentView {
    id: String,
    node_id: String,
    org: String,
    model_id: String,
    submitted: String,
    use_case: String,
    data_handling: String,
    security_measures: String,
    hardware: String,
    with_token: bool,
}

#[derive(Template)]
#[template(path = "portal/enrollments.html")]
struct EnrollmentsPage<'a> {
    nav: Option<Nav>,
    nav_csrf: String,
    enrollments: Vec<EnrollmentView>,
    error: Option<&'a str>,
}

pub fn enrollments(nav: Option<Nav>, list: &[Enrollment], error: Option<&str>) -> Response {
    let or_none = |t: &str| {
        if t.trim().is_empty() {
            "-".to_string()
        } else {
            t.to_string()
        }
    };
    render(&EnrollmentsPage {
        nav_csrf: csrf(&nav),
        nav,
        enrollments: list
            .iter()
            .map(|e| EnrollmentView {
                id: e.id.clone(),
                node_id: e.node_id.clone(),
                org: e.org.clone(),
                model_id: e.model_id.clone(),
                submitted: day(e.created_at),
                use_case: or_none(&e.declared_use.use_case),
                data_handling: or_none(&e.declared_use.data_handling),
                security_measures: or_none(&e.declared_use.security_measures),
                hardware: e.hardware.clone(),
                with_token: e.with_token,
            })
            .collect(),
        error,
    })
}

#[derive(Template)]
#[template(path = "portal/token.html")]
struct TokenPage<'a> {
    nav: Option<Nav>,
    org: &'a str,
    token: &'a str,
}

pub fn enrollment_token(nav: Option<Nav>, org: &str, token: &str) -> Response {
    render(&TokenPage { nav, org, token })
}
