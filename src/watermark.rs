//! The statistical text watermark of Kirchenbauer et al. 2023, "A Watermark for Large
//! Language Models": at each generation step a keyed hash of the previous `context`
//! tokens splits the vocabulary into a green list (fraction γ) and the rest, and δ is
//! added to the green tokens' logits before sampling. Text from a watermarked model
//! then holds more green tokens than the γ·T that chance gives; the detector counts
//! them and reports a z-score. Without the key the green lists are unpredictable.
//!
//! This module is the arithmetic, shared by the engine (biasing) and the detector:
//! green-list membership, the logit bias and the detection statistics. Which licenses
//! mandate it, and where its key comes from, is the license's business.
//!
//! Membership costs one SHA-256 per step (the step seed) and one 64-bit mix per
//! vocabulary entry: `mix(seed ^ token) < γ · 2^64`.

use zeroize::Zeroizing;

use crate::crypto::sha256;
use crate::crypto::signing::SecretKey;

const TAG: &[u8] = b"leasehold watermark\0";
const KEY_TAG: &[u8] = b"leasehold watermark key v1\0";

/// Watermark parameters, as a license mandates them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Fraction of the vocabulary in each green list (0 < γ < 1).
    pub gamma: f64,
    /// Added to green logits (0 < δ ≤ 20).
    pub delta: f32,
    /// How many previous tokens seed each green list (1 to 8).
    pub context: usize,
}

impl Params {
    /// Parse `gamma=0.25,delta=2.0[,context=1]`.
    pub fn parse(text: &str) -> Result<Params, String> {
        let (mut gamma, mut delta, mut context) = (None, None, 1usize);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not NAME=VALUE"))?;
            let bad = |what: &str| format!("{k}={v}: {what}");
            match k.trim() {
                "gamma" => gamma = Some(v.trim().parse::<f64>().map_err(|_| bad("not a number"))?),
                "delta" => delta = Some(v.trim().parse::<f32>().map_err(|_| bad("not a number"))?),
                "context" => {
                    context = v
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad("not a whole number"))?
                }
                other => {
                    return Err(format!(
                        "unknown watermark parameter '{other}' (gamma, delta, context)"
                    ))
                }
            }
        }
        let params = Params {
            gamma: gamma.ok_or("the watermark needs gamma (e.g. gamma=0.25)")?,
            delta: delta.ok_or("the watermark needs delta (e.g. delta=2.0)")?,
            context,
        };
        params.check()?;
        Ok(params)
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.gamma > 0.0 && self.gamma < 1.0) {
            return Err(format!("gamma={} must be between 0 and 1", self.gamma));
        }
        if !(self.delta > 0.0 && self.delta <= 20.0) {
            return Err(format!(
                "delta={} must be above 0 and at most 20",
                self.delta
            ));
        }
        if !(1..=8).contains(&self.context) {
            return Err(format!("context={} must be 1 to 8 tokens", self.context));
        }
        Ok(())
    }

    fn threshold(&self) -> u64 {
        (self.gamma * 18_446_744_073_709_551_616.0) as u64
    }
}

/// The secret that makes green lists unpredictable.
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

    /// The seed of the green list that follows `previous` (its last `context` tokens).
    pub fn step_seed(&self, previous: &[i32], params: &Params) -> u64 {
        let start = previous.len().saturating_sub(params.context);
        let mut encoded = Vec::with_capacity(4 * params.context);
        for t in &previous[start..] {
            encoded.extend_from_slice(&t.to_le_bytes());
        }
        let digest = sha256(&[TAG, &self.0[..], &encoded]);
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// splitmix64's finalizer: a fast, well-spread 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Is `token` in the green list of the step with `seed`?
pub fn is_green(seed: u64, token: i32, params: &Params) -> bool {
    mix(seed ^ u64::from(token as u32)) < params.threshold()
}

/// Add δ to the green tokens' logits (`logits[i]` is token `i`'s).
pub fn bias(logits: &mut [f32], seed: u64, params: &Params) {
    let threshold = params.threshold();
    let delta = params.delta;
    // Branch-free: a green/red branch would be mispredicted a quarter of the time.
    for (token, logit) in logits.iter_mut().enumerate() {
        let green = mix(seed ^ token as u64) < threshold;
        *logit += f32::from(u8::from(green)) * delta;
    }
}

/// What the detector found in a token sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Tokens scored: all but the first `context`, each (previous tokens, token)
    /// pair once.
    pub scored: usize,
    pub green: usize,
    /// (green − γ·T) / √(T·γ·(1−γ)).
    pub z_score: f64,
    /// One-sided: the chance of at least this many green tokens in unwatermarked text.
    pub p_value: f64,
}

