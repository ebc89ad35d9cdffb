//! license-server and admin: the vendor's side of short leases.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{exit, AdminArgs, AdminCommand, LicenseServerArgs, ModelCommand, Outcome};
use crate::crypto::keyfile::{self, KeyKind};
use crate::format::time::{parse_duration, parse_instant, rfc3339};
use crate::fsutil::{self, Replace};
use crate::http_auth::read_admin_token;
use crate::license::Caps;
use crate::license_server::http::{self, ServerState};
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
struct Admin {
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

    fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(bool, Vec<u8>)> {
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

    fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .with_context(|| format!("'{}' is not a valid server URL", self.base))?;
        let (_, bytes) = self.send(self.http.get(url))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (_, bytes) = self.send(self.http.post(format!("{}{path}", self.base)).json(body))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let (_, bytes) = self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )?;
        Ok(bytes)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn admin(args: AdminArgs) -> Outcome {
    let admin = Admin::new(&args)?;
    let json_out = args.json;
    let print_json = |v: &Value| -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match args.command {
        AdminCommand::Model(ModelCommand::Add(a)) => {
            let sealed = SealedModel::open(&a.sealed)?;
            let key = keyfile::read(&a.content_key, KeyKind::ContentKey).with_context(|| {
                format!("cannot read the content key {}", a.content_key.display())
            })?;
            let b64 = base64::engine::general_purpose::STANDARD;
            let v = admin.post(
                "/admin/models",
                &json!({
                    "header": b64.encode(sealed.header().encode()),
                    "content_key": b64.encode(key.as_slice()),
                }),
            )?;
            if json_out {
                print_json(&v)?;
            } else {
                println!(
                    "model '{}' added (key id {}); its content key is stored encrypted",
                    s(&v["model_id"]),
                    s(&v["key_id"])
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
            };
            let mandated = request.safeguards.summary();
            let v = admin.post("/admin/entitlements", &serde_json::to_value(&request)?)?;
            if json_out {
                print_json(&v)?;
            } else {
                println!(
                    "entitlement {}: '{}' may run [{}] on {} node(s) until {}, leases of {} s + {} s grace; safeguards: {mandated}",
                    s(&v["id"]),
                    s(&v["org"]),
                    a.models.join(", "),
                    s(&v["nodes"]),
                    s(&v["term_end"]),
                    s(&v["lease_seconds"]),
                    s(&v["grace_seconds"])
                );
            }
        }
        AdminCommand::Entitlements => {
            let v = admin.get("/admin/entitlements", &[])?;
            if json_out {
                print_json(&v)?;
            } else {
                println!(
                    "{:16}  {:24} {:24} {:>11}  {:20}  lease",
                    "ID", "ORG", "MODELS", "ENROLLED", "TERM END"
                );
                for e in v["entitlements"].as_array().into_iter().flatten() {
                    println!(
                        "{:16}  {:24} {:24} {:>5} / {:<3}  {:20}  {} s + {} s{}",
                        s(&e["id"]),
                        s(&e["org"]),
                        e["models"]
                            .as_array()
                            .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        s(&e["enrolled"]),
                        s(&e["nodes"]),
                        s(&e["term_end"]),
                        s(&e["lease_seconds"]),
                        s(&e["grace_seconds"]),
                        if e["revoked_at"].is_null() {
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
            let v = admin.get("/admin/enrollments", &query)?;
            if json_out {
                print_json(&v)?;
            } else {
                let list = v["enrollments"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no {} enrollments", a.status);
                }
                for e in list {
                    println!("enrollment {}  [{}]", s(&e["id"]), s(&e["status"]));
                    println!("  node              {}", s(&e["node_id"]));
                    println!("  organization      {}", s(&e["org"]));
                    println!("  model             {}", s(&e["model_id"]));
                    println!("  submitted         {}", s(&e["created_at"]));
                    println!("  declared use      {}", s(&e["declared_use"]["use_case"]));
                    println!(
                        "  data handling     {}",
                        s(&e["declared_use"]["data_handling"])
                    );
                    println!(
                        "  security measures {}",
                        s(&e["declared_use"]["security_measures"])
                    );
                    println!("  hardware binding  {}", s(&e["hardware"]));
                    if !e["note"].is_null() {
                        println!("  note              {}", s(&e["note"]));
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
            let v = admin.post(
                &format!("/admin/enrollments/{}/{verb}", a.id),
                &json!({"note": a.note}),
            )?;
            if json_out {
                print_json(&v)?;
            } else {
                let e = &v["enrollment"];
                println!(
                    "enrollment {} {}: node {} of '{}' for model '{}'",
                    s(&e["id"]),
                    s(&e["status"]),
                    s(&e["node_id"]),
                    s(&e["org"]),
                    s(&e["model_id"])
                );
            }
        }
        AdminCommand::List => {
            let v = admin.get("/admin/licenses", &[])?;
            if json_out {
                print_json(&v)?;
            } else {
                println!(
                    "{:32}  {:16}  {:20} {:16} {:>7}  {:20}  status",
                    "LICENSE", "NODE", "ORG", "MODEL", "SERIAL", "EXPIRES"
                );
                for l in v["licenses"].as_array().into_iter().flatten() {
                    println!(
                        "{:32}  {:16}  {:20} {:16} {:>7}  {:20}  {}",
                        s(&l["license_id"]),
                        s(&l["node_id"]),
                        s(&l["org"]),
                        s(&l["model_id"]),
                        s(&l["serial"]),
                        s(&l["expires_at"]),
                        if l["revoked_at"].is_null() {
                            "active".to_string()
                        } else {
                            format!("revoked {} {}", s(&l["revoked_at"]), s(&l["revoke_reason"]))
                        }
                    );
                }
            }
        }
        AdminCommand::Revoke(a) => {
            let v = admin.post(
                "/admin/revoke",
                &json!({"license": a.license, "node": a.node, "org": a.org, "reason": a.reason}),
            )?;
            if json_out {
                print_json(&v)?;
            } else {
                println!(
                    "revoked {} license(s); nodes stop at their next renewal",
                    s(&v["revoked_licenses"])
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
            let v = admin.get("/admin/usage", &query)?;
            if json_out {
                print_json(&v)?;
            } else {
                println!("usage from {} to {}", s(&v["from"]), s(&v["to"]));
                println!(
                    "{:20} {:16} {:>9} {:>12} {:>12} {:>11}",
                    "ORG", "NODE", "REQUESTS", "PROMPT TOK", "OUTPUT TOK", "CHECKPOINTS"
                );
                let mut flagged = 0;
                for n in v["nodes"].as_array().into_iter().flatten() {
                    let findings = n["ledger_findings"].as_array().cloned().unwrap_or_default();
                    println!(
                        "{:20} {:16} {:>9} {:>12} {:>12} {:>11}{}",
                        s(&n["org"]),
                        s(&n["node_id"]),
                        s(&n["requests"]),
                        s(&n["prompt_tokens"]),
                        s(&n["completion_tokens"]),
                        s(&n["checkpoints"]),
                        if findings.is_empty() && n["went_backwards"] != json!(true) {
                            String::new()
                        } else {
                            flagged += 1;
                            "  LEDGER FLAGGED".to_string()
                        }
                    );
                    for f in &findings {
                        println!("    ! {}", s(f));
                    }
                }
                if flagged > 0 {
                    println!("{flagged} node(s) flagged: their usage ledger was replaced, went backwards or forked; ask the operator for the ledger and check it with `leasehold audit verify`");
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
                s(&decision["status"]),
                a.response_out.display()
            );
        }
    }
    Ok(exit::OK)
}
