//! Tournament sampling, the watermark of SynthID-Text (Dathathri et al., "Scalable
//! watermarking for identifying large language model outputs", Nature 2024).
//!
//! At each step the key and the previous `context` tokens give every token `x` of the
//! vocabulary `depth` pseudo-random bits, its g-values `g_1(x) … g_depth(x)`: bit `l−1`
//! of `mix(seed ^ x)`. The next token is the winner of a knockout tournament of
//! `2^depth` candidates drawn independently from the request's distribution `p`: in
//! round `l` the candidates meet in pairs and the one with the higher `g_l` goes on (a
//! coin decides a tie). The winner's distribution is computed exactly, round by round,
//! instead of drawing `2^depth` candidates: one round turns `p` into
//!
//! `p'(x) = p(x) · (1 + g_l(x) − G_l)`, with `G_l = Σ_y p(y) g_l(y)`,
//!
//! and the request's own random number draws once from the last round's distribution.
//! Over keys each `g_l(x)` is a fair coin, so `E[p'(x)] = p(x)`: the next-token
//! distribution, averaged over keys, is exactly the model's (the scheme is
//! distortion-free), while under one key the winners lean to tokens whose g-values are
//! one. The detector counts the ones among the g-values of the text's tokens; without
//! the key they are fair coins, so their count is Binomial(depth × tokens, ½) exactly.
//!
//! Two rules keep both statements true over a whole text: a step whose context already
//! occurred in this generation draws from `p` itself (the same g-values twice would
//! lean the text twice the same way), and the detector scores each distinct context
//! once (its first occurrence).

use super::{mix, number, Detection, WatermarkKey};

pub(super) const TAG: &[u8] = b"leasehold watermark tournament\0";

/// Largest depth: the g-values of one token are the bits of one 64-bit value.
pub const MAX_DEPTH: u32 = 64;

/// Tournament parameters, as a license mandates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tournament {
    /// Rounds of the tournament (1 to 64): g-values per token.
    pub depth: u32,
    /// How many previous tokens seed each step's g-values (1 to 8).
    pub context: u32,
}

impl Tournament {
    /// Read `depth=` and `context=`.
    pub(super) fn parse<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Tournament, String> {
        let (mut depth, mut context) = (None, None);
        for (k, v) in pairs {
            match k {
                "depth" => depth = Some(number(k, v, "not a whole number")?),
                "context" => context = Some(number(k, v, "not a whole number")?),
                other => {
                    return Err(format!(
                        "unknown tournament watermark parameter '{other}' (depth, context)"
                    ))
                }
            }
        }
        Ok(Tournament {
            depth: depth.ok_or("the tournament watermark needs depth (e.g. depth=8)")?,
            context: context.ok_or("the tournament watermark needs context (e.g. context=2)")?,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return Err(format!("depth={} must be 1 to {MAX_DEPTH}", self.depth));
        }
        if !(1..=8).contains(&self.context) {
            return Err(format!("context={} must be 1 to 8 tokens", self.context));
        }
        Ok(())
    }

    fn mask(&self) -> u64 {
        if self.depth >= 64 {
            u64::MAX
        } else {
            (1u64 << self.depth) - 1
        }
    }
}

/// The g-values of `token` at the step with `seed`: bit `l−1` is `g_l`.
pub fn g_values(seed: u64, token: i32) -> u64 {
    mix(seed ^ u64::from(token as u32))
}

/// Reusable buffers for [`reweight`].
#[derive(Default)]
pub struct Scratch {
    bits: Vec<u64>,
    index: Vec<u32>,
    compact: Vec<f32>,
}

/// Below this fraction of the largest weight a token sits out the tournament (keeps its
/// weight): with Gemma 3's 262,144 entries most of the vocabulary is that unlikely, and
/// the rounds then cost a fraction of a pass over it.
const SITS_OUT: f32 = 1.0 / (1u32 << 24) as f32;

/// Run the tournament on sampling weights, in place: `weights[i]` is the (unnormalised)
/// probability of token `tokens[i]`, or of token `i` when `tokens` is `None` (the whole
/// vocabulary). The weights keep their sum. Tokens below [`SITS_OUT`] of the largest
/// weight keep theirs: the draw is then, with their share of the mass, one of them as
/// the model would draw it, and otherwise the tournament's winner among the rest, so
/// over keys the distribution is still exactly the model's.
pub fn reweight(
    weights: &mut [f32],
    tokens: Option<&[i32]>,
    seed: u64,
    params: &Tournament,
    scratch: &mut Scratch,
) {
    let Scratch {
        bits,
        index,
        compact,
    } = scratch;
    let largest = weights.iter().fold(0f32, |m, w| m.max(*w));
    if !(largest > 0.0 && largest.is_finite()) {
        return;
    }
    let floor = largest * SITS_OUT;
    index.clear();
    index.extend(
        weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w >= floor)
            .map(|(i, _)| i as u32),
    );
    compact.clear();
    compact.extend(index.iter().map(|i| weights[*i as usize]));
    bits.clear();
    match tokens {
        Some(tokens) => bits.extend(index.iter().map(|i| g_values(seed, tokens[*i as usize]))),
        None => bits.extend(index.iter().map(|i| g_values(seed, *i as i32))),
    }
    let total = sum(compact, bits, None);
    for layer in 0..params.depth {
        let g = sum(compact, bits, Some(layer)) / total;
        let (lose, win) = ((1.0 - g) as f32, (2.0 - g) as f32);
        let step = win - lose;
        // Branch-free: the bit picks the factor.
        for (w, b) in compact.iter_mut().zip(bits.iter()) {
            *w *= lose + step * ((b >> layer) & 1) as f32;
        }
    }
    for (i, w) in index.iter().zip(compact.iter()) {
        weights[*i as usize] = *w;
    }
}

