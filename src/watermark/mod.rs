//! Text watermarks a license can mandate, one seam for both schemes.
//!
//! - [`kgw`]: Kirchenbauer et al. 2023. A keyed green list (fraction γ of the
//!   vocabulary, seeded by the previous tokens) gets δ added to its logits. Easy to
//!   detect, but it changes the model's distribution: the fixed-text perplexity rises.
//! - [`tournament`]: SynthID-Text's tournament sampling (Dathathri et al., Nature 2024).
//!   Keyed pseudo-random bits (g-values) of every candidate token run a knockout
//!   tournament over the request's own distribution; averaged over keys the next-token
//!   distribution is exactly the model's, so no quality is lost, and the detector's
//!   score has an exact null distribution (a binomial).
//!
//! The engine asks [`Params`] how many previous tokens seed a step, derives the step's
//! seed with [`WatermarkKey::step_seed`], and applies the scheme: [`kgw::bias`] on the
//! logits, or [`tournament::reweight`] on the sampling weights. [`detect`] scores a token
//! sequence under a key for either. Which licenses mandate a watermark, and where its key
//! comes from, is the license's business.

pub mod kgw;
pub mod stats;
pub mod tournament;

use zeroize::Zeroizing;

use crate::crypto::sha256;
use crate::crypto::signing::SecretKey;

pub use kgw::Kgw;
pub use tournament::Tournament;

const KEY_TAG: &[u8] = b"leasehold watermark key v1\0";

/// A watermark scheme and its parameters, as a license mandates them: the one type
/// for the license body, the license server's entitlements and the engine.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Fields", into = "Fields")]
pub enum Params {
    Kgw(Kgw),
    Tournament(Tournament),
}

/// The parameters as the license's `watermark` object spells them (FORMATS.md): `scheme`
/// omitted means `kgw`, whose fields (`gamma`, `delta`, `context`) predate the scheme
/// tag; `tournament` has `depth` and `context`. Only the fields of the named scheme may
/// appear. Ranges are checked by [`Params::check`], not here: a license with parameters
/// out of range parses, and verification refuses it as unsupported.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    pub context: u32,
}

/// The scheme names, as `scheme` spells them.
pub const SCHEME_KGW: &str = "kgw";
pub const SCHEME_TOURNAMENT: &str = "tournament";

impl TryFrom<Fields> for Params {
    type Error = String;

    fn try_from(f: Fields) -> Result<Params, String> {
        match (f.scheme.as_deref(), f.gamma, f.delta, f.depth) {
            (None, Some(gamma), Some(delta), None) => Ok(Params::Kgw(Kgw {
                gamma,
                delta,
                context: f.context,
            })),
            (Some(SCHEME_TOURNAMENT), None, None, Some(depth)) => {
                Ok(Params::Tournament(Tournament {
                    depth,
                    context: f.context,
                }))
            }
            (Some(SCHEME_TOURNAMENT), ..) => {
                Err("a tournament watermark has exactly depth and context".into())
            }
            (None, ..) => Err("a kgw watermark has exactly gamma, delta and context".into()),
            // `kgw` is never written: its licenses predate the tag.
            (Some(other), ..) => Err(format!(
                "unknown watermark scheme '{other}' (kgw is written without a scheme, or tournament)"
            )),
        }
    }
}

impl From<Params> for Fields {
    fn from(p: Params) -> Fields {
        match p {
            Params::Kgw(k) => Fields {
                scheme: None,
                gamma: Some(k.gamma),
                delta: Some(k.delta),
                depth: None,
                context: k.context,
            },
            Params::Tournament(t) => Fields {
                scheme: Some(SCHEME_TOURNAMENT.into()),
                gamma: None,
                delta: None,
                depth: Some(t.depth),
                context: t.context,
            },
        }
    }
}

