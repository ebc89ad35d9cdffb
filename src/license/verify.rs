//! The one verification path: license bytes in, a [`Verdict`] for this machine now out.
//!
//! Order matters and is fixed: authenticity first (format, signature chain to a
//! compiled-in root, issuer scope), then the machine (node keys, hardware), then time
//! (rollback, validity window, grace). The first failure is the verdict.

use chrono::{DateTime, Utc};

use super::body::LicenseBody;
use super::issuer::IssuerCertBody;
use super::roots::TrustRoots;
use super::KNOWN_FEATURES;
use crate::format::{BodyError, DocumentKind, Envelope};
use crate::node::hardware::{self, HardwareProfile};
use crate::node::trusted_time::{NodeStateBody, Remembered, TimeContext};
use crate::node::NodePublic;

/// The verdict on a license for this machine at this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid now.
    Valid {
        expires_at: DateTime<Utc>,
    },
    /// Expired, but within its grace period: serving continues with warnings.
    InGrace {
        expired_at: DateTime<Utc>,
        grace_ends: DateTime<Utc>,
    },
    NotYetValid {
        not_before: DateTime<Utc>,
    },
    Expired {
        grace_ended: DateTime<Utc>,
    },
    /// The system clock is behind time this node (or the license) has already seen.
    ClockRolledBack {
        now: DateTime<Utc>,
        trusted: DateTime<Utc>,
    },
    /// The node's trusted-time state is gone and this license is not newer than what
    /// the node recorded: it cannot tell how much time has passed.
    TrustedTimeLost {
        recorded: DateTime<Utc>,
        issued_at: DateTime<Utc>,
    },
    /// This node saw this license (this serial or a later renewal of it) lapse.
    Spent {
        serial: u64,
    },
    /// This node has admitted a later serial of this license.
    Superseded {
        serial: u64,
        newest: u64,
    },
    /// The license server revoked this license; this node remembers it.
    Revoked {
        license_id: String,
    },
    /// Issued to another node, or this machine's hardware does not match.
    WrongMachine {
        reason: String,
    },
    /// The file was altered, damaged, or is not a license.
    Tampered {
        reason: String,
    },
    /// Signed by a key that does not chain to a root compiled into this binary.
    UnknownIssuer {
        key_id: String,
    },
    /// Signed by a certified issuer acting outside its certificate.
    IssuerNotAuthorized {
        reason: String,
    },
    /// A format version, critical extension or mandated feature this build lacks.
    Unsupported {
        reason: String,
    },
}

