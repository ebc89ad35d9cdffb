//! Applications for a model: an organization declares what it will do with it, the
//! vendor approves (creating the entitlement), denies or asks for changes. Every step
//! is kept, with who and when, in an append-only history the vendor can export.
//!
//! Status: `submitted` → `changes-requested` → `submitted` … → `approved` | `denied`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::registry::{self, new_id, time, ts, Entitlement};
use super::store::sql::{Row, Sql, Value};
use super::store::StoreError;
use super::{ApiError, EntitleRequest, Service};
use crate::node::clock;

/// Longest free-text answer accepted, in bytes.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;

/// Academic or commercial use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Academic,
    #[default]
    Commercial,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Academic => "academic",
            Track::Commercial => "commercial",
        }
    }

    pub fn parse(text: &str) -> Result<Track, ApiError> {
        match text {
            "academic" => Ok(Track::Academic),
            "commercial" => Ok(Track::Commercial),
            other => Err(ApiError::BadRequest(format!(
                "track '{other}' is neither 'academic' nor 'commercial'"
            ))),
        }
    }
}

/// What an organization asks for, and declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationForm {
    pub model_id: String,
    /// The intended use case.
    pub use_case: String,
    /// The applications built on the model's output, and who uses them.
    pub downstream_applications: String,
    /// Where prompts and outputs go, how long they are kept, who sees them.
    pub data_handling: String,
    /// Access control, network placement, monitoring around the nodes.
    pub security_measures: String,
    /// Fine-tuning datasets it intends to use (empty: none).
    #[serde(default)]
    pub fine_tuning_datasets: String,
    /// Nodes requested.
    pub nodes: u64,
    /// Term requested, in days.
    pub term_days: u64,
    pub track: Track,
}

impl ApplicationForm {
    /// Every answer given and within bounds.
    pub fn check(&self) -> Result<(), ApiError> {
        let required = [
            ("the model", &self.model_id),
            ("the intended use case", &self.use_case),
            ("the downstream applications", &self.downstream_applications),
            ("the data handling practices", &self.data_handling),
            ("the security measures", &self.security_measures),
        ];
        for (what, answer) in required {
            if answer.trim().is_empty() {
                return Err(ApiError::BadRequest(format!("describe {what}")));
            }
        }
        for (what, answer) in required
            .into_iter()
            .chain([("the fine-tuning datasets", &self.fine_tuning_datasets)])
        {
            if answer.len() > MAX_ANSWER_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "{what}: at most {MAX_ANSWER_BYTES} bytes"
                )));
            }
        }
        if self.model_id.len() > 256 || self.model_id.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(
                "the model id must be 1 to 256 printable characters".into(),
            ));
        }
        if !(1..=100_000).contains(&self.nodes) {
            return Err(ApiError::BadRequest("request 1 to 100000 nodes".into()));
        }
        if !(1..=3_650).contains(&self.term_days) {
            return Err(ApiError::BadRequest(
                "request a term of 1 to 3650 days".into(),
            ));
        }
        Ok(())
    }
}

/// One step of an application's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationEvent {
    pub seq: u64,
    pub application_id: String,
    pub org: String,
    pub at: DateTime<Utc>,
    /// `staff:NAME` or `org:ORG (CONTACT)`.
    pub actor: String,
    /// `submitted`, `resubmitted`, `changes-requested`, `approved`, `denied`.
    pub action: String,
    pub note: String,
}

/// An application as the vendor and its organization see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub org: String,
    pub status: String,
    #[serde(flatten)]
    pub form: ApplicationForm,
    /// The entitlement its approval created.
    pub entitlement_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The number of its last history event: what a reviewer saw (a decision on an
    /// older version is refused).
    pub version: u64,
    /// The vendor's last note (a denial's reason, the changes asked for), while it
    /// stands.
    pub vendor_note: Option<String>,
}

/// `GET /admin/applications?status=…&org=…`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplicationQuery {
    pub status: Option<String>,
    pub org: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationList {
    pub applications: Vec<Application>,
}

/// One application with its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationDetail {
    pub application: Application,
    pub history: Vec<ApplicationEvent>,
    /// The entitlement its approval created.
    pub entitlement: Option<Entitlement>,
}

/// The vendor's decision on an application.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Review {
    /// Approve with these terms (the entitlement `admin entitle` would create; its
    /// `org` and `models` come from the application).
    Approve {
        terms: Box<EntitleRequest>,
        #[serde(default)]
        note: String,
    },
    Deny {
        note: String,
    },
    RequestChanges {
        note: String,
    },
}

/// The history, for export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub events: Vec<ApplicationEvent>,
}

const COLUMNS: &str = "a.id, a.org, a.status, a.details, a.entitlement_id, a.created_at, a.updated_at, \
     (SELECT e.note FROM application_events e WHERE e.application_id = a.id AND e.actor LIKE 'staff:%' ORDER BY e.id DESC LIMIT 1), \
     (SELECT MAX(e.id) FROM application_events e WHERE e.application_id = a.id)";

