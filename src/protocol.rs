//! The renewal protocol between nodes and license servers.
//!
//! Every message is a signed document (see `format::envelope`): a request is signed by
//! the node's key, a response by the issuer key with its root-signed certificate in the
//! chain. Plain HTTP therefore cannot forge or alter them; TLS adds privacy. A request
//! carries a fresh nonce that the response must echo, so a captured old response is
//! refused; a renewed license must also carry a higher serial than the one in force.
//!
//! The same messages travel as files for air-gapped sites (`leasehold renew
//! --request-out`, `leasehold admin renew`, `leasehold renew --response`).
//!
//! [`checkpoint`]: between renewals, the node reports its ledger position
//! (`checkpoint-report`) and the server answers with a signed `checkpoint-receipt`.

pub mod checkpoint;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::random;
use crate::crypto::signing::SecretKey;
use crate::format::encoding::{base64_array, hex_array};
use crate::format::{Body, DocumentKind, Envelope};
use crate::license::issuer::ANY;
use crate::license::verify::authenticate_signer;
use crate::license::{Authority, TrustRoots};
use crate::node::NodeIdentity;

/// The license a node holds now (absent when it asks for its first one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseRef {
    pub license_id: String,
    pub serial: u64,
}

/// Usage counters the node reports with each renewal: its ledger's totals since
/// `since` (the ledger's first record), and where its ledger stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageCheckpoint {
    pub since: Option<DateTime<Utc>>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Absent when the node had no ledger open (a first license fetched at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerPosition>,
    /// TPM nodes: the TPM counter of rolled-back node states the node refused. Set when
    /// the request or report is signed ([`sign_request`]); absent on file-key nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_rollbacks: Option<u64>,
}

impl UsageCheckpoint {
    /// On a TPM node, with the node's count of refused rolled-back states read from
    /// its TPM (left out when the TPM does not answer: the next report carries it). A
    /// file-key node's usage is returned as it is.
    pub fn with_rollbacks_of(mut self, identity: &NodeIdentity) -> UsageCheckpoint {
        if let Some(anchor) = identity.state_anchor() {
            self.tpm_rollbacks = anchor
                .rollbacks()
                .inspect_err(|e| {
                    tracing::warn!("cannot read the TPM's count of refused rolled-back states: {e}")
                })
                .ok();
        }
        self
    }
}

/// A signed checkpoint in the node's usage ledger, named so the license server can
/// compare it with the ones it received before (`admin usage` flags a ledger that was
/// replaced, went backwards or forked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerPosition {
    /// Hash of the ledger's genesis record: which ledger this is.
    #[serde(with = "hex_array")]
    pub ledger_id: [u8; 32],
    /// Sequence number and hash of the checkpoint the counters above come from.
    pub seq: u64,
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
    /// The last checkpoint a license server acknowledged, as the ledger records it.
    pub reported: Option<LedgerAnchor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerAnchor {
    pub seq: u64,
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
}

/// A renewal request, signed by the node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequestBody {
    pub version: u32,
    pub node_id: String,
    #[serde(with = "base64_array")]
    pub node_key: [u8; 32],
    /// The model the node serves (from its sealed file).
    pub model_id: String,
    pub license: Option<LicenseRef>,
    #[serde(with = "hex_array")]
    pub nonce: [u8; 16],
    /// The node's clock when it signed the request.
    pub sent_at: DateTime<Utc>,
    pub usage: UsageCheckpoint,
}

impl Body for RenewalRequestBody {
    const KIND: DocumentKind = DocumentKind::RenewalRequest;
    const VERSION: u32 = 1;
}

/// Why a license server will not renew. The node obeys: `revoked` lapses at once,
/// `ended` at the end of the current lease, the others keep the node from starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    /// The license, node or organization was revoked.
    Revoked,
    /// The entitlement's term is over (or it was withdrawn).
    Ended,
    /// The enrollment was denied by the vendor.
    Denied,
    /// The server knows no enrollment for this node (enroll with --server first).
    UnknownNode,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Revoked => "revoked",
            RefusalReason::Ended => "ended",
            RefusalReason::Denied => "denied",
            RefusalReason::UnknownNode => "unknown-node",
        }
    }
}

