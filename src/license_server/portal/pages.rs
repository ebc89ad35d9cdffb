//! The portal's pages: askama templates (`templates/portal/`, HTML-escaped) and the
//! views they show, with times and terms already written out for people.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::super::accounts::{Invitation, Org, Session};
use super::super::applications::{
    Application, ApplicationDetail, ApplicationEvent, ApplicationForm,
};
use super::super::registry::Entitlement;
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

fn day(t: chrono::DateTime<chrono::Utc>) -> String {
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
        let caps = serde_json::to_value(&e.caps)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "none".into());
        EntitlementView {
            id: e.id.clone(),
            nodes: e.nodes,
            enrolled: e.enrolled,
            term_end: rfc3339(e.term_end),
            lease: format!(
                "{} s, renewed automatically; {} s grace",
                e.lease_seconds, e.grace_seconds
            ),
            caps,
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
