//! license-server and admin: the vendor's side of short leases.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{
    exit, AdminArgs, AdminCommand, ApplicationCommand, LicenseServerArgs, ModelCommand, OrgCommand,
    Outcome, StaffCommand, UsagePeriod,
};
use crate::crypto::keyfile::{self, KeyKind};
use crate::format::time::{parse_duration, parse_instant, rfc3339};
use crate::fsutil::{self, Replace};
use crate::http_auth::read_admin_token;
use crate::license::Caps;
use crate::license_server::accounts::{
    EnrollmentToken, EnrollmentTokenRequest, Invitation, InviteRequest, OrgList,
    RevokeTokensRequest, StaffAdded, StaffRequest, TokensRevoked,
};
use crate::license_server::admin::{
    AddModelRequest, Decided, DecisionRequest, EnrollmentList, EntitlementList, LicenseList,
    ModelAdded, RevokeRequest, Revoked, UsageReport,
};
use crate::license_server::applications::{ApplicationDetail, ApplicationList, History, Review};
use crate::license_server::http::{self, ServerState};
use crate::license_server::oversight::OrgOverview;
use crate::license_server::registry::Entitlement;
use crate::license_server::store::{DbUrl, Store};
use crate::license_server::{EnrollmentLimits, EntitleRequest, Issuer, Service};
use crate::node::clock;
use crate::runtime::renewal::error_message;
use crate::seal::SealedModel;

pub fn license_server(args: LicenseServerArgs) -> Outcome {
    let issuer = Issuer::load(&args.issuer_key, &args.issuer_cert)?;
    let db = DbUrl::parse(&args.db).map_err(anyhow::Error::msg)?;
    let admin_token = read_admin_token(&args.admin_token_file)?;
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen '{}' is not an address like 127.0.0.1:8443",
            args.listen
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let store = Store::open(&db).await.context("cannot open the database")?;
        let scope = issuer.scope().clone();
        let key_id = issuer.key_id();
        let limits =
            EnrollmentLimits::per_minute(args.enrollments_per_address, args.enrollments_per_org);
        let service = Service::new(store, issuer, limits);
        {
            // Renewal nonces are needed for the request window only.
            let service = service.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    every.tick().await;
                    if let Err(e) = service.forget_old_nonces().await {
                        tracing::warn!("cannot forget old renewal nonces (retried in a minute): {e}");
                    }
                }
            });
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot load the TLS certificate {} and key {} (PEM)",
                            cert.display(),
                            key.display()
                        )
                    })?,
            ),
            _ => None,
        };
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(ServerState {
            service,
            admin_token,
            tls: tls.is_some()
                || args
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
            public_url: args
                .public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_string()),
            sign_in_limit: crate::license_server::rate_limit::RateLimit::per_minute(
                http::SIGN_INS_PER_MINUTE,
            ),
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let handle = axum_server::Handle::new();
        {
            let handle = handle.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = term.recv() => {}
                }
                handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
        }
        // Announced once a stop signal is handled.
        println!(
            "license server on {}://{} (issuer {key_id}, {} database; certified for organizations [{}], models [{}], leases up to {} s, until {})",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr().unwrap_or(listen),
            state.service.store.kind(),
            scope.orgs.join(", "),
            scope.models.join(", "),
            scope.max_lease_seconds,
            rfc3339(scope.not_after)
        );
        // The peer address is what enrollment rate limits key on.
        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        match tls {
            Some(config) => axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await,
            None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
        }
        .context("the license server failed")?;
        Ok(exit::OK)
    })
}

/// A blocking admin client.
pub(super) struct Admin {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(args: &AdminArgs) -> anyhow::Result<Admin> {
        Ok(Admin {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            http: crate::runtime::renewal::http_client(std::time::Duration::from_secs(30))?,
            base: args.server.trim_end_matches('/').to_string(),
            token: read_admin_token(&args.token_file)?,
        })
    }