/// What the server decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Decision {
    /// A new license (the full license document text).
    Renewed { license: String },
    /// The enrollment waits for approval.
    Pending {
        enrollment_id: String,
        message: String,
    },
    Refused {
        reason: RefusalReason,
        message: String,
    },
}

/// A renewal response, signed by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalResponseBody {
    pub version: u32,
    pub node_id: String,
    /// The request's nonce, echoed: binds this response to one request.
    #[serde(with = "hex_array")]
    pub request_nonce: [u8; 16],
    /// The server's clock when it answered.
    pub server_time: DateTime<Utc>,
    pub decision: Decision,
    /// The vendor asks this node for its ledger records of a period (a renewed license
    /// only; absent otherwise). The node answers with an audit answer
    /// (`POST /v1/audits/answer`) once it holds a signed checkpoint dated at or after `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditCall>,
}

/// An audit the vendor requested: the node's ledger records dated in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCall {
    pub audit_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Body for RenewalResponseBody {
    const KIND: DocumentKind = DocumentKind::RenewalResponse;
    const VERSION: u32 = 1;
}

/// An issuer-signed answer to one signed node request: it names the node, echoes the
/// request's nonce, and says when the server made it.
pub trait Answer: Body {
    fn node_id(&self) -> &str;
    fn request_nonce(&self) -> [u8; 16];
    fn server_time(&self) -> DateTime<Utc>;
}

impl Answer for RenewalResponseBody {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn request_nonce(&self) -> [u8; 16] {
        self.request_nonce
    }
    fn server_time(&self) -> DateTime<Utc> {
        self.server_time
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a valid {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("the {0} is not signed by the node key it names")]
    WrongSigner(&'static str),
    #[error("the response is not signed by a trusted issuer: {0}")]
    Untrusted(String),
    #[error("the response is for node {found}, not this node ({expected})")]
    WrongNode { expected: String, found: String },
    #[error("the response does not answer this request (nonce mismatch): a replayed or misdirected response")]
    Replayed,
    #[error("the response's issuer is out of scope: {0}")]
    OutOfScope(String),
}

impl ProtocolError {
    /// The failure's name in docs/FORMATS.md ("Verifying a renewal response").
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Malformed { .. } => "malformed",
            ProtocolError::WrongSigner(_) => "wrong-signer",
            ProtocolError::Untrusted(_) => "untrusted",
            ProtocolError::WrongNode { .. } => "wrong-node",
            ProtocolError::Replayed => "replayed",
            ProtocolError::OutOfScope(_) => "out-of-scope",
        }
    }
}

/// Sign a renewal request with the node key. Returns the document and its nonce.
pub fn sign_request(
    identity: &NodeIdentity,
    model_id: &str,
    license: Option<LicenseRef>,
    usage: UsageCheckpoint,
    now: DateTime<Utc>,
) -> (Envelope, [u8; 16]) {
    let nonce = random::bytes::<16>();
    sign_request_with_nonce(identity, model_id, license, usage, now, nonce)
}

/// [`sign_request`] with a nonce the caller made (unique and unpredictable: a TPM node
/// renewing by file binds its first 8 bytes to its TPM counter).
pub fn sign_request_with_nonce(
    identity: &NodeIdentity,
    model_id: &str,
    license: Option<LicenseRef>,
    usage: UsageCheckpoint,
    now: DateTime<Utc>,
    nonce: [u8; 16],
) -> (Envelope, [u8; 16]) {
    let public = identity.public();
    let body = RenewalRequestBody {
        version: RenewalRequestBody::VERSION,
        node_id: public.node_id(),
        node_key: public.signing_key.to_bytes(),
        model_id: model_id.to_string(),
        license,
        nonce,
        sent_at: crate::format::time::whole_seconds(now),
        usage: usage.with_rollbacks_of(identity),
    };
    (Envelope::sign(&body, identity.signer(), vec![]), nonce)
}

/// Parse a request without trusting it yet: the server looks up the node's enrolled
/// key by the body's node id, then calls [`verify_request`].
pub fn parse_request(bytes: &[u8]) -> Result<(Envelope, RenewalRequestBody), ProtocolError> {
    parse_node_signed(bytes, "renewal request")
}