impl Verdict {
    /// The verdict's stable name (JSON output, logs).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Valid { .. } => "valid",
            Verdict::InGrace { .. } => "in-grace",
            Verdict::NotYetValid { .. } => "not-yet-valid",
            Verdict::Expired { .. } => "expired",
            Verdict::ClockRolledBack { .. } => "clock-rolled-back",
            Verdict::TrustedTimeLost { .. } => "trusted-time-lost",
            Verdict::Spent { .. } => "spent",
            Verdict::Superseded { .. } => "superseded",
            Verdict::Revoked { .. } => "revoked",
            Verdict::WrongMachine { .. } => "wrong-machine",
            Verdict::Tampered { .. } => "tampered",
            Verdict::UnknownIssuer { .. } => "unknown-issuer",
            Verdict::IssuerNotAuthorized { .. } => "issuer-not-authorized",
            Verdict::Unsupported { .. } => "unsupported",
        }
    }

    /// Would a node serve under this verdict (valid, or in grace)?
    pub fn allows_serving(&self) -> bool {
        matches!(self, Verdict::Valid { .. } | Verdict::InGrace { .. })
    }

    /// One sentence: what happened and what to do.
    pub fn explain(&self, now: DateTime<Utc>) -> String {
        use crate::format::time::{human_duration, rfc3339};
        match self {
            Verdict::Valid { expires_at } => format!(
                "valid: expires {} (in {})",
                rfc3339(*expires_at),
                human_duration(*expires_at - now)
            ),
            Verdict::InGrace { expired_at, grace_ends } => format!(
                "in grace: expired {}, serving stops at {} (in {}); renew the license now",
                rfc3339(*expired_at),
                rfc3339(*grace_ends),
                human_duration(*grace_ends - now)
            ),
            Verdict::NotYetValid { not_before } => format!(
                "not yet valid: starts {} (in {})",
                rfc3339(*not_before),
                human_duration(*not_before - now)
            ),
            Verdict::Expired { grace_ended } => format!(
                "expired: serving ended {} ({} ago); ask the vendor for a renewal",
                rfc3339(*grace_ended),
                human_duration(now - *grace_ended)
            ),
            Verdict::ClockRolledBack { now, trusted } => format!(
                "clock rolled back: the system clock says {} but this node has already seen {}; set the clock right (NTP) and retry",
                rfc3339(*now),
                rfc3339(*trusted)
            ),
            Verdict::TrustedTimeLost { recorded, issued_at } => format!(
                "trusted time lost: this node's state.json was removed, and the license (issued {}) is not newer than this node's last recorded use ({}), so the node cannot tell how much time has passed; get a fresh license from the vendor or a renewal from the license server",
                rfc3339(*issued_at),
                rfc3339(*recorded)
            ),
            Verdict::Spent { serial } => format!(
                "expired: this node saw this license lapse (serial {serial}); it is never served again, whatever the clock says; ask the vendor for a renewal"
            ),
            Verdict::Superseded { serial, newest } => format!(
                "superseded: this node already admitted serial {newest} of this license, so serial {serial} is an older copy; use the newest license file"
            ),
            Verdict::Revoked { license_id } => format!(
                "revoked: the license server revoked license {license_id}; this node does not take it back. Ask the vendor"
            ),
            Verdict::WrongMachine { reason } => {
                format!("wrong machine: {reason}; licenses work only on the node they were issued to")
            }
            Verdict::Tampered { reason } => format!(
                "tampered: the license is damaged or was edited ({reason}); get a fresh copy from the vendor"
            ),
            Verdict::UnknownIssuer { key_id } => format!(
                "unknown issuer: signed by key {key_id}, which does not chain to a root trusted by this build"
            ),
            Verdict::IssuerNotAuthorized { reason } => {
                format!("issuer not authorized: {reason}")
            }
            Verdict::Unsupported { reason } => format!("unsupported: {reason}"),
        }
    }
}

/// Who signed a verified license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    Root {
        key_id: String,
        demo: bool,
    },
    Issuer {
        key_id: String,
        root_key_id: String,
        root_demo: bool,
        certificate: IssuerCertBody,
    },
}

impl Authority {
    pub fn is_demo(&self) -> bool {
        match self {
            Authority::Root { demo, .. } => *demo,
            Authority::Issuer { root_demo, .. } => *root_demo,
        }
    }
}

/// A license whose signature chain checked out (its verdict may still be negative).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedLicense {
    pub body: LicenseBody,
    pub authority: Authority,
}

impl VerifiedLicense {
    /// The key id of the key that signed the license (the root's or the issuer's).
    pub fn signer_key_id(&self) -> &str {
        match &self.authority {
            Authority::Root { key_id, .. } | Authority::Issuer { key_id, .. } => key_id,
        }
    }
}

/// What to check beyond authenticity. Leave `node` or `hardware` out to skip that check
/// (for example, a vendor inspecting a license on another machine).
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    pub node: Option<&'a NodePublic>,
    pub hardware: Option<&'a HardwareProfile>,
    pub time: TimeContext,
    /// What this node remembers about licenses (its signed state), when known.
    pub memory: Option<&'a NodeStateBody>,
}

/// The result of assessing a license.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Present whenever the signature chain verified.
    pub license: Option<VerifiedLicense>,
}

/// Assess license bytes: authenticate, then check machine and time.
pub fn assess(bytes: &[u8], roots: &TrustRoots, checks: &Checks) -> Assessment {
    match authenticate(bytes, roots) {
        Err(verdict) => Assessment {
            verdict,
            license: None,
        },
        Ok(license) => Assessment {
            verdict: evaluate(&license.body, checks),
            license: Some(license),
        },
    }
}

fn tampered(reason: impl ToString) -> Verdict {
    Verdict::Tampered {
        reason: reason.to_string(),
    }
}

fn body_verdict(e: BodyError) -> Verdict {
    match e {
        BodyError::UnsupportedVersion { .. } => Verdict::Unsupported {
            reason: e.to_string(),
        },
        BodyError::Malformed { .. } => tampered(e),
    }
}