    pub(super) fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(bool, Vec<u8>)> {
        self.rt.block_on(async {
            let response = request
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("cannot reach the license server at {}", self.base))?;
            let status = response.status();
            let bytes = response.bytes().await?.to_vec();
            if status.is_success() {
                return Ok((true, bytes));
            }
            bail!(
                "the license server answered HTTP {}: {}",
                status.as_u16(),
                error_message(&bytes)
            )
        })
    }

    pub(super) fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .with_context(|| format!("'{}' is not a valid server URL", self.base))?;
        let (_, bytes) = self.send(self.http.get(url))?;
        decode(path, &bytes)
    }

    pub(super) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let (_, bytes) = self.send(self.http.post(format!("{}{path}", self.base)).json(body))?;
        decode(path, &bytes)
    }

    /// POST bytes; the status and body whatever the status (the caller decides).
    pub(super) fn post_raw_any(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .bearer_auth(&self.token)
            .body(body);
        self.rt.block_on(async {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the license server at {}", self.base))?;
            let status = response.status().as_u16();
            Ok((status, response.bytes().await?.to_vec()))
        })
    }

    pub(super) fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let (_, bytes) = self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )?;
        Ok(bytes)
    }
}

/// A typed answer of the admin API; a server of another version may answer otherwise.
fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!("the license server's answer to {path} is not what this leasehold expects (another version?)")
    })
}