/// Parse a node-signed document of kind `B` strictly, not trusting it yet; `what` names
/// it in the error.
pub(crate) fn parse_node_signed<B: Body>(
    bytes: &[u8],
    what: &'static str,
) -> Result<(Envelope, B), ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed { what, reason };
    let envelope = Envelope::parse(bytes, B::KIND).map_err(|e| malformed(e.to_string()))?;
    let body: B = envelope
        .decode_body()
        .map_err(|e| malformed(e.to_string()))?;
    Ok((envelope, body))
}

/// Check a parsed request against the node key the server enrolled.
pub fn verify_request(
    envelope: &Envelope,
    body: &RenewalRequestBody,
    enrolled_key: &[u8; 32],
) -> Result<(), ProtocolError> {
    verify_node_signed(envelope, &body.node_key, enrolled_key)
}

/// A node-signed document (renewal request, checkpoint report) is signed by the key
/// its body names, and that key is the one the server enrolled.
pub(crate) fn verify_node_signed(
    envelope: &Envelope,
    named_key: &[u8; 32],
    enrolled_key: &[u8; 32],
) -> Result<(), ProtocolError> {
    let wrong = || ProtocolError::WrongSigner(envelope.kind.name());
    if envelope.signer != *enrolled_key || named_key != enrolled_key {
        return Err(wrong());
    }
    envelope.verify_signature().map_err(|_| wrong())?;
    Ok(())
}

/// Sign a response with the issuer key (its certificate rides in the chain).
pub fn sign_response(
    issuer: &SecretKey,
    certificate: Option<&Envelope>,
    body: &RenewalResponseBody,
) -> Envelope {
    Envelope::sign(body, issuer, certificate.cloned().into_iter().collect())
}

/// What the node expects of a response.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub node_id: &'a str,
    pub nonce: [u8; 16],
    /// The organization and model of the license in force, when there is one: the
    /// issuer's certificate must cover them.
    pub scope: Option<(&'a str, &'a str)>,
}

/// A response that checked out.
#[derive(Debug, Clone)]
pub struct OpenedResponse {
    pub body: RenewalResponseBody,
    pub authority: Authority,
}

impl OpenedResponse {
    /// Server clock minus node clock (positive: the node is behind).
    pub fn clock_offset(&self, now: DateTime<Utc>) -> Duration {
        self.body.server_time - now
    }
}

/// Verify a response: signed by a trusted root or an issuer certified by one, within
/// the certificate's scope and validity, for this node, answering this request.
pub fn open_response(
    bytes: &[u8],
    roots: &TrustRoots,
    expected: &Expected,
) -> Result<OpenedResponse, ProtocolError> {
    let (body, authority) = open_answer::<RenewalResponseBody>(bytes, roots, expected)?;
    Ok(OpenedResponse { body, authority })
}