/// Check format, signature chain and issuer scope.
pub fn authenticate(bytes: &[u8], roots: &TrustRoots) -> Result<VerifiedLicense, Verdict> {
    let envelope = Envelope::parse(bytes, DocumentKind::License).map_err(tampered)?;
    let (authority, certificate) = authenticate_signer(&envelope, roots)?;
    let body: LicenseBody = envelope.decode_body().map_err(body_verdict)?;
    // Out of range even when signed: no issuing path writes it, and time arithmetic on
    // it would overflow.
    super::body::check_grace(body.grace_seconds).map_err(|e| Verdict::Unsupported {
        reason: format!("the license's grace_seconds is out of range ({e}); ask the vendor for a corrected license"),
    })?;
    if let Some(cert) = certificate {
        cert.authorizes(&body)
            .map_err(|reason| Verdict::IssuerNotAuthorized { reason })?;
    }
    if let Some(ext) = body.extensions.iter().find(|e| e.critical) {
        return Err(Verdict::Unsupported {
            reason: format!("the license has critical extension '{}', which this build does not implement; upgrade leasehold", ext.name),
        });
    }
    if let Some(feature) = body
        .features
        .iter()
        .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
    {
        return Err(Verdict::Unsupported {
            reason: format!("the license mandates feature '{feature}', which this build does not implement; upgrade leasehold"),
        });
    }
    if let Some(reason) = safeguard_problem(&body).or_else(|| suite_problem(&body)) {
        return Err(Verdict::Unsupported { reason });
    }
    Ok(VerifiedLicense { body, authority })
}

/// The node's unwrap key is not a key of a suite this build knows, or a wrapped key
/// names another suite than the node's.
fn suite_problem(body: &LicenseBody) -> Option<String> {
    let node = match body.node.unwrap_public() {
        Ok(key) => key,
        Err(e) => return Some(format!("the license's node key cannot be used ({e}); upgrade leasehold, or ask the vendor for a corrected license")),
    };
    let wrapped = std::iter::once(("content", &body.content_key))
        .chain(body.watermark.as_ref().map(|w| ("watermark", &w.key)));
    let enc_len = match node {
        crate::crypto::key_wrap::UnwrapPublicKey::X25519(_) => 32,
        crate::crypto::key_wrap::UnwrapPublicKey::P256(_) => 65,
    };
    for (what, key) in wrapped {
        if key.encapsulated.len() != enc_len {
            return Some(format!(
                "the license's wrapped {what} key has a {}-byte encapsulated key; suite {:?} has {enc_len}; ask the vendor for a corrected license",
                key.encapsulated.len(),
                node.suite()
            ));
        }
        if key.suite != node.suite() {
            return Some(format!(
                "the license wraps its {what} key with suite {:?}, but its node's key is of suite {:?}; ask the vendor for a corrected license",
                key.suite,
                node.suite()
            ));
        }
    }
    None
}

/// A mandated watermark or filter this node could not apply as written. The node
/// refuses such a license rather than serve without the safeguard.
fn safeguard_problem(body: &LicenseBody) -> Option<String> {
    let listed = |f: &str| body.features.iter().any(|x| x == f);
    if let Err(e) = body.safeguard_terms().check() {
        return Some(format!(
            "the license's safeguards cannot be applied ({e}); ask the vendor for a corrected license"
        ));
    }
    for (feature, present) in [
        (super::FEATURE_WATERMARK, body.watermark.is_some()),
        (
            super::FEATURE_WATERMARK_TOURNAMENT,
            body.watermark
                .as_ref()
                .is_some_and(|w| matches!(w.params, crate::watermark::Params::Tournament(_))),
        ),
        (super::FEATURE_OUTPUT_FILTER, body.output_filter.is_some()),
    ] {
        if listed(feature) != present {
            return Some(format!("the license's feature list and its '{feature}' terms disagree; ask the vendor for a corrected license"));
        }
    }
    None
}