impl Params {
    /// Parse the CLI's and the portal's spelling: `scheme=tournament,depth=8,context=2`,
    /// or `[scheme=kgw,]gamma=0.25,delta=2.0[,context=1]`.
    pub fn parse(text: &str) -> Result<Params, String> {
        let mut pairs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not NAME=VALUE"))?;
            pairs.push((k.trim(), v.trim()));
        }
        let scheme = pairs
            .iter()
            .find(|(k, _)| *k == "scheme")
            .map_or(SCHEME_KGW, |(_, v)| *v);
        let rest = pairs.into_iter().filter(|(k, _)| *k != "scheme");
        let params = match scheme {
            SCHEME_KGW => Params::Kgw(Kgw::parse(rest)?),
            SCHEME_TOURNAMENT => Params::Tournament(Tournament::parse(rest)?),
            other => {
                return Err(format!(
                    "unknown watermark scheme '{other}' (kgw or tournament)"
                ))
            }
        };
        params.check()?;
        Ok(params)
    }

    /// Could a node apply these?
    pub fn check(&self) -> Result<(), String> {
        match self {
            Params::Kgw(k) => k.check(),
            Params::Tournament(t) => t.check(),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Params::Kgw(_) => SCHEME_KGW,
            Params::Tournament(_) => SCHEME_TOURNAMENT,
        }
    }

    /// How many previous tokens seed each step.
    pub fn context(&self) -> usize {
        match self {
            Params::Kgw(k) => k.context as usize,
            Params::Tournament(t) => t.context as usize,
        }
    }

    /// In words: "gamma 0.25, delta 2, context 1" or "tournament, depth 8, context 2".
    pub fn describe(&self) -> String {
        match self {
            Params::Kgw(k) => format!(
                "gamma {}, delta {}, context {}",
                k.gamma, k.delta as f32, k.context
            ),
            Params::Tournament(t) => {
                format!("tournament, depth {}, context {}", t.depth, t.context)
            }
        }
    }

    /// The parameters as JSON, for `--json` outputs (the license's spelling plus the
    /// scheme's name, always).
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(Fields::from(*self)).expect("plain fields");
        v["scheme"] = self.scheme().into();
        v
    }

    /// The parameters as a license issued by leasehold writes them: KGW's δ as the
    /// double of a single-precision value (what the engine adds).
    pub fn issued(self) -> Params {
        match self {
            Params::Kgw(k) => Params::Kgw(Kgw {
                delta: f64::from(k.delta as f32),
                ..k
            }),
            t => t,
        }
    }

    /// The seed of the step that follows `previous` (its last `context` tokens).
    pub fn step_seed(&self, key: &WatermarkKey, previous: &[i32]) -> u64 {
        let tag = match self {
            Params::Kgw(_) => kgw::TAG,
            Params::Tournament(_) => tournament::TAG,
        };
        key.step_seed(tag, previous, self.context())
    }
}

/// A number out of `NAME=VALUE`, for the schemes' parsers.
fn number<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T, String> {
    value
        .parse::<T>()
        .map_err(|_| format!("{name}={value}: {what}"))
}

/// The secret that makes a watermark's keyed values unpredictable.
pub struct WatermarkKey(Zeroizing<[u8; 32]>);

impl WatermarkKey {
    pub fn from_bytes(bytes: [u8; 32]) -> WatermarkKey {
        WatermarkKey(Zeroizing::new(bytes))
    }