/// Σ weights (of the tokens whose g-value of `layer` is 1, when given), in lanes of f32
/// summed into f64.
fn sum(weights: &[f32], bits: &[u64], layer: Option<u32>) -> f64 {
    const LANES: usize = 16;
    let mut total = 0f64;
    for (w, b) in weights.chunks(LANES).zip(bits.chunks(LANES)) {
        let mut lanes = [0f32; LANES];
        match layer {
            None => lanes[..w.len()].copy_from_slice(w),
            Some(l) => {
                for ((lane, w), b) in lanes.iter_mut().zip(w).zip(b) {
                    *lane = w * ((b >> l) & 1) as f32;
                }
            }
        }
        total += f64::from(lanes.iter().sum::<f32>());
    }
    total
}

/// Count the g-values equal to 1 among `tokens` under `key`: each token after the first
/// `context`, each distinct context once (its first occurrence, the step the generator
/// marked).
pub fn detect(tokens: &[i32], key: &WatermarkKey, params: &Tournament) -> Detection {
    let context = params.context as usize;
    let mask = params.mask();
    let mut ones = 0usize;
    let mut scored = 0usize;
    let mut seen = std::collections::HashSet::new();
    for i in context..tokens.len() {
        if !seen.insert(&tokens[i - context..i]) {
            continue;
        }
        let seed = key.step_seed(TAG, &tokens[..i], context);
        ones += (g_values(seed, tokens[i]) & mask).count_ones() as usize;
        scored += 1;
    }
    Detection::from_counts(scored, scored * params.depth as usize, ones, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::Params;

    fn params(depth: u32, context: u32) -> Tournament {
        match Params::parse(&format!(
            "scheme=tournament,depth={depth},context={context}"
        ))
        .unwrap()
        {
            Params::Tournament(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// The winner's distribution by brute force: every pairing of `2^depth` independent
    /// candidates, for a small vocabulary.
    fn brute(p: &[f64], g: &[u64], depth: u32) -> Vec<f64> {
        // Distribution after each round: the winner of two independent draws from the
        // previous round's distribution.
        let mut dist = p.to_vec();
        for layer in 0..depth {
            let mut next = vec![0f64; p.len()];
            for (a, pa) in dist.iter().enumerate() {
                for (b, pb) in dist.iter().enumerate() {
                    let (ga, gb) = ((g[a] >> layer) & 1, (g[b] >> layer) & 1);
                    let joint = pa * pb;
                    match ga.cmp(&gb) {
                        std::cmp::Ordering::Greater => next[a] += joint,
                        std::cmp::Ordering::Less => next[b] += joint,
                        std::cmp::Ordering::Equal => {
                            next[a] += joint / 2.0;
                            next[b] += joint / 2.0;
                        }
                    }
                }
            }
            dist = next;
        }
        dist
    }

    #[test]
    fn reweighting_is_the_tournament_winners_distribution() {
        let p = [0.05f32, 0.1, 0.15, 0.3, 0.4];
        let t = params(4, 1);
        for seed in 0..20u64 {
            let mut w = p.to_vec();
            let mut scratch = Scratch::default();
            reweight(&mut w, None, seed, &t, &mut scratch);
            let g: Vec<u64> = (0..5).map(|i| g_values(seed, i)).collect();
            let expected = brute(&p.map(f64::from), &g, 4);
            for (ours, exact) in w.iter().zip(&expected) {
                assert!(
                    (f64::from(*ours) - exact).abs() < 1e-5,
                    "seed {seed}: {w:?} vs {expected:?}"
                );
            }
            let total: f32 = w.iter().sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
        // Token ids given explicitly: the same as the whole-vocabulary form.
        let tokens = [0, 1, 2, 3, 4];
        let (mut a, mut b, mut scratch) = (p.to_vec(), p.to_vec(), Scratch::default());
        reweight(&mut a, None, 7, &t, &mut scratch);
        reweight(&mut b, Some(&tokens), 7, &t, &mut scratch);
        assert_eq!(a, b);
        // A token far below the others sits out: its weight is kept, the rest keep
        // their sum.
        let mut c = vec![0.5f32, 0.5, 1e-9];
        reweight(&mut c, None, 7, &t, &mut scratch);
        assert_eq!(c[2], 1e-9);
        assert!((c[0] + c[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn averaged_over_keys_the_distribution_is_the_models() {
        // A skewed distribution over 40 tokens; 20,000 keys (step seeds).
        let p: Vec<f32> = (0..40).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let total: f32 = p.iter().sum();
        let t = params(8, 1);
        let mut mean = vec![0f64; p.len()];
        let mut scratch = Scratch::default();
        let keys = 20_000u64;
        for k in 0..keys {
            let mut w = p.clone();
            reweight(&mut w, None, mix(k), &t, &mut scratch);
            for (m, w) in mean.iter_mut().zip(&w) {
                *m += f64::from(*w / total) / keys as f64;
            }
        }
        for (i, (m, w)) in mean.iter().zip(&p).enumerate() {
            let expected = f64::from(w / total);
            assert!(
                (m - expected).abs() < 0.1 * expected,
                "token {i}: {m} vs {expected}"
            );
        }
    }

    #[test]
    fn detection_counts_g_values_once_per_context() {
        let key = WatermarkKey::from_bytes([7; 32]);
        let t = params(6, 2);
        let phrase = [11, 12, 13, 14];
        let repeated: Vec<i32> = phrase.iter().copied().cycle().take(400).collect();
        let d = detect(&repeated, &key, &t);
        // Contexts (11,12) (12,13) (13,14) (14,11): four tokens, 24 g-values.
        assert_eq!((d.scored, d.trials), (4, 24));
        assert!(d.p_value > 1e-3);
        assert!(detect(&[5, 6], &key, &t).scored == 0);
    }

    /// The engine's path (the request's temperature sampler, the tournament reweighting
    /// its weights, the request's own draw), one draw per key at a fixed context: the
    /// drawn tokens follow the model's softmax. Pearson's chi-square against it, 59
    /// degrees of freedom: the 99.9 % point is 98.3; the unmarked draws for scale.
    #[test]
    #[cfg(feature = "inference")]
    fn drawn_under_many_keys_tokens_follow_the_models_distribution() {
        use crate::runtime::sampling::Direct;
        let logits: Vec<f32> = (0..60)
            .map(|i| -0.08 * i as f32 + 0.3 * ((i * 7) % 5) as f32)
            .collect();
        let max = logits.iter().fold(f32::MIN, |m, l| m.max(*l));
        let weights: Vec<f64> = logits.iter().map(|l| f64::from(l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let t = params(8, 2);
        let draws = 60_000u64;
        let chi_square = |counts: &[u64]| -> f64 {
            counts
                .iter()
                .zip(&weights)
                .map(|(c, w)| {
                    let expected = w / total * draws as f64;
                    (*c as f64 - expected).powi(2) / expected
                })
                .sum()
        };
        let (mut marked, mut plain) = (vec![0u64; 60], vec![0u64; 60]);
        let mut scratch = Scratch::default();
        for k in 0..draws {
            let seed = mix(k ^ 0x5eed);
            let mut sampler = Direct::temperature(1.0, k);
            let mut lean =
                |w: &mut [f32], tokens: Option<&[i32]>| reweight(w, tokens, seed, &t, &mut scratch);
            marked[sampler.sample_with(&logits, Some(&mut lean))] += 1;
            plain[Direct::temperature(1.0, k + draws).sample(&logits)] += 1;
        }
        let (x_marked, x_plain) = (chi_square(&marked), chi_square(&plain));
        assert!(
            x_marked < 98.3,
            "marked: chi-square {x_marked:.1} (plain {x_plain:.1})"
        );
        assert!(x_plain < 98.3, "plain: chi-square {x_plain:.1}");
        // Under one key the draws lean hard to that key's winners: not the model's.
        let mut one_key = vec![0u64; 60];
        let seed = mix(42);
        for k in 0..draws {
            let mut sampler = Direct::temperature(1.0, k);
            let mut lean =
                |w: &mut [f32], tokens: Option<&[i32]>| reweight(w, tokens, seed, &t, &mut scratch);
            one_key[sampler.sample_with(&logits, Some(&mut lean))] += 1;
        }
        assert!(chi_square(&one_key) > 1000.0);
    }

    /// Text written without the key (here: random tokens, and a repetitive text) gets
    /// p-values that are uniform: 5 % below 0.05, 1 % below 0.01, none far out.
    #[test]
    fn without_the_key_p_values_are_uniform() {
        let t = params(8, 2);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(state)
        };
        let texts = 4000;
        let (mut below_05, mut below_01, mut below_1e4) = (0, 0, 0);
        for i in 0..texts {
            let key = WatermarkKey::from_bytes(crate::crypto::sha256(&[&(i as u64).to_le_bytes()]));
            // Half random text over a 500-token vocabulary (contexts repeat now and then),
            // half a 7-token phrase repeated with a random token every 10th place.
            let tokens: Vec<i32> = (0..200)
                .map(|j| {
                    if i % 2 == 0 || j % 10 == 9 {
                        (next() % 500) as i32
                    } else {
                        [3, 1, 4, 1, 5, 9, 2][j % 7]
                    }
                })
                .collect();
            let d = detect(&tokens, &key, &t);
            below_05 += usize::from(d.p_value < 0.05);
            below_01 += usize::from(d.p_value < 0.01);
            below_1e4 += usize::from(d.p_value < 1e-4);
        }
        let rate = |k: usize| k as f64 / texts as f64;
        // Binomial(4000, 0.05) lies within ±0.011 of 0.05 at five standard deviations;
        // the count is discrete, so the rate may only fall short of the nominal level.
        assert!(
            rate(below_05) < 0.061 && rate(below_05) > 0.03,
            "{below_05}"
        );
        assert!(rate(below_01) < 0.016, "{below_01}");
        assert!(below_1e4 <= 2, "{below_1e4}");
    }
}