fn application(row: &Row) -> Result<Application, StoreError> {
    let form: ApplicationForm = serde_json::from_str(&row.text(3)?)
        .map_err(|e| StoreError::Corrupt(format!("application details: {e}")))?;
    let status = row.text(2)?;
    Ok(Application {
        id: row.text(0)?,
        org: row.text(1)?,
        // A resubmitted application waits for a new decision: the old note is history.
        vendor_note: row
            .opt_text(7)?
            .filter(|n| !n.is_empty() && status != "submitted"),
        status,
        form,
        entitlement_id: row.opt_text(4)?,
        created_at: time(row.int(5)?),
        updated_at: time(row.int(6)?),
        version: row.opt_int(8)?.unwrap_or(0).max(0) as u64,
    })
}

fn record(
    sql: &mut dyn Sql,
    id: &str,
    org: &str,
    actor: &str,
    action: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sql.execute(
        "INSERT INTO application_events (application_id, org, recorded_at, actor, action, note) VALUES ($1, $2, $3, $4, $5, $6)",
        &[id.into(), org.into(), ts(now), actor.into(), action.into(), note.into()],
    )?;
    Ok(())
}

fn submit(
    sql: &mut dyn Sql,
    org: &str,
    actor: &str,
    form: &ApplicationForm,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let id = new_id();
    sql.execute(
        "INSERT INTO applications (id, org, status, details, created_at, updated_at) VALUES ($1, $2, 'submitted', $3, $4, $4)",
        &[
            (&id).into(),
            org.into(),
            serde_json::to_string(form).unwrap_or_default().into(),
            ts(now),
        ],
    )?;
    record(sql, &id, org, actor, "submitted", "", now)?;
    Ok(id)
}

/// The application `id`, if `org` (when given) may see it.
fn find(sql: &mut dyn Sql, id: &str, org: Option<&str>) -> Result<Application, StoreError> {
    let found = sql
        .query_opt(
            &format!("SELECT {COLUMNS} FROM applications a WHERE a.id = $1"),
            &[id.into()],
        )?
        .map(|row| application(&row))
        .transpose()?
        .filter(|a| org.is_none_or(|o| o == a.org));
    // Another organization's application is "not found", as an unknown one.
    found.ok_or_else(|| StoreError::NotFound(format!("no application {id}")))
}