/// Count green tokens in `tokens` under `key`. A (previous tokens, token) pair that
/// repeats is scored once: repeated phrases would otherwise count the same coin flip
/// again and again, and push unwatermarked text with repetitions past the threshold
/// (Kirchenbauer et al., "On the Reliability of Watermarks for LLMs", 2023).
pub fn detect(tokens: &[i32], key: &WatermarkKey, params: &Params) -> Detection {
    let mut green = 0usize;
    let mut scored = 0usize;
    let mut seen = std::collections::HashSet::new();
    for i in params.context..tokens.len() {
        if !seen.insert(&tokens[i - params.context..=i]) {
            continue;
        }
        let seed = key.step_seed(&tokens[..i], params);
        scored += 1;
        if is_green(seed, tokens[i], params) {
            green += 1;
        }
    }
    let t = scored as f64;
    let z_score = if scored == 0 {
        0.0
    } else {
        (green as f64 - params.gamma * t) / (t * params.gamma * (1.0 - params.gamma)).sqrt()
    };
    Detection {
        scored,
        green,
        z_score,
        p_value: 0.5 * erfc(z_score / std::f64::consts::SQRT_2),
    }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 4000;

    fn params() -> Params {
        Params::parse("gamma=0.25,delta=2.0").unwrap()
    }

    /// A deterministic stream of pseudo-random numbers for the simulations.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0)
        }
        fn token(&mut self) -> i32 {
            (self.next() % VOCAB as u64) as i32
        }
    }

    /// Sample from softmax(logits + bias) where the model's own logits are flat: with δ
    /// the chance of green is e^δγ / (e^δγ + 1 − γ).
    fn generate(key: Option<&WatermarkKey>, n: usize, seed: u64) -> Vec<i32> {
        let p = params();
        let mut rng = Rng(seed);
        let mut tokens = vec![rng.token()];
        let mut logits = vec![0f32; VOCAB];
        while tokens.len() < n {
            logits.iter_mut().for_each(|l| *l = 0.0);
            if let Some(key) = key {
                bias(&mut logits, key.step_seed(&tokens, &p), &p);
            }
            let weights: Vec<f64> = logits.iter().map(|l| f64::from(*l).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut target = (rng.next() as f64 / u64::MAX as f64) * total;
            let mut chosen = VOCAB - 1;
            for (i, w) in weights.iter().enumerate() {
                target -= w;
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            tokens.push(chosen as i32);
        }
        tokens
    }

    #[test]
    fn parameters_parse_and_are_bounded() {
        let p = Params::parse("gamma=0.5, delta=1.5, context=2").unwrap();
        assert_eq!((p.gamma, p.delta, p.context), (0.5, 1.5, 2));
        assert_eq!(params().context, 1);
        for bad in [
            "delta=2",
            "gamma=0.25",
            "gamma=1.0,delta=2",
            "gamma=0.2,delta=0",
            "gamma=0.2,delta=2,context=9",
            "gamma=x,delta=2",
            "gamma=0.2,delta=2,strength=3",
            "gamma",
        ] {
            assert!(Params::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn green_lists_hold_gamma_of_the_vocabulary_and_bias_adds_delta() {
        let p = params();
        let key = WatermarkKey::from_bytes([7; 32]);
        let seed = key.step_seed(&[42], &p);
        let green = (0..VOCAB as i32).filter(|t| is_green(seed, *t, &p)).count();
        let fraction = green as f64 / VOCAB as f64;
        assert!((fraction - 0.25).abs() < 0.03, "{fraction}");
        let mut logits = vec![1.0f32; VOCAB];
        bias(&mut logits, seed, &p);
        for (t, l) in logits.iter().enumerate() {
            let expected = if is_green(seed, t as i32, &p) {
                3.0
            } else {
                1.0
            };
            assert_eq!(*l, expected);
        }
        // Another previous token, another list; another key, another list.
        let other = key.step_seed(&[43], &p);
        let other_key = WatermarkKey::from_bytes([8; 32]).step_seed(&[42], &p);
        assert!(seed != other && seed != other_key);
    }

    #[test]
    fn watermarked_text_is_detected_and_plain_text_or_the_wrong_key_is_not() {
        let p = params();
        let key = WatermarkKey::from_bytes([7; 32]);
        let wrong = WatermarkKey::from_bytes([9; 32]);
        for run in 0..5 {
            let marked = generate(Some(&key), 200, run);
            let d = detect(&marked, &key, &p);
            assert!(d.scored > 190, "{d:?}");
            assert!(d.z_score > 4.0 && d.p_value < 1e-4, "{d:?}");
            let plain = generate(None, 200, 100 + run);
            assert!(detect(&plain, &key, &p).z_score < 3.0);
            assert!(detect(&marked, &wrong, &p).z_score < 3.0);
        }
    }

    #[test]
    fn a_repeated_phrase_is_scored_once() {
        let p = params();
        let key = WatermarkKey::from_bytes([7; 32]);
        let phrase = [11, 12, 13, 14];
        let repeated: Vec<i32> = phrase.iter().copied().cycle().take(400).collect();
        let d = detect(&repeated, &key, &p);
        // Pairs (11,12) (12,13) (13,14) (14,11): four coin flips, not 399.
        assert_eq!(d.scored, 4);
        assert!(d.z_score.abs() < 4.0);
    }

    #[test]
    fn p_values_follow_the_normal_tail() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        let p = |z: f64| 0.5 * erfc(z / std::f64::consts::SQRT_2);
        assert!((p(1.6449) - 0.05).abs() < 1e-4);
        assert!((p(4.0) - 3.167e-5).abs() < 1e-6);
        assert!((p(-1.6449) - 0.95).abs() < 1e-4);
    }
}
