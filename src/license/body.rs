//! The license body: what a license grants, to which node, for which model, until when.
//! Field by field in docs/FORMATS.md.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::key_wrap::{UnwrapPublicKey, WrappedKey};
use crate::format::encoding::{base64_array, base64_vec, hex_array, Digest};
use crate::format::{Body, DocumentKind};
use crate::node::hardware::{BoundComponent, MatchPolicy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseBody {
    pub version: u32,
    /// 32 hex digits, random.
    pub license_id: String,
    /// Monotonic per node: a lower serial never replaces a higher one.
    pub serial: u64,
    pub licensee: String,
    pub issued_at: DateTime<Utc>,
    pub not_before: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Seconds after `expires_at` during which the node keeps serving, warning.
    pub grace_seconds: u64,
    pub node: NodeBinding,
    pub model: ModelBinding,
    pub caps: Caps,
    /// Features the node must enforce (refused when the build does not implement one).
    pub features: Vec<String>,
    /// License server URLs for renewal.
    pub renewal: Vec<String>,
    pub content_key: WrappedContentKey,
    /// A watermark the node must put into everything it generates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkMandate>,
    /// Rules the node must apply to generated text before any of it leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_filter: Option<FilterRules>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
}

impl Body for LicenseBody {
    const KIND: DocumentKind = DocumentKind::License;
    const VERSION: u32 = 1;
}

/// The longest grace a license may carry: ten years (of 366 days). Far beyond any real
/// term, and small enough that no time a license holds overflows when it is added.
/// Issuing, `admin entitle` and verification all refuse more ([`check_grace`]).
pub const MAX_GRACE_SECONDS: u64 = 10 * 366 * 86_400;

/// A grace period too long for a license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a grace of {seconds} s is longer than the {max} s (10 years) a license may carry", max = MAX_GRACE_SECONDS)]
pub struct GraceTooLong {
    pub seconds: u64,
}

/// Is `seconds` a grace a license may carry? The one rule for issue, entitle and verify.
pub fn check_grace(seconds: u64) -> Result<(), GraceTooLong> {
    if seconds > MAX_GRACE_SECONDS {
        return Err(GraceTooLong { seconds });
    }
    Ok(())
}

impl LicenseBody {
    /// The grace period. Verification refuses a grace above [`MAX_GRACE_SECONDS`]; on a
    /// body that was never verified this saturates instead of panicking.
    pub fn grace(&self) -> Duration {
        i64::try_from(self.grace_seconds)
            .ok()
            .and_then(Duration::try_seconds)
            .unwrap_or(Duration::MAX)
    }

    /// When serving must stop: expiry plus grace.
    pub fn grace_ends(&self) -> DateTime<Utc> {
        self.expires_at
            .checked_add_signed(self.grace())
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The HPKE info binding the wrapped content key.
    pub fn key_binding_info(&self) -> Vec<u8> {
        crate::crypto::key_wrap::binding_info(&self.license_id, &self.model.model_id)
    }

    /// The mandated safeguards in words: "watermark (gamma 0.25, delta 2, context 1),
    /// output filter (1 term, 2 patterns)", or "none".
    pub fn safeguards_summary(&self) -> String {
        self.safeguard_terms().summary()
    }

    /// The mandated watermark parameters and filter rules (without the wrapped key).
    pub fn safeguard_terms(&self) -> crate::license::issue::Safeguards {
        crate::license::issue::Safeguards {
            watermark: self.watermark.as_ref().map(|w| w.params),
            output_filter: self.output_filter.clone(),
        }
    }

    /// The mandated safeguards as JSON (parameters and rule counts, not the key).
    pub fn safeguards_json(&self) -> serde_json::Value {
        serde_json::json!({
            "watermark": self.watermark.as_ref().map(|w| w.params.json()),
            "output_filter": self.output_filter.as_ref().map(|f| serde_json::json!({"terms": f.terms.len(), "patterns": f.patterns.len()})),
        })
    }

    /// The content key, unwrapped with the node's unwrap key.
    pub fn unwrap_content_key(
        &self,
        unwrapper: &dyn crate::crypto::key_wrap::KeyUnwrapper,
    ) -> Result<crate::crypto::ContentKey, crate::crypto::key_wrap::UnwrapError> {
        crate::crypto::key_wrap::unwrap(
            unwrapper,
            &self.key_binding_info(),
            &self.content_key.to_wrapped(),
        )
    }

    /// The HPKE info binding the wrapped watermark key.
    pub fn watermark_binding_info(&self) -> Vec<u8> {
        crate::crypto::key_wrap::watermark_binding_info(&self.license_id, &self.model.model_id)
    }
}

/// The node a license is for: its keys and its hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeBinding {
    pub node_id: String,
    #[serde(with = "base64_array")]
    pub signing_key: [u8; 32],
    /// The node's unwrap key: 32 bytes (X25519) or, with `unwrap_suite`, a 65-byte P-256
    /// point. Read it with [`NodeBinding::unwrap_public`].
    #[serde(with = "base64_vec")]
    pub unwrap_key: Vec<u8>,
    /// Omitted for X25519 nodes; the P-256 suite for TPM nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwrap_suite: Option<String>,
    pub hardware: LicenseHardware,
}

impl NodeBinding {
    /// The node's unwrap key, checked against its suite.
    pub fn unwrap_public(&self) -> Result<UnwrapPublicKey, String> {
        UnwrapPublicKey::from_parts(self.unwrap_suite.as_deref(), &self.unwrap_key)
    }
}

/// Hardware bound by a license: the enrollment's hashes re-hashed under a license salt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseHardware {
    #[serde(with = "hex_array")]
    pub enrollment_salt: [u8; 16],
    #[serde(with = "hex_array")]
    pub license_salt: [u8; 16],
    pub components: Vec<BoundComponent>,
    pub policy: MatchPolicy,
}