/// Verify any issuer-signed answer ([`Answer`]) the way [`open_response`] describes.
pub fn open_answer<A: Answer>(
    bytes: &[u8],
    roots: &TrustRoots,
    expected: &Expected,
) -> Result<(A, Authority), ProtocolError> {
    let malformed = |reason: String| ProtocolError::Malformed {
        what: A::KIND.name(),
        reason,
    };
    let envelope = Envelope::parse(bytes, A::KIND).map_err(|e| malformed(e.to_string()))?;
    let (authority, certificate) = authenticate_signer(&envelope, roots)
        .map_err(|v| ProtocolError::Untrusted(v.explain(crate::node::clock::system_now())))?;
    let body: A = envelope
        .decode_body()
        .map_err(|e| malformed(e.to_string()))?;
    if body.node_id() != expected.node_id {
        return Err(ProtocolError::WrongNode {
            expected: expected.node_id.to_string(),
            found: body.node_id().to_string(),
        });
    }
    if body.request_nonce() != expected.nonce {
        return Err(ProtocolError::Replayed);
    }
    if let Some(cert) = certificate {
        let made = body.server_time();
        if made < cert.not_before || made > cert.not_after {
            return Err(ProtocolError::OutOfScope(format!(
                "the issuer certificate is valid from {} to {}, and the response was made at {made}",
                cert.not_before, cert.not_after
            )));
        }
        if let Some((org, model)) = expected.scope {
            let covers = |list: &[String], item: &str| list.iter().any(|x| x == ANY || x == item);
            if !covers(&cert.orgs, org) || !covers(&cert.models, model) {
                return Err(ProtocolError::OutOfScope(format!(
                    "the issuer is certified for organizations [{}] and models [{}], not '{org}' / '{model}'",
                    cert.orgs.join(", "),
                    cert.models.join(", ")
                )));
            }
        }
    }
    Ok((body, authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyfile;
    use crate::license::issue::certify;
    use crate::license::IssuerCertBody;
    use crate::node::clock;

    fn demo_root() -> SecretKey {
        keyfile::read_secret_key(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
        )
        .unwrap()
    }

    fn issuer(orgs: &[&str], valid_days: i64) -> (SecretKey, Envelope) {
        let key = SecretKey::generate();
        let now = crate::format::time::whole_seconds(clock::system_now());
        let cert = certify(
            &demo_root(),
            &IssuerCertBody {
                version: 1,
                issuer_key: key.public_key().to_bytes(),
                orgs: orgs.iter().map(|s| s.to_string()).collect(),
                models: vec!["m".into()],
                not_before: now - Duration::days(10),
                not_after: now + Duration::days(valid_days),
                max_lease_seconds: 3600,
            },
        )
        .unwrap();
        (key, cert)
    }

    fn response(key: &SecretKey, cert: Option<&Envelope>, node: &str, nonce: [u8; 16]) -> String {
        sign_response(
            key,
            cert,
            &RenewalResponseBody {
                version: 1,
                node_id: node.into(),
                request_nonce: nonce,
                server_time: crate::format::time::whole_seconds(clock::system_now()),
                decision: Decision::Refused {
                    reason: RefusalReason::Revoked,
                    message: "test".into(),
                },
                audit: None,
            },
        )
        .render()
    }

    fn open(text: &str, nonce: [u8; 16]) -> Result<OpenedResponse, ProtocolError> {
        open_response(
            text.as_bytes(),
            &TrustRoots::compiled_in(),
            &Expected {
                node_id: "n1",
                nonce,
                scope: Some(("Org", "m")),
            },
        )
    }

    #[test]
    fn a_response_in_scope_for_this_request_is_accepted() {
        let (key, cert) = issuer(&["Org"], 30);
        let opened = open(&response(&key, Some(&cert), "n1", [1; 16]), [1; 16]).unwrap();
        assert!(matches!(opened.body.decision, Decision::Refused { .. }));
    }

    #[test]
    fn replayed_forged_misdirected_and_out_of_scope_responses_are_refused() {
        let (key, cert) = issuer(&["Org"], 30);
        let good = response(&key, Some(&cert), "n1", [1; 16]);
        assert_eq!(open(&good, [2; 16]).unwrap_err(), ProtocolError::Replayed);
        let other_node = response(&key, Some(&cert), "n2", [1; 16]);
        assert!(matches!(
            open(&other_node, [1; 16]),
            Err(ProtocolError::WrongNode { .. })
        ));
        let mut flipped: serde_json::Value = serde_json::from_str(&good).unwrap();
        let sig = flipped["signature"].as_str().unwrap().to_string();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        flipped["signature"] = format!("{first}{}", &sig[1..]).into();
        let mut text = serde_json::to_string_pretty(&flipped).unwrap();
        text.push('\n');
        assert!(matches!(
            open(&text, [1; 16]),
            Err(ProtocolError::Untrusted(_))
        ));
        // Not certified by a trusted root.
        let uncertified = response(&SecretKey::generate(), None, "n1", [1; 16]);
        assert!(matches!(
            open(&uncertified, [1; 16]),
            Err(ProtocolError::Untrusted(_))
        ));
        // Certified for another organization.
        let (key, cert) = issuer(&["Someone Else"], 30);
        let other_org = response(&key, Some(&cert), "n1", [1; 16]);
        assert!(matches!(
            open(&other_org, [1; 16]),
            Err(ProtocolError::OutOfScope(_))
        ));
        // Certificate expired before the response was made.
        let (key, cert) = issuer(&["Org"], -1);
        let expired = response(&key, Some(&cert), "n1", [1; 16]);
        assert!(matches!(
            open(&expired, [1; 16]),
            Err(ProtocolError::OutOfScope(_))
        ));
    }
}