/// `--json`: the answer as the API gave it, pretty-printed.
pub(super) fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn admin(args: AdminArgs) -> Outcome {
    let admin = Admin::new(&args)?;
    let json_out = args.json;
    match args.command {
        AdminCommand::Model(ModelCommand::Add(a)) => {
            let sealed = SealedModel::open(&a.sealed)?;
            let key = keyfile::read(&a.content_key, KeyKind::ContentKey).with_context(|| {
                format!("cannot read the content key {}", a.content_key.display())
            })?;
            let b64 = base64::engine::general_purpose::STANDARD;
            let added: ModelAdded = admin.post(
                "/admin/models",
                &AddModelRequest {
                    header: b64.encode(sealed.header().encode()),
                    content_key: b64.encode(key.as_slice()),
                },
            )?;
            if json_out {
                print_json(&added)?;
            } else {
                println!(
                    "model '{}' added (key id {}); its content key is stored encrypted",
                    added.model_id, added.key_id
                );
            }
        }
        AdminCommand::Entitle(a) => {
            let now = clock::system_now();
            let mut caps = Caps::default();
            for c in &a.caps {
                caps.set(c).map_err(anyhow::Error::msg)?;
            }
            let request = EntitleRequest {
                org: a.org.clone(),
                models: a.models.clone(),
                nodes: a.nodes,
                term_end: parse_instant(&a.term_end, now).map_err(anyhow::Error::msg)?,
                lease_seconds: parse_duration(&a.lease)
                    .map_err(anyhow::Error::msg)?
                    .num_seconds()
                    .max(0) as u64,
                grace_seconds: parse_duration(&a.grace)
                    .map_err(anyhow::Error::msg)?
                    .num_seconds()
                    .max(0) as u64,
                caps,
                safeguards: super::vendor::safeguards(&a.safeguards)?,
                auto_approve: a.auto_approve,
            };
            let mandated = request.safeguards.summary();
            let e: Entitlement = admin.post("/admin/entitlements", &request)?;
            if json_out {
                print_json(&e)?;
            } else {
                println!(
                    "entitlement {}: '{}' may run [{}] on {} node(s) until {}, leases of {} s + {} s grace; safeguards: {mandated}",
                    e.id,
                    e.org,
                    e.models.join(", "),
                    e.nodes,
                    rfc3339(e.term_end),
                    e.lease_seconds,
                    e.grace_seconds
                );
            }
        }
        AdminCommand::Entitlements => {
            let list: EntitlementList = admin.get("/admin/entitlements", &[])?;
            if json_out {
                print_json(&list)?;
            } else {
                println!(
                    "{:16}  {:24} {:24} {:>11}  {:20}  lease",
                    "ID", "ORG", "MODELS", "ENROLLED", "TERM END"
                );
                for e in &list.entitlements {
                    println!(
                        "{:16}  {:24} {:24} {:>5} / {:<3}  {:20}  {} s + {} s{}",
                        e.id,
                        e.org,
                        e.models.join(","),
                        e.enrolled,
                        e.nodes,
                        rfc3339(e.term_end),
                        e.lease_seconds,
                        e.grace_seconds,
                        if e.revoked_at.is_none() {
                            ""
                        } else {
                            "  REVOKED"
                        }
                    );
                }
            }
        }
        AdminCommand::Enrollments(a) => {
            let query = if a.status == "all" {
                vec![]
            } else {
                vec![("status", a.status.clone())]
            };
            let list: EnrollmentList = admin.get("/admin/enrollments", &query)?;
            if json_out {
                print_json(&list)?;
            } else {
                if list.enrollments.is_empty() {
                    println!("no {} enrollments", a.status);
                }
                for e in &list.enrollments {
                    let shown = |t: &str| if t.is_empty() { "-" } else { t }.to_string();
                    println!("enrollment {}  [{}]", e.id, e.status);
                    println!("  node              {}", e.node_id);
                    println!("  organization      {}", e.org);
                    println!("  model             {}", e.model_id);
                    println!("  submitted         {}", rfc3339(e.created_at));
                    println!("  declared use      {}", e.declared_use.use_case);
                    println!(
                        "  data handling     {}",
                        shown(&e.declared_use.data_handling)
                    );
                    println!(
                        "  security measures {}",
                        shown(&e.declared_use.security_measures)
                    );
                    println!("  hardware binding  {}", e.hardware);
                    println!(
                        "  enrollment token  {}",
                        if e.with_token {
                            "yes, the organization's"
                        } else {
                            "none (anyone can submit an enrollment naming any organization)"
                        }
                    );
                    if let Some(note) = &e.note {
                        println!("  note              {note}");
                    }
                }
            }
        }
        AdminCommand::Approve(ref a) | AdminCommand::Deny(ref a) => {
            let verb = if matches!(args.command, AdminCommand::Approve(_)) {
                "approve"
            } else {
                "deny"
            };
            let decided: Decided = admin.post(
                &format!("/admin/enrollments/{}/{verb}", a.id),
                &DecisionRequest {
                    note: a.note.clone(),
                },
            )?;
            if json_out {
                print_json(&decided)?;
            } else {
                let e = &decided.enrollment;
                println!(
                    "enrollment {} {}: node {} of '{}' for model '{}'",
                    e.id, e.status, e.node_id, e.org, e.model_id
                );
            }
        }
        AdminCommand::List => {
            let list: LicenseList = admin.get("/admin/licenses", &[])?;
            if json_out {
                print_json(&list)?;
            } else {
                println!(
                    "{:32}  {:16}  {:20} {:16} {:>7}  {:20}  status",
                    "LICENSE", "NODE", "ORG", "MODEL", "SERIAL", "EXPIRES"
                );
                for l in &list.licenses {
                    println!(
                        "{:32}  {:16}  {:20} {:16} {:>7}  {:20}  {}",
                        l.license_id,
                        l.node_id,
                        l.org,
                        l.model_id,
                        l.serial,
                        rfc3339(l.expires_at),
                        match l.revoked_at {
                            None => "active".to_string(),
                            Some(at) => format!(
                                "revoked {} {}",
                                rfc3339(at),
                                l.revoke_reason.as_deref().unwrap_or("")
                            ),
                        }
                    );
                }
            }
        }
        AdminCommand::Revoke(a) => {
            let revoked: Revoked = admin.post(
                "/admin/revoke",
                &RevokeRequest {
                    license: a.license,
                    node: a.node,
                    org: a.org,
                    reason: a.reason,
                },
            )?;
            if json_out {
                print_json(&revoked)?;
            } else {
                println!(
                    "revoked {} license(s); nodes stop at their next renewal",
                    revoked.revoked_licenses
                );
            }
        }
        AdminCommand::Usage(a) => {
            let now = clock::system_now();
            let mut query = Vec::new();
            if let Some(org) = &a.org {
                query.push(("org", org.clone()));
            }
            if let Some(t) = &a.from {
                query.push((
                    "from",
                    rfc3339(parse_instant(t, now).map_err(anyhow::Error::msg)?),
                ));
            }
            if let Some(t) = &a.to {
                query.push((
                    "to",
                    rfc3339(parse_instant(t, now).map_err(anyhow::Error::msg)?),
                ));
            }
            let report: UsageReport = admin.get("/admin/usage", &query)?;
            if json_out {
                print_json(&report)?;
            } else {
                println!(
                    "usage from {} to {}",
                    rfc3339(report.from),
                    rfc3339(report.to)
                );
                println!(
                    "{:20} {:16} {:>9} {:>12} {:>12} {:>11}",
                    "ORG", "NODE", "REQUESTS", "PROMPT TOK", "OUTPUT TOK", "CHECKPOINTS"
                );
                let mut flagged = 0;
                for n in &report.nodes {
                    println!(
                        "{:20} {:16} {:>9} {:>12} {:>12} {:>11}{}",
                        n.org,
                        n.node_id,
                        n.requests,
                        n.prompt_tokens,
                        n.completion_tokens,
                        n.checkpoints,
                        if n.ledger_findings.is_empty() && !n.went_backwards {
                            String::new()
                        } else {
                            flagged += 1;
                            "  LEDGER FLAGGED".to_string()
                        }
                    );
                    for f in &n.ledger_findings {
                        println!("    ! {f}");
                    }
                }
                if flagged > 0 {
                    println!("{flagged} node(s) flagged: their usage ledger was replaced, went backwards or forked; ask the operator for the ledger and check it with `leasehold audit verify`");
                }
            }
        }
        AdminCommand::Staff(StaffCommand::Add(a)) => {
            let added: StaffAdded = admin.post("/admin/staff", &StaffRequest { name: a.name })?;
            if json_out {
                print_json(&added)?;
            } else {
                println!(
                    "staff token for '{}' (shown once; it signs in to {}/portal/ as this staff member):\n{}",
                    added.name, admin.base, added.token
                );
            }
        }
        AdminCommand::Staff(StaffCommand::Remove(a)) => {
            let removed: Value = admin.post(
                &format!(
                    "/admin/staff/{}/remove",
                    crate::license_server::portal::path_segment(&a.name)
                ),
                &serde_json::json!({}),
            )?;
            if json_out {
                print_json(&removed)?;
            } else {
                println!(
                    "staff token of '{}' removed; their sessions have ended",
                    a.name
                );
            }
        }
        AdminCommand::Org(OrgCommand::RevokeTokens(a)) => {
            let both = !a.access && !a.enrollment;
            let revoked: TokensRevoked = admin.post(
                "/admin/tokens/revoke",
                &RevokeTokensRequest {
                    org: a.org.clone(),
                    access: a.access || both,
                    enrollment: a.enrollment || both,
                },
            )?;
            if json_out {
                print_json(&revoked)?;
            } else {
                println!(
                    "'{}': {} access token(s) revoked (their sessions end), {} enrollment token(s) revoked (its nodes wait for approval again)",
                    a.org, revoked.access_tokens, revoked.enrollment_tokens
                );
            }
        }
        AdminCommand::Org(OrgCommand::Invite(a)) => {
            let invitation: Invitation =
                admin.post("/admin/invitations", &InviteRequest { org: a.org })?;
            let url = format!("{}{}", admin.base, invitation.path);
            if json_out {
                print_json(&serde_json::json!({
                    "org": invitation.org,
                    "url": url,
                    "expires_at": invitation.expires_at,
                }))?;
            } else {
                println!(
                    "invitation for '{}' (works once, until {}); send it to the organization:\n{url}",
                    invitation.org,
                    rfc3339(invitation.expires_at)
                );
            }
        }
        AdminCommand::Org(OrgCommand::EnrollmentToken(a)) => {
            let made: EnrollmentToken = admin.post(
                "/admin/enrollment-tokens",
                &EnrollmentTokenRequest { org: a.org },
            )?;
            if json_out {
                print_json(&made)?;
            } else {
                println!(
                    "enrollment token for '{}' (shown once; nodes send it with `leasehold enroll --server … --enrollment-token-file F`):\n{}",
                    made.org, made.token
                );
            }
        }
        AdminCommand::Org(OrgCommand::List) => {
            let list: OrgList = admin.get("/admin/orgs", &[])?;
            if json_out {
                print_json(&list)?;
            } else {
                println!(
                    "{:32} {:20} {:>8} {:>16}",
                    "ORG", "SINCE", "ACCOUNTS", "OPEN INVITATIONS"
                );
                for o in &list.orgs {
                    println!(
                        "{:32} {:20} {:>8} {:>16}",
                        o.name,
                        rfc3339(o.created_at),
                        o.accounts,
                        o.open_invitations
                    );
                }
            }
        }
        AdminCommand::Org(OrgCommand::Show(a)) => {
            let o: OrgOverview = admin.get(
                &format!(
                    "/admin/orgs/{}",
                    crate::license_server::portal::path_segment(&a.org)
                ),
                &[],
            )?;
            if json_out {
                print_json(&o)?;
            } else {
                println!("organization {}", o.org);
                for e in &o.entitlements {
                    println!(
                        "  entitlement {}  [{}]  {} of {} nodes, until {}{}",
                        e.id,
                        e.models.join(", "),
                        e.enrolled,
                        e.nodes,
                        rfc3339(e.term_end),
                        if e.revoked_at.is_some() {
                            "  REVOKED"
                        } else {
                            ""
                        }
                    );
                }
                println!(
                    "{:16}  {:16} {:8} {:>8}  {:20}  {:20}",
                    "NODE", "MODEL", "PHASE", "SERIAL", "EXPIRES", "LAST RENEWAL"
                );
                for n in &o.nodes {
                    println!(
                        "{:16}  {:16} {:8} {:>8}  {:20}  {:20}",
                        n.node_id,
                        n.model_id,
                        n.phase,
                        n.serial,
                        rfc3339(n.expires_at),
                        rfc3339(n.last_renewal)
                    );
                    for f in &n.findings {
                        println!("    ! {f}");
                    }
                }
                let rows = match a.per {
                    UsagePeriod::Day => &o.daily,
                    UsagePeriod::Month => &o.monthly,
                    UsagePeriod::Quarter => &o.quarterly,
                };
                println!(
                    "{:12} {:>10} {:>14} {:>14}",
                    "PERIOD", "REQUESTS", "PROMPT TOK", "OUTPUT TOK"
                );
                for u in rows {
                    println!(
                        "{:12} {:>10} {:>14} {:>14}",
                        u.period, u.requests, u.prompt_tokens, u.completion_tokens
                    );
                }
            }
        }
        AdminCommand::Applications(a) => {
            let mut query = Vec::new();
            if a.status != "all" {
                query.push(("status", a.status.clone()));
            }
            if let Some(org) = &a.org {
                query.push(("org", org.clone()));
            }
            let list: ApplicationList = admin.get("/admin/applications", &query)?;
            if json_out {
                print_json(&list)?;
            } else {
                if list.applications.is_empty() {
                    println!("no {} applications", a.status);
                }
                println!(
                    "{:16}  {:24} {:20} {:>5}  {:10} {:18} UPDATED",
                    "ID", "ORG", "MODEL", "NODES", "TRACK", "STATUS"
                );
                for x in &list.applications {
                    println!(
                        "{:16}  {:24} {:20} {:>5}  {:10} {:18} {}",
                        x.id,
                        x.org,
                        x.form.model_id,
                        x.form.nodes,
                        x.form.track.as_str(),
                        x.status,
                        rfc3339(x.updated_at)
                    );
                }
            }
        }
        AdminCommand::Application(command) => {
            let detail: ApplicationDetail = match command {
                ApplicationCommand::Show(a) => {
                    admin.get(&format!("/admin/applications/{}", a.id), &[])?
                }
                ApplicationCommand::Approve(a) => {
                    let now = clock::system_now();
                    let current: ApplicationDetail =
                        admin.get(&format!("/admin/applications/{}", a.id), &[])?;
                    let form = &current.application.form;
                    let mut caps = Caps::default();
                    for c in &a.caps {
                        caps.set(c).map_err(anyhow::Error::msg)?;
                    }
                    let term_end = match &a.term_end {
                        Some(t) => parse_instant(t, now).map_err(anyhow::Error::msg)?,
                        None => now + chrono::Duration::days(form.term_days.min(3650) as i64),
                    };
                    let terms = EntitleRequest {
                        org: current.application.org.clone(),
                        models: vec![form.model_id.clone()],
                        nodes: a.nodes.unwrap_or(form.nodes),
                        term_end,
                        lease_seconds: parse_duration(&a.lease)
                            .map_err(anyhow::Error::msg)?
                            .num_seconds()
                            .max(0) as u64,
                        grace_seconds: parse_duration(&a.grace)
                            .map_err(anyhow::Error::msg)?
                            .num_seconds()
                            .max(0) as u64,
                        caps,
                        safeguards: super::vendor::safeguards(&a.safeguards)?,
                        auto_approve: a.auto_approve,
                    };
                    admin.post(
                        &format!("/admin/applications/{}/review", a.id),
                        &Review::Approve {
                            terms: Box::new(terms),
                            note: a.note,
                        },
                    )?
                }
                ApplicationCommand::Deny(a) => admin.post(
                    &format!("/admin/applications/{}/review", a.id),
                    &Review::Deny { note: a.note },
                )?,
                ApplicationCommand::RequestChanges(a) => admin.post(
                    &format!("/admin/applications/{}/review", a.id),
                    &Review::RequestChanges { note: a.note },
                )?,
            };
            if json_out {
                print_json(&detail)?;
            } else {
                print_application(&detail);
            }
        }
        AdminCommand::Audit(command) => return super::audit_cmds::admin(&admin, command, json_out),
        AdminCommand::History(a) => {
            let query: Vec<(&str, String)> = a.org.iter().map(|o| ("org", o.clone())).collect();
            let history: History = admin.get("/admin/history", &query)?;
            if json_out {
                print_json(&history)?;
            } else if a.csv {
                print!("{}", history_csv(&history));
            } else {
                for e in &history.events {
                    println!(
                        "{:>6}  {}  {:16}  {:24} {:18} {}{}",
                        e.seq,
                        rfc3339(e.at),
                        e.application_id,
                        e.org,
                        e.action,
                        e.actor,
                        if e.note.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", e.note)
                        }
                    );
                }
            }
        }
        AdminCommand::Renew(a) => {
            let request = fsutil::read_limited(
                &a.request,
                crate::format::envelope::MAX_DOCUMENT_BYTES,
                "renewal request",
            )?;
            let response = admin.post_raw("/admin/renewals", request)?;
            fsutil::write_atomic(
                &a.response_out,
                &response,
                fsutil::PUBLIC_MODE,
                Replace::Allowed,
            )
            .with_context(|| format!("cannot write {}", a.response_out.display()))?;
            let decision: Value = serde_json::from_slice::<Value>(&response)
                .ok()
                .and_then(|v| v["body"].as_object().map(|b| Value::Object(b.clone())))
                .map(|b| b["decision"].clone())
                .unwrap_or(Value::Null);
            println!(
                "wrote {} ({}); carry it to the node: leasehold renew --response {}",
                a.response_out.display(),
                decision["status"].as_str().unwrap_or("-"),
                a.response_out.display()
            );
        }
    }
    Ok(exit::OK)
}