/// The model a license is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBinding {
    pub model_id: String,
    /// SHA-256 of the sealed file's header; the header digest authenticates every
    /// segment, so this binds the whole sealed file.
    pub sealed_header_sha256: Digest,
    pub plaintext_sha256: Digest,
    pub plaintext_len: u64,
    #[serde(with = "hex_array")]
    pub key_id: [u8; 16],
}

/// Usage caps (enforced by the runtime from its usage ledger).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<u64>,
}

impl Caps {
    /// Set one cap from `name=value` (`requests-per-day=1000`).
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("cap '{spec}' is not NAME=VALUE"))?;
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("cap '{spec}': '{value}' is not a whole number"))?;
        let slot = match name.trim() {
            "requests-per-day" => &mut self.requests_per_day,
            "requests-per-month" => &mut self.requests_per_month,
            "tokens-per-day" => &mut self.tokens_per_day,
            "tokens-per-month" => &mut self.tokens_per_month,
            "concurrent" => &mut self.concurrent,
            "context" => &mut self.context,
            other => {
                return Err(format!(
                    "unknown cap '{other}' (known: requests-per-day, requests-per-month, tokens-per-day, tokens-per-month, concurrent, context)"
                ))
            }
        };
        *slot = Some(value);
        Ok(())
    }

    /// `(name, value)` for every cap set.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        [
            ("requests-per-day", self.requests_per_day),
            ("requests-per-month", self.requests_per_month),
            ("tokens-per-day", self.tokens_per_day),
            ("tokens-per-month", self.tokens_per_month),
            ("concurrent", self.concurrent),
            ("context", self.context),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }
}

/// The model's content key, wrapped to the node (HPKE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedContentKey {
    /// The HPKE suite: the node's ([`UnwrapPublicKey::suite`]).
    pub suite: String,
    /// 32 bytes (X25519) or a 65-byte uncompressed point (P-256).
    #[serde(with = "base64_vec")]
    pub encapsulated: Vec<u8>,
    #[serde(with = "base64_vec")]
    pub ciphertext: Vec<u8>,
}

