//! The node's side of the license server protocol.
//!
//! - [`fetch_license`]: at start, get a license (waiting for the vendor's approval).
//! - [`ServerClient`]: renewal requests and checkpoint reports, verified answers.
//! - `super::renewer::Renewer` (with the inference runtime): renewal while serving.
//!
//! Every response is verified (`protocol::open_response`): signed by a trusted issuer in
//! scope, for this node, echoing this request's nonce. The license inside then goes
//! through the same admission as any license file.
//!
//! Renewals and the checkpoint reports between them (`super::checkpoints`) take turns
//! reporting the usage ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::random;
use crate::fsutil::{self, Replace};
use crate::license::TrustRoots;
use crate::node::trusted_time::{self, rollback_tolerance};
use crate::node::{clock, NodeIdentity};
use crate::protocol::{
    self, Decision, Expected, LicenseRef, OpenedResponse, RefusalReason, UsageCheckpoint,
};

/// A license server's HTTP endpoint.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
}

/// Talking to the license server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the license server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the license server answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
}

/// Environment variable naming a PEM file of extra CA certificates to trust for
/// `https://` license servers (a private CA, or a self-signed server certificate).
pub const TLS_CA_ENV: &str = "LEASEHOLD_TLS_CA";

/// The HTTP client for license server traffic (node and admin): rustls with the
/// system's roots, plus those in `$LEASEHOLD_TLS_CA`.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5));
    if let Some(path) = std::env::var_os(TLS_CA_ENV) {
        let path = PathBuf::from(path);
        let pem = fsutil::read_limited(&path, 1 << 20, "CA certificates")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "{} (from {TLS_CA_ENV}) holds no PEM certificates",
                path.display()
            )
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().context("cannot set up the HTTPS client")
}

/// The message of a license server's error answer (`{"error": {"message": …}}`), or the
/// start of the body when it is not one.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect())
}

impl ServerClient {
    pub fn new(base: &str) -> anyhow::Result<ServerClient> {
        Ok(ServerClient {
            http: http_client(Duration::from_secs(15))?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// POST a document; the response body on 2xx, the server's message otherwise.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.post_with(path, body, None).await
    }

    /// POST a large document (an audit answer) with a longer timeout than the client's.
    pub async fn post_slow(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        self.post_request(path, body, None, Some(timeout)).await
    }

    /// POST a document with a bearer token (an organization's enrollment token).
    pub async fn post_with(
        &self,
        path: &str,
        body: Vec<u8>,
        bearer: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        self.post_request(path, body, bearer, None).await
    }

    async fn post_request(
        &self,
        path: &str,
        body: Vec<u8>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        };
        let mut request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.body(body).send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClientError::Http {
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        Ok(bytes.to_vec())
    }

    /// Send a signed request and verify the signed response.
    pub async fn exchange(
        &self,
        identity: &NodeIdentity,
        model_id: &str,
        current: Option<(&LicenseRef, &str)>,
        usage: UsageCheckpoint,
    ) -> Result<OpenedResponse, ClientError> {
        let (request, nonce) = protocol::sign_request(
            identity,
            model_id,
            current.map(|(r, _)| r.clone()),
            usage,
            clock::system_now(),
        );
        let bytes = self
            .post("/v1/renewals", request.render().into_bytes())
            .await?;
        let node_id = identity.public().node_id();
        let opened = protocol::open_response(
            &bytes,
            &TrustRoots::compiled_in(),
            &Expected {
                node_id: &node_id,
                nonce,
                scope: current.map(|(_, org)| (org, model_id)),
            },
        )?;
        report_clock(&opened);
        Ok(opened)
    }
}

/// Warn (once per response) when this node's clock is far from the server's.
fn report_clock(opened: &OpenedResponse) {
    let offset = opened.clock_offset(clock::system_now());
    if offset.abs() > rollback_tolerance() {
        tracing::warn!(
            "this node's clock is {} s {} the license server's; fix the time (NTP): licenses are checked against this clock",
            offset.num_seconds().abs(),
            if offset.num_seconds() > 0 { "behind" } else { "ahead of" }
        );
    }
}

/// What a server answers to an enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub enrollment_id: String,
    pub status: String,
    pub new: bool,
}

/// Submit an enrollment document (blocking; for the `enroll` command).
/// Submit an enrollment, with the organization's enrollment token when there is one.
pub fn submit_enrollment(
    url: &str,
    document: Vec<u8>,
    token: Option<&str>,
) -> anyhow::Result<Submitted> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = ServerClient::new(url)?;
    let bytes = rt.block_on(client.post_with("/v1/enrollments", document, token))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Why no license could be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the license server refused ({}): {message}", reason.as_str())]
    Refused {
        reason: RefusalReason,
        message: String,
    },
    #[error("cannot write the license to {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Sleep about `d`, ±20 %, so a fleet does not renew in lockstep.
pub(super) async fn sleep_jittered(d: Duration) {
    let unit = u32::from_le_bytes(random::bytes::<4>()) as f64 / u32::MAX as f64;
    tokio::time::sleep(d.mul_f64(0.8 + 0.4 * unit)).await;
}

pub(super) fn write_license(path: &Path, license: &str) -> Result<(), FetchError> {
    fsutil::write_atomic(
        path,
        license.as_bytes(),
        fsutil::PUBLIC_MODE,
        Replace::Allowed,
    )
    .map_err(|e| FetchError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Get a license from the server into `path`, waiting for approval and retrying while
/// the server is unreachable. `current` names the license held (possibly expired).
pub async fn fetch_license(
    client: &ServerClient,
    identity: &NodeIdentity,
    model_id: &str,
    current: Option<(LicenseRef, String)>,
    path: &Path,
    poll: Duration,
) -> Result<String, FetchError> {
    let mut announced_wait = false;
    let mut failures = 0u32;
    loop {
        let scope = current.as_ref().map(|(r, org)| (r, org.as_str()));
        match client
            .exchange(identity, model_id, scope, UsageCheckpoint::default())
            .await
        {
            Ok(opened) => {
                failures = 0;
                match opened.body.decision {
                    Decision::Renewed { license } => {
                        // Signed in answer to this request's nonce: trusted time, and
                        // the only way back for a TPM node whose state was removed.
                        if let Err(e) =
                            trusted_time::observe_server_time(identity, opened.body.server_time)
                        {
                            tracing::warn!("cannot record the license server's time: {e}");
                        }
                        write_license(path, &license)?;
                        tracing::info!(
                            "license received from {} into {}",
                            client.url(),
                            path.display()
                        );
                        return Ok(license);
                    }
                    Decision::Pending {
                        enrollment_id,
                        message,
                    } => {
                        if !announced_wait {
                            tracing::info!(enrollment_id, "waiting for approval: {message}");
                            announced_wait = true;
                        }
                    }
                    Decision::Refused { reason, message } => {
                        return Err(FetchError::Refused { reason, message })
                    }
                }
                sleep_jittered(poll).await;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!("{e}; retrying");
                }
                sleep_jittered(backoff(failures, Duration::from_secs(30))).await;
            }
        }
    }
}

/// Exponential backoff from 1 s, capped.
pub(super) fn backoff(failures: u32, cap: Duration) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(16);
    Duration::from_secs(secs)
        .min(cap)
        .max(Duration::from_millis(500))
}