fn list(sql: &mut dyn Sql, query: &ApplicationQuery) -> Result<Vec<Application>, StoreError> {
    let mut conditions = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    for (column, value) in [("a.status", &query.status), ("a.org", &query.org)] {
        if let Some(v) = value {
            params.push(v.into());
            conditions.push(format!("{column} = ${}", params.len()));
        }
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    sql.query(
        &format!("SELECT {COLUMNS} FROM applications a {filter} ORDER BY a.created_at DESC, a.id"),
        &params,
    )?
    .iter()
    .map(application)
    .collect()
}

fn history(
    sql: &mut dyn Sql,
    id: Option<&str>,
    org: Option<&str>,
) -> Result<Vec<ApplicationEvent>, StoreError> {
    let rows = match id {
        Some(id) => sql.query(
            "SELECT id, application_id, org, recorded_at, actor, action, note FROM application_events WHERE application_id = $1 ORDER BY id",
            &[id.into()],
        )?,
        None => sql.query(
            "SELECT id, application_id, org, recorded_at, actor, action, note FROM application_events ORDER BY id",
            &[],
        )?,
    };
    rows.iter()
        .map(|row| {
            Ok(ApplicationEvent {
                seq: row.int(0)?.max(0) as u64,
                application_id: row.text(1)?,
                org: row.text(2)?,
                at: time(row.int(3)?),
                actor: row.text(4)?,
                action: row.text(5)?,
                note: row.text(6)?,
            })
        })
        .filter(|e| e.as_ref().map_or(true, |e| org.is_none_or(|o| o == e.org)))
        .collect()
}

/// Move an application from `from` to `to` (one conditional UPDATE, so two reviewers
/// deciding at once cannot both win).
fn transition(
    sql: &mut dyn Sql,
    id: &str,
    from: &str,
    to: &str,
    details: Option<&ApplicationForm>,
    entitlement_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut set = String::from("status = $1, updated_at = $2");
    let mut params: Vec<Value> = vec![to.into(), ts(now), id.into(), from.into()];
    if let Some(d) = details {
        params.push(serde_json::to_string(d).unwrap_or_default().into());
        set.push_str(&format!(", details = ${}", params.len()));
    }
    if let Some(e) = entitlement_id {
        params.push(e.into());
        set.push_str(&format!(", entitlement_id = ${}", params.len()));
    }
    let changed = sql.execute(
        &format!("UPDATE applications SET {set} WHERE id = $3 AND status = $4"),
        &params,
    )?;
    if changed != 1 {
        return Err(StoreError::Conflict(format!(
            "application {id} is no longer {from} (decided or changed meanwhile); reload it"
        )));
    }
    Ok(())
}

impl Service {
    /// An organization applies.
    pub async fn apply(
        &self,
        org: &str,
        actor: &str,
        form: ApplicationForm,
    ) -> Result<Application, ApiError> {
        form.check()?;
        let (org, actor) = (org.to_string(), actor.to_string());
        let application = self
            .store
            .transact(move |sql| {
                let id = submit(sql, &org, &actor, &form, clock::system_now())?;
                find(sql, &id, None)
            })
            .await?;
        tracing::info!(
            "application {} from '{}' for model '{}'",
            application.id,
            application.org,
            application.form.model_id
        );
        Ok(application)
    }

    /// An organization answers a request for changes with a revised application.
    pub async fn resubmit(
        &self,
        id: &str,
        org: &str,
        actor: &str,
        form: ApplicationForm,
        note: &str,
    ) -> Result<Application, ApiError> {
        form.check()?;
        if note.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::BadRequest(format!(
                "what you changed: at most {MAX_ANSWER_BYTES} bytes"
            )));
        }
        let (id, org, actor, note) = (
            id.to_string(),
            org.to_string(),
            actor.to_string(),
            note.to_string(),
        );
        Ok(self
            .store
            .transact(move |sql| {
                find(sql, &id, Some(&org))?;
                let now = clock::system_now();
                transition(
                    sql,
                    &id,
                    "changes-requested",
                    "submitted",
                    Some(&form),
                    None,
                    now,
                )?;
                record(sql, &id, &org, &actor, "resubmitted", &note, now)?;
                find(sql, &id, None)
            })
            .await?)
    }

    /// Applications, newest first; an organization's account sees only its own.
    pub async fn applications(
        &self,
        mut query: ApplicationQuery,
        viewer_org: Option<&str>,
    ) -> Result<ApplicationList, ApiError> {
        if let Some(org) = viewer_org {
            query.org = Some(org.to_string());
        }
        let applications = self.store.transact(move |sql| list(sql, &query)).await?;
        Ok(ApplicationList { applications })
    }

    /// One application with its history; "not found" for another organization's.
    pub async fn application(
        &self,
        id: &str,
        viewer_org: Option<&str>,
    ) -> Result<ApplicationDetail, ApiError> {
        let (id, org) = (id.to_string(), viewer_org.map(str::to_string));
        Ok(self
            .store
            .transact(move |sql| {
                let application = find(sql, &id, org.as_deref())?;
                let history = history(sql, Some(&id), None)?;
                let entitlement = match &application.entitlement_id {
                    Some(eid) => registry::entitlements(sql)?
                        .into_iter()
                        .find(|e| &e.id == eid),
                    None => None,
                };
                Ok(ApplicationDetail {
                    application,
                    history,
                    entitlement,
                })
            })
            .await?)
    }

    /// The vendor decides. Approval creates the entitlement in the same transaction.
    /// `seen` is the version the reviewer looked at (the portal's form carries it): a
    /// decision on an application that changed since is refused.
    pub async fn review(
        &self,
        id: &str,
        actor: &str,
        review: Review,
        seen: Option<u64>,
    ) -> Result<ApplicationDetail, ApiError> {
        let now = clock::system_now();
        let current = self.application(id, None).await?.application;
        // Checked again inside the transaction: the terms below are built from `current`.
        let expected = seen.unwrap_or(current.version);
        let (action, to, note, entitlement) = match review {
            Review::Approve { mut terms, note } => {
                terms.org = current.org.clone();
                terms.models = vec![current.form.model_id.clone()];
                let entitlement = self.entitlement_for(*terms, now)?;
                ("approved", "approved", note, Some(entitlement))
            }
            Review::Deny { note } => ("denied", "denied", note, None),
            Review::RequestChanges { note } => {
                ("changes-requested", "changes-requested", note, None)
            }
        };
        if to != "approved" && note.trim().is_empty() {
            return Err(ApiError::BadRequest(
                "say why in a note: the organization reads it".into(),
            ));
        }
        if note.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::BadRequest(format!(
                "the note: at most {MAX_ANSWER_BYTES} bytes"
            )));
        }
        let (i, a, org) = (id.to_string(), actor.to_string(), current.org.clone());
        self.store
            .transact(move |sql| {
                let version = find(sql, &i, None)?.version;
                if version != expected {
                    return Err(StoreError::Conflict(format!(
                        "application {i} changed since it was opened for review (the organization resubmitted, or someone decided); reload it and review again"
                    )));
                }
                let entitlement_id = match entitlement {
                    Some(e) => Some(registry::entitle(sql, e, now)?.id),
                    None => None,
                };
                transition(
                    sql,
                    &i,
                    "submitted",
                    to,
                    None,
                    entitlement_id.as_deref(),
                    now,
                )?;
                record(sql, &i, &org, &a, action, &note, now)
            })
            .await?;
        tracing::info!("application {id} of '{}' {action} by {actor}", current.org);
        self.application(id, None).await
    }

    /// The whole history (or an organization's), oldest first, for export.
    pub async fn history(&self, org: Option<&str>) -> Result<History, ApiError> {
        let org = org.map(str::to_string);
        let events = self
            .store
            .transact(move |sql| history(sql, None, org.as_deref()))
            .await?;
        Ok(History { events })
    }
}