    /// The key of one license, derived from the secret key that signs it, the license
    /// id and the model id. The signer (vendor or license server) can therefore derive
    /// it again for detection without storing it, renewals (same license id, same
    /// signer) keep it, and a node cannot derive another license's key: it holds only
    /// its own, unwrapped from its license.
    pub fn derive(signer: &SecretKey, license_id: &str, model_id: &str) -> WatermarkKey {
        let secret = signer.to_bytes();
        let digest = sha256(&[
            KEY_TAG,
            secret.as_slice(),
            license_id.as_bytes(),
            b"\0",
            model_id.as_bytes(),
        ]);
        WatermarkKey(Zeroizing::new(digest))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes (little-endian) of SHA-256(`tag` ‖ key ‖ the last `context`
    /// tokens of `previous` as i32 LE): the seed of one generation step.
    pub fn step_seed(&self, tag: &[u8], previous: &[i32], context: usize) -> u64 {
        let start = previous.len().saturating_sub(context);
        let mut encoded = Vec::with_capacity(4 * context);
        for t in &previous[start..] {
            encoded.extend_from_slice(&t.to_le_bytes());
        }
        let digest = sha256(&[tag, &self.0[..], &encoded]);
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// splitmix64's finalizer: a fast, well-spread 64-bit bijection. Keyed by a step seed
/// (uniform, from SHA-256) it gives each token 64 uniform bits.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What the detector found in a token sequence, for either scheme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Tokens scored: those after the first `context`, each once (KGW: each distinct
    /// (previous tokens, token) pair; tournament: each distinct context).
    pub scored: usize,
    /// Keyed coin flips counted: `scored` (KGW: one green-or-not per token) or
    /// `scored × depth` (tournament: one g-value per layer).
    pub trials: usize,
    /// How many came up: green tokens (KGW) or g-values of 1 (tournament).
    pub hits: usize,
    /// Each flip's chance under the null (text written without this key): γ or ½.
    pub chance: f64,
    /// (hits − chance·trials) / √(trials·chance·(1−chance)), for reading.
    pub z_score: f64,
    /// P(Binomial(trials, chance) ≥ hits): exact when the keyed values are independent
    /// fair (or γ-biased) coins under the null, which scoring each context (KGW: pair)
    /// once is for.
    pub p_value: f64,
}

impl Detection {
    fn from_counts(scored: usize, trials: usize, hits: usize, chance: f64) -> Detection {
        let t = trials as f64;
        let z_score = if trials == 0 {
            0.0
        } else {
            (hits as f64 - chance * t) / (t * chance * (1.0 - chance)).sqrt()
        };
        Detection {
            scored,
            trials,
            hits,
            chance,
            z_score,
            p_value: stats::binomial_upper_tail(trials as u64, hits as u64, chance),
        }
    }
}

/// Score `tokens` under `key` with the scheme `params` names.
pub fn detect(tokens: &[i32], key: &WatermarkKey, params: &Params) -> Detection {
    match params {
        Params::Kgw(k) => kgw::detect(tokens, key, k),
        Params::Tournament(t) => tournament::detect(tokens, key, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_parse_and_keep_their_license_spelling() {
        let k = Params::parse("gamma=0.5, delta=1.5, context=2").unwrap();
        assert_eq!(
            k,
            Params::Kgw(Kgw {
                gamma: 0.5,
                delta: 1.5,
                context: 2
            })
        );
        assert_eq!(
            Params::parse("scheme=kgw,gamma=0.5,delta=1.5,context=2").unwrap(),
            k
        );
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"gamma":0.5,"delta":1.5,"context":2}"#
        );
        let t = Params::parse("scheme=tournament,depth=8,context=3").unwrap();
        assert_eq!(
            t,
            Params::Tournament(Tournament {
                depth: 8,
                context: 3
            })
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"scheme":"tournament","depth":8,"context":3}"#
        );
        for text in [
            r#"{"gamma":0.5,"delta":1.5,"context":2}"#,
            r#"{"scheme":"tournament","depth":8,"context":3}"#,
        ] {
            let p: Params = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&p).unwrap(), text);
        }
        for bad in [
            r#"{"scheme":"kgw","gamma":0.5,"delta":1.5,"context":2}"#,
            r#"{"scheme":"tournament","gamma":0.5,"depth":8,"context":3}"#,
            r#"{"scheme":"tournament","context":3}"#,
            r#"{"gamma":0.5,"delta":1.5,"depth":2,"context":2}"#,
            r#"{"scheme":"gumbel","context":3}"#,
            r#"{"gamma":0.5,"delta":1.5,"context":2,"salt":1}"#,
        ] {
            assert!(serde_json::from_str::<Params>(bad).is_err(), "{bad}");
        }
        for bad in [
            "scheme=tournament",
            "scheme=tournament,depth=0",
            "scheme=tournament,depth=65",
            "scheme=tournament,depth=8,gamma=0.5",
            "scheme=tournament,depth=8,context=0",
            "scheme=gumbel,depth=8",
        ] {
            assert!(Params::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(t.json()["scheme"], "tournament");
        assert_eq!(k.json()["scheme"], "kgw");
        assert_eq!(t.describe(), "tournament, depth 8, context 3");
    }

    #[test]
    fn the_two_schemes_seed_their_steps_apart() {
        let key = WatermarkKey::from_bytes([7; 32]);
        let k = Params::parse("gamma=0.25,delta=2,context=2").unwrap();
        let t = Params::parse("scheme=tournament,depth=4,context=2").unwrap();
        assert_ne!(k.step_seed(&key, &[1, 2]), t.step_seed(&key, &[1, 2]));
        // Only the last `context` tokens count.
        assert_eq!(t.step_seed(&key, &[9, 1, 2]), t.step_seed(&key, &[1, 2]));
        assert_ne!(t.step_seed(&key, &[1, 3]), t.step_seed(&key, &[1, 2]));
    }
}