/// Check that an envelope's signer is a compiled-in root, or an issuer certified by one
/// (the chain holds exactly that certificate), and that the envelope's own signature
/// verifies. Scope is the caller's to check against the returned certificate. Used for
/// licenses and for the license server's signed responses.
pub fn authenticate_signer(
    envelope: &Envelope,
    roots: &TrustRoots,
) -> Result<(Authority, Option<IssuerCertBody>), Verdict> {
    let signer = envelope.signer_key().map_err(tampered)?;
    let found = match envelope.chain.as_slice() {
        [] => {
            let root = roots.find(&signer).ok_or_else(|| Verdict::UnknownIssuer {
                key_id: signer.key_id(),
            })?;
            (
                Authority::Root {
                    key_id: signer.key_id(),
                    demo: root.demo,
                },
                None,
            )
        }
        [cert] => {
            if cert.kind != DocumentKind::IssuerCertificate || !cert.chain.is_empty() {
                return Err(tampered(
                    "the certificate chain does not hold one issuer certificate",
                ));
            }
            let cert_signer = cert.signer_key().map_err(tampered)?;
            let root = roots
                .find(&cert_signer)
                .ok_or_else(|| Verdict::UnknownIssuer {
                    key_id: cert_signer.key_id(),
                })?;
            cert.verify_signature().map_err(tampered)?;
            let body: IssuerCertBody = cert.decode_body().map_err(body_verdict)?;
            if body.issuer_key != signer.to_bytes() {
                return Err(Verdict::UnknownIssuer {
                    key_id: signer.key_id(),
                });
            }
            (
                Authority::Issuer {
                    key_id: signer.key_id(),
                    root_key_id: cert_signer.key_id(),
                    root_demo: root.demo,
                    certificate: body.clone(),
                },
                Some(body),
            )
        }
        _ => {
            return Err(tampered(
                "the certificate chain is longer than one certificate",
            ))
        }
    };
    envelope.verify_signature().map_err(tampered)?;
    Ok(found)
}

/// Check an authenticated license against this machine and the time.
pub fn evaluate(license: &LicenseBody, checks: &Checks) -> Verdict {
    if let Some(node) = checks.node {
        if node.signing_key.to_bytes() != license.node.signing_key
            || license.node.unwrap_public().ok() != Some(node.unwrap_key)
        {
            return Verdict::WrongMachine {
                reason: format!(
                    "it was issued to node {}, and this node is {}",
                    license.node.node_id,
                    node.node_id()
                ),
            };
        }
    }
    if let Some(profile) = checks.hardware {
        let bound = &license.node.hardware;
        let report = hardware::compare(&bound.components, &bound.policy, profile, |kind, value| {
            hardware::license_hash(
                &bound.license_salt,
                &hardware::enrollment_hash(&bound.enrollment_salt, kind, value),
            )
        });
        if !report.passes() {
            return Verdict::WrongMachine {
                reason: format!(
                    "this machine's hardware does not match the license ({})",
                    report.describe()
                ),
            };
        }
    }
    let time = &checks.time;
    if time.state_missing {
        if let Some(recorded) = time.high_water.filter(|r| license.issued_at <= *r) {
            return Verdict::TrustedTimeLost {
                recorded,
                issued_at: license.issued_at,
            };
        }
    }
    if let Some(memory) = checks.memory {
        match memory.refuses(&license.license_id, license.serial) {
            Some(Remembered::Revoked) => {
                return Verdict::Revoked {
                    license_id: license.license_id.clone(),
                }
            }
            Some(Remembered::Superseded { newest }) => {
                return Verdict::Superseded {
                    serial: license.serial,
                    newest,
                }
            }
            Some(Remembered::Spent { serial }) => return Verdict::Spent { serial },
            None => {}
        }
    }
    if let Some(trusted) = time.rolled_back(Some(license.issued_at)) {
        return Verdict::ClockRolledBack {
            now: time.now,
            trusted,
        };
    }
    // Judged at the high-water mark when the clock is behind it (within the tolerance).
    let now = time.trusted_now(Some(license.issued_at));
    if now < license.not_before {
        Verdict::NotYetValid {
            not_before: license.not_before,
        }
    } else if now < license.expires_at {
        Verdict::Valid {
            expires_at: license.expires_at,
        }
    } else if now < license.grace_ends() {
        Verdict::InGrace {
            expired_at: license.expires_at,
            grace_ends: license.grace_ends(),
        }
    } else {
        Verdict::Expired {
            grace_ended: license.grace_ends(),
        }
    }
}