fn print_application(detail: &ApplicationDetail) {
    let a = &detail.application;
    let f = &a.form;
    println!("application {}  [{}]", a.id, a.status);
    for (what, value) in [
        ("organization", a.org.clone()),
        ("model", f.model_id.clone()),
        ("nodes requested", f.nodes.to_string()),
        ("term requested", format!("{} days", f.term_days)),
        ("track", f.track.as_str().to_string()),
        ("use case", f.use_case.clone()),
        ("downstream apps", f.downstream_applications.clone()),
        ("data handling", f.data_handling.clone()),
        ("security", f.security_measures.clone()),
        ("fine-tuning data", f.fine_tuning_datasets.clone()),
        ("submitted", rfc3339(a.created_at)),
    ] {
        println!("  {what:18} {value}");
    }
    if let Some(e) = &detail.entitlement {
        println!(
            "  entitlement        {} ({} of {} nodes enrolled, until {})",
            e.id,
            e.enrolled,
            e.nodes,
            rfc3339(e.term_end)
        );
    }
    println!("  history");
    for e in &detail.history {
        println!(
            "    {}  {:18} {}{}",
            rfc3339(e.at),
            e.action,
            e.actor,
            if e.note.is_empty() {
                String::new()
            } else {
                format!(": {}", e.note)
            }
        );
    }
}

/// The history as CSV (RFC 4180: every field quoted, quotes doubled).
pub fn history_csv(history: &History) -> String {
    // Quoted, quotes doubled; a field a spreadsheet would take for a formula (an
    // organization writes the notes) starts with an apostrophe.
    let field = |text: &str| {
        let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{text}")
        } else {
            text.to_string()
        };
        format!("\"{}\"", text.replace('"', "\"\""))
    };
    let mut out = String::from("seq,at,application_id,org,actor,action,note\n");
    for e in &history.events {
        let fields = [
            e.seq.to_string(),
            rfc3339(e.at),
            e.application_id.clone(),
            e.org.clone(),
            e.actor.clone(),
            e.action.clone(),
            e.note.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}
