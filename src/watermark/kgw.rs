//! The statistical text watermark of Kirchenbauer et al. 2023, "A Watermark for Large
//! Language Models": at each generation step a keyed hash of the previous `context`
//! tokens splits the vocabulary into a green list (fraction γ) and the rest, and δ is
//! added to the green tokens' logits before sampling. Text from a watermarked model
//! then holds more green tokens than the γ·T that chance gives; the detector counts
//! them. Without the key the green lists are unpredictable.
//!
//! Membership costs one SHA-256 per step (the step seed) and one 64-bit mix per
//! vocabulary entry: `mix(seed ^ token) < γ · 2^64`.

use super::{mix, number, Detection, WatermarkKey};

pub(super) const TAG: &[u8] = b"leasehold watermark\0";

/// Green-list parameters, as a license mandates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kgw {
    /// Fraction of the vocabulary in each green list (0 < γ < 1).
    pub gamma: f64,
    /// Added to green logits (0 < δ ≤ 20, as single precision).
    pub delta: f64,
    /// How many previous tokens seed each green list (1 to 8).
    pub context: u32,
}

impl Kgw {
    /// Read `gamma=`, `delta=` and an optional `context=` (default 1).
    pub(super) fn parse<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Kgw, String> {
        let (mut gamma, mut delta, mut context) = (None, None, 1u32);
        for (k, v) in pairs {
            match k {
                "gamma" => gamma = Some(number::<f64>(k, v, "not a number")?),
                "delta" => delta = Some(f64::from(number::<f32>(k, v, "not a number")?)),
                "context" => context = number(k, v, "not a whole number")?,
                other => {
                    return Err(format!(
                        "unknown kgw watermark parameter '{other}' (gamma, delta, context)"
                    ))
                }
            }
        }
        Ok(Kgw {
            gamma: gamma.ok_or("the watermark needs gamma (e.g. gamma=0.25)")?,
            delta: delta.ok_or("the watermark needs delta (e.g. delta=2.0)")?,
            context,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.gamma > 0.0 && self.gamma < 1.0) {
            return Err(format!("gamma={} must be between 0 and 1", self.gamma));
        }
        let delta = self.delta as f32;
        if !(delta > 0.0 && delta <= 20.0) {
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

/// Is `token` in the green list of the step with `seed`?
pub fn is_green(seed: u64, token: i32, params: &Kgw) -> bool {
    mix(seed ^ u64::from(token as u32)) < params.threshold()
}

/// Add δ to the green tokens' logits (`logits[i]` is token `i`'s).
pub fn bias(logits: &mut [f32], seed: u64, params: &Kgw) {
    let threshold = params.threshold();
    let delta = params.delta as f32;
    // Branch-free: a green/red branch would be mispredicted a quarter of the time.
    for (token, logit) in logits.iter_mut().enumerate() {
        let green = mix(seed ^ token as u64) < threshold;
        *logit += f32::from(u8::from(green)) * delta;
    }
}

/// Count green tokens in `tokens` under `key`. A (previous tokens, token) pair that
/// repeats is scored once: repeated phrases would otherwise count the same coin flip
/// again and again, and push unwatermarked text with repetitions past the threshold
/// (Kirchenbauer et al., "On the Reliability of Watermarks for LLMs", 2023).
pub fn detect(tokens: &[i32], key: &WatermarkKey, params: &Kgw) -> Detection {
    let context = params.context as usize;
    let mut green = 0usize;
    let mut scored = 0usize;
    let mut seen = std::collections::HashSet::new();
    for i in context..tokens.len() {
        if !seen.insert(&tokens[i - context..=i]) {
            continue;
        }
        let seed = key.step_seed(TAG, &tokens[..i], context);
        scored += 1;
        if is_green(seed, tokens[i], params) {
            green += 1;
        }
    }
    Detection::from_counts(scored, scored, green, params.gamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::Params;

    const VOCAB: usize = 4000;

    fn params() -> Kgw {
        match Params::parse("gamma=0.25,delta=2.0").unwrap() {
            Params::Kgw(k) => k,
            other => panic!("{other:?}"),
        }
    }

    fn seed_of(key: &WatermarkKey, previous: &[i32], p: &Kgw) -> u64 {
        key.step_seed(TAG, previous, p.context as usize)
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
                bias(&mut logits, seed_of(key, &tokens, &p), &p);
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
        let Params::Kgw(p) = Params::parse("gamma=0.5, delta=1.5, context=2").unwrap() else {
            panic!("not kgw")
        };
        assert_eq!((p.gamma, p.delta, p.context), (0.5, 1.5, 2));
        // δ as the engine adds it: single precision.
        let Params::Kgw(p) = Params::parse("gamma=0.5,delta=0.1").unwrap() else {
            panic!("not kgw")
        };
        assert_eq!(p.delta, f64::from(0.1f32));
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
        let seed = seed_of(&key, &[42], &p);
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
        let other = seed_of(&key, &[43], &p);
        let other_key = seed_of(&WatermarkKey::from_bytes([8; 32]), &[42], &p);
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
}
