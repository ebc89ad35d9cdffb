//! The portal's audit pages: vendor staff request an audit of an organization's nodes
//! (the form on `/portal/audits`, as `admin audit request`) and follow each node's
//! answer; organizations see their own audits. Each answered node's report (the tally
//! of `leasehold audit report` over the records it answered with) is shown and
//! downloadable as CSV (exactly `leasehold audit report … --format csv`) and as JSON
//! (the admin API's `NodeReport`). Another organization's audit is "not found".

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

use super::super::audits::{Audit, AuditNode, AuditRequest, NodeReport, DEFAULT_MAX_RENEWALS};
use super::super::ApiError;
use super::pages::{day, path_segment, render, Nav};
use super::{signed_form, signed_in, staff_only, PortalError, PortalResult, Shared};
use crate::format::time::{parse_instant, rfc3339};
use crate::ledger::report::{self, Period, ReportRow, ReportTotals};
use crate::node::clock;

/// `?org=`: the request form prefilled for an organization (the link on its overview).
#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    org: Option<String>,
}

/// `?by=day|month|quarter` (default quarter).
#[derive(Deserialize, Default)]
pub struct ByQuery {
    #[serde(default)]
    by: Option<String>,
}

fn period(by: Option<&str>) -> Result<Period, PortalError> {
    match by.map(str::trim) {
        None | Some("") | Some("quarter") => Ok(Period::Quarter),
        Some("month") => Ok(Period::Month),
        Some("day") => Ok(Period::Day),
        Some(other) => Err(PortalError::Page(
            StatusCode::BAD_REQUEST,
            format!("'{other}' is not a period of a report: day, month or quarter"),
        )),
    }
}

/// The audit request form as posted (all text: a bad value is a message on the form).
#[derive(Deserialize)]
pub struct RequestForm {
    csrf: String,
    org: String,
    from: String,
    to: String,
    #[serde(default)]
    max_renewals: String,
    #[serde(default)]
    note: String,
}

/// A time typed in the form: a date (`2026-04-01`, UTC midnight), a date and time
/// (`2026-04-01 09:30`, `2026-04-01T09:30:15`, UTC), or what `admin audit request`
/// takes (RFC 3339, or relative like `-2h`).
fn parse_when(what: &str, text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("give the period's {what}"));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight is a time of day")
            .and_utc());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    parse_instant(text, clock::system_now()).map_err(|_| {
        format!("{what} '{text}' is not a date (2026-04-01, UTC midnight) or a time (2026-04-01T09:30:00Z)")
    })
}

impl RequestForm {
    fn request(&self) -> Result<AuditRequest, String> {
        let org = self.org.trim();
        if org.is_empty() {
            return Err("give the organization to audit".into());
        }
        let max_renewals = match self.max_renewals.trim() {
            "" => None,
            n => Some(
                n.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "renewals before flagging: a whole number from 1 to 1000, not '{n}'"
                        )
                    })?,
            ),
        };
        Ok(AuditRequest {
            org: org.to_string(),
            from: parse_when("start", &self.from)?,
            to: parse_when("end", &self.to)?,
            max_renewals,
            note: self.note.trim().to_string(),
        })
    }

    fn view(&self) -> FormView {
        FormView {
            org: self.org.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            max_renewals: self.max_renewals.clone(),
            note: self.note.clone(),
        }
    }
}

/// `GET /portal/audits`: staff see every audit and the request form; an organization
/// its own audits.
pub async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let form = session
        .account
        .is_staff()
        .then(|| FormView::fresh(query.org));
    list_page(&state, &session, form, None, StatusCode::OK).await
}

async fn list_page(
    state: &super::super::http::ServerState,
    session: &super::Session,
    form: Option<FormView>,
    error: Option<&str>,
    status: StatusCode,
) -> PortalResult {
    let audits = state.service.audits(session.account.org()).await?.audits;
    let orgs = match form {
        Some(_) => state
            .service
            .orgs()
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect(),
        None => Vec::new(),
    };
    Ok((
        status,
        audits_page(Nav::of(session), &audits, form, orgs, error),
    )
        .into_response())
}