impl WrappedContentKey {
    /// A key wrapped to `recipient`, labelled with its suite.
    pub fn from_wrapped(recipient: &UnwrapPublicKey, wrapped: WrappedKey) -> Self {
        WrappedContentKey {
            suite: recipient.suite().to_string(),
            encapsulated: wrapped.encapsulated,
            ciphertext: wrapped.ciphertext,
        }
    }

    pub fn to_wrapped(&self) -> WrappedKey {
        WrappedKey {
            encapsulated: self.encapsulated.clone(),
            ciphertext: self.ciphertext.clone(),
        }
    }
}

/// The watermark a license mandates: the scheme and its parameters (`watermark::Params`)
/// and the secret that keys it, wrapped to the node like the content key (HPKE, `info`
/// = `leasehold watermark key v1\0` ‖ license id ‖ 0 ‖ model id). On the wire the
/// parameters' fields come first, then `key` (FORMATS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MandateFields", into = "MandateFields")]
pub struct WatermarkMandate {
    pub params: crate::watermark::Params,
    pub key: WrappedContentKey,
}

/// `watermark::Fields` and `key`, in the license's order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MandateFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gamma: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depth: Option<u32>,
    context: u32,
    key: WrappedContentKey,
}

impl TryFrom<MandateFields> for WatermarkMandate {
    type Error = String;

    fn try_from(m: MandateFields) -> Result<WatermarkMandate, String> {
        let fields = crate::watermark::Fields {
            scheme: m.scheme,
            gamma: m.gamma,
            delta: m.delta,
            depth: m.depth,
            context: m.context,
        };
        Ok(WatermarkMandate {
            params: fields.try_into()?,
            key: m.key,
        })
    }
}

impl From<WatermarkMandate> for MandateFields {
    fn from(w: WatermarkMandate) -> MandateFields {
        let f = crate::watermark::Fields::from(w.params);
        MandateFields {
            scheme: f.scheme,
            gamma: f.gamma,
            delta: f.delta,
            depth: f.depth,
            context: f.context,
            key: w.key,
        }
    }
}

/// Output filter rules a license mandates: literal terms (matched ignoring case) and
/// regular expressions of bounded length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

impl FilterRules {
    /// Read a rules file:
    ///
    /// ```toml
    /// terms = ["Project Albatross", "internal use only"]
    /// patterns = ['\b\d{3}-\d{2}-\d{4}\b']
    /// ```
    pub fn parse_toml(text: &str) -> Result<FilterRules, String> {
        let doc = toml_edit::Document::parse(text).map_err(|e| e.to_string())?;
        let mut rules = FilterRules::default();
        for (key, item) in doc.as_table().iter() {
            let list = match key {
                "terms" => &mut rules.terms,
                "patterns" => &mut rules.patterns,
                other => {
                    return Err(format!(
                        "unknown key '{other}' (a rules file has `terms` and `patterns`)"
                    ))
                }
            };
            let array = item
                .as_array()
                .ok_or_else(|| format!("`{key}` must be an array of strings"))?;
            for value in array.iter() {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("`{key}` must be an array of strings"))?;
                list.push(text.to_string());
            }
        }
        if rules.terms.is_empty() && rules.patterns.is_empty() {
            return Err("the rules file has no terms and no patterns".into());
        }
        Ok(rules)
    }
}

/// A forward-compatible addition. A node that does not know a critical extension
/// refuses the license; a non-critical one is shown and otherwise ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    pub name: String,
    pub critical: bool,
    pub value: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::FilterRules;

    #[test]
    fn a_malformed_rules_file_is_an_error_not_a_panic() {
        // Found by fuzzing (filter_rules): toml_edit 0.23 panicked ("all items have
        // spans") on this table header; 0.25 reports it.
        let text = "==  \nine=\n  [ 1\0\0\nns = = ]\u{1}\0\0\0\0rsm =\n  [ ..\0\u{6}\", \"end$\", \"\0\\\\";
        assert!(FilterRules::parse_toml(text).is_err());
        assert!(crate::cli::config::parse(text).is_err());
    }
}