/// `POST /portal/audits` (staff): request the audit; its page.
pub async fn request(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<RequestForm>,
) -> PortalResult {
    let session = signed_form(&state, &headers, &form.csrf).await?;
    staff_only(&session)?;
    let result = match form.request() {
        Ok(request) => {
            state
                .service
                .request_audit(request, &session.account.actor)
                .await
        }
        Err(message) => Err(ApiError::BadRequest(message)),
    };
    match result {
        Ok(audit) => {
            tracing::info!(
                "portal: {} requested audit {} of '{}'",
                session.account.actor,
                audit.id,
                audit.org
            );
            Ok(
                Redirect::to(&format!("/portal/audits/{}", path_segment(&audit.id)))
                    .into_response(),
            )
        }
        // A bad period, or an organization with no node to audit: the form again, as typed.
        Err(ApiError::BadRequest(message) | ApiError::NotFound(message)) => {
            list_page(
                &state,
                &session,
                Some(form.view()),
                Some(&message),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /portal/audits/{id}` (`?by=` groups the reports' rows).
pub async fn show(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<ByQuery>,
) -> PortalResult {
    let session = signed_in(&state, &headers).await?;
    let org = session.account.org();
    let by = period(query.by.as_deref())?;
    let audit = state.service.audit(&id, org).await?;
    let mut reports = Vec::new();
    for node in audit.nodes.iter().filter(|n| n.answered_at.is_some()) {
        let report = state
            .service
            .audit_report(&audit.id, &node.node_id, by, org)
            .await?;
        reports.push(report);
    }
    Ok(audit_page(Nav::of(&session), &audit, &reports, by))
}

/// One answered node's report, for the downloads.
async fn node_report(
    state: &super::super::http::ServerState,
    headers: &HeaderMap,
    id: &str,
    node: &str,
    by: Option<&str>,
) -> Result<NodeReport, PortalError> {
    let session = signed_in(state, headers).await?;
    let by = period(by)?;
    Ok(state
        .service
        .audit_report(id, node, by, session.account.org())
        .await?)
}

/// `Content-Disposition` for a download named after the audit and node.
fn attachment(report: &NodeReport, extension: &str) -> HeaderValue {
    let name: String = format!("{}-{}.{extension}", report.audit_id, report.node_id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.starts_with("audit-") {
        name
    } else {
        format!("audit-{name}")
    };
    HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .expect("the name is ASCII letters, digits and -_.")
}

/// `GET /portal/audits/{id}/nodes/{node}/report.csv`: the CSV of `leasehold audit report`.
pub async fn report_csv(
    State(state): State<Shared>,
    Path((id, node)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<ByQuery>,
) -> PortalResult {
    let report = node_report(&state, &headers, &id, &node, query.by.as_deref()).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, attachment(&report, "csv")),
        ],
        report::csv(&report.rows),
    )
        .into_response())
}

/// `GET /portal/audits/{id}/nodes/{node}/report.json`: the report as the admin API has it.
pub async fn report_json(
    State(state): State<Shared>,
    Path((id, node)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<ByQuery>,
) -> PortalResult {
    let report = node_report(&state, &headers, &id, &node, query.by.as_deref()).await?;
    let body = serde_json::to_string_pretty(&report)
        .map_err(|e| PortalError::from(ApiError::Internal(format!("a report as JSON: {e}"))))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_DISPOSITION, attachment(&report, "json")),
        ],
        body,
    )
        .into_response())
}

// ---- pages ----

/// The request form's values as the inputs show them.
pub struct FormView {
    org: String,
    from: String,
    to: String,
    max_renewals: String,
    note: String,
}

impl FormView {
    /// Last quarter, for `org` when given.
    fn fresh(org: Option<String>) -> FormView {
        let now = clock::system_now();
        let quarter_start = |year: i32, quarter0: u32| {
            NaiveDate::from_ymd_opt(year, quarter0 * 3 + 1, 1).expect("a quarter's first day")
        };
        let this = quarter_start(now.year(), now.month0() / 3);
        let last = match now.month0() / 3 {
            0 => quarter_start(now.year() - 1, 3),
            q => quarter_start(now.year(), q - 1),
        };
        FormView {
            org: org.unwrap_or_default(),
            from: last.format("%Y-%m-%d").to_string(),
            to: this.format("%Y-%m-%d").to_string(),
            max_renewals: DEFAULT_MAX_RENEWALS.to_string(),
            note: String::new(),
        }
    }
}

struct AuditRow {
    id: String,
    href: String,
    org: String,
    from: String,
    to: String,
    requested: String,
    status: &'static str,
    answered: usize,
    nodes: usize,
    flagged: bool,
}

#[derive(Template)]
#[template(path = "portal/audits.html")]
struct AuditsPage<'a> {
    nav: Option<Nav>,
    nav_csrf: String,
    staff: bool,
    audits: Vec<AuditRow>,
    form: Option<FormView>,
    orgs: Vec<String>,
    error: Option<&'a str>,
}

fn audits_page(
    nav: Option<Nav>,
    audits: &[Audit],
    form: Option<FormView>,
    orgs: Vec<String>,
    error: Option<&str>,
) -> Response {
    render(&AuditsPage {
        nav_csrf: nav.as_ref().map(|n| n.csrf.clone()).unwrap_or_default(),
        staff: nav.as_ref().is_some_and(|n| n.staff),
        nav,
        audits: audits
            .iter()
            .map(|a| AuditRow {
                id: a.id.clone(),
                href: path_segment(&a.id),
                org: a.org.clone(),
                from: rfc3339(a.from),
                to: rfc3339(a.to),
                requested: day(a.requested_at),
                status: a.status(),
                answered: a.nodes.iter().filter(|n| n.answered_at.is_some()).count(),
                nodes: a.nodes.len(),
                flagged: a.flagged(),
            })
            .collect(),
        form,
        orgs,
        error,
    })
}

struct AuditView {
    id: String,
    org: String,
    org_href: String,
    from: String,
    to: String,
    requested_by: String,
    requested_at: String,
    max_renewals: u32,
    note: String,
    status: &'static str,
    flagged: bool,
    answered: usize,
}

/// A report's totals, as the page shows them.
struct TotalsView {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    refused: u64,
    filtered: u64,
    cancelled: u64,
    interrupted: u64,
}

impl TotalsView {
    fn of(t: &ReportTotals) -> TotalsView {
        TotalsView {
            requests: t.requests,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            refused: t.refused,
            filtered: t.filtered,
            cancelled: t.cancelled,
            interrupted: t.interrupted,
        }
    }
}

struct NodeView {
    node_id: String,
    href: String,
    status: String,
    flagged: bool,
    asked: u64,
    first_asked: Option<String>,
    answered: Option<String>,
    records: Option<String>,
    refusals: u64,
    last_refusal: Option<String>,
    findings: Vec<String>,
    totals: Option<TotalsView>,
    rows: Option<Vec<ReportRow>>,
}

impl NodeView {
    fn of(n: &AuditNode, report: Option<&NodeReport>) -> NodeView {
        NodeView {
            node_id: n.node_id.clone(),
            href: path_segment(&n.node_id),
            status: n.status.clone(),
            flagged: n.status == "unanswered" || !n.findings.is_empty(),
            asked: n.asked,
            first_asked: n.first_asked_at.map(day),
            answered: n.answered_at.map(|at| {
                format!(
                    "{}{}",
                    day(at),
                    n.via
                        .map(|v| format!(
                            " ({})",
                            match v.as_str() {
                                "import" => "imported by the vendor from a file",
                                _ => "uploaded by the node after a renewal",
                            }
                        ))
                        .unwrap_or_default()
                )
            }),
            records: match (n.first_seq, n.last_seq) {
                (Some(first), Some(last)) => Some(format!("{first} to {last}")),
                _ => None,
            },
            refusals: n.refusals,
            last_refusal: n.last_refusal.clone(),
            findings: n.findings.clone(),
            totals: n.totals.as_ref().map(TotalsView::of),
            rows: report.map(|r| r.rows.clone()),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    staff: bool,
    a: AuditView,
    nodes: Vec<NodeView>,
    by: &'static str,
    id_href: String,
    periods: [&'static str; 3],
}

fn audit_page(nav: Option<Nav>, audit: &Audit, reports: &[NodeReport], by: Period) -> Response {
    render(&AuditPage {
        staff: nav.as_ref().is_some_and(|n| n.staff),
        nav,
        a: AuditView {
            id: audit.id.clone(),
            org: audit.org.clone(),
            org_href: path_segment(&audit.org),
            from: rfc3339(audit.from),
            to: rfc3339(audit.to),
            requested_by: audit.requested_by.clone(),
            requested_at: day(audit.requested_at),
            max_renewals: audit.max_renewals,
            note: audit.note.clone(),
            status: audit.status(),
            flagged: audit.flagged(),
            answered: audit
                .nodes
                .iter()
                .filter(|n| n.answered_at.is_some())
                .count(),
        },
        nodes: audit
            .nodes
            .iter()
            .map(|n| NodeView::of(n, reports.iter().find(|r| r.node_id == n.node_id)))
            .collect(),
        by: by.as_str(),
        id_href: path_segment(&audit.id),
        periods: ["day", "month", "quarter"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_dates_at_utc_midnight_or_instants() {
        let at = |t: &str| parse_when("start", t).map(rfc3339);
        assert_eq!(at("2026-04-01").unwrap(), "2026-04-01T00:00:00Z");
        assert_eq!(at(" 2026-04-01 09:30 ").unwrap(), "2026-04-01T09:30:00Z");
        assert_eq!(at("2026-04-01T09:30:15").unwrap(), "2026-04-01T09:30:15Z");
        assert_eq!(
            at("2026-04-01T09:30:15+02:00").unwrap(),
            "2026-04-01T07:30:15Z"
        );
        assert!(at("").is_err());
        assert!(at("April").unwrap_err().contains("'April'"));
        assert!(period(Some("week")).is_err());
        assert_eq!(period(None).ok(), Some(Period::Quarter));
        assert_eq!(period(Some("day")).ok(), Some(Period::Day));
        // Last quarter by default.
        let fresh = FormView::fresh(Some("Acme".into()));
        assert!(fresh.from < fresh.to, "{} {}", fresh.from, fresh.to);
        assert!(fresh.to.ends_with("-01"));
    }
}
