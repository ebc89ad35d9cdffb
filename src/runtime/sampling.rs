//! Sampling straight from the logits, for the common requests: greedy (temperature 0)
//! and plain temperature sampling over the whole vocabulary (`top_p` 1, the OpenAI
//! default). llama.cpp's sampler chain first copies every logit into a candidate array
//! and then makes several scalar passes over it (temperature, max, `expf`, a running
//! sum and a division per token); with Gemma 3's 262,144-token vocabulary that costs
//! milliseconds per token, per sequence. Here: one pass for the maximum, one vectorisable
//! pass computing `exp((logit - max) / T)` with a polynomial and summing it, and a walk of
//! the running sum that stops at the drawn token. Requests with `top_p` below 1 keep
//! llama.cpp's chain (engine).

/// A sampler that reads the logits directly.
#[derive(Debug, Clone)]
pub enum Direct {
    /// The highest logit; the lowest token id among equals (as llama.cpp's greedy).
    Greedy,
    /// Token `i` with probability `exp(l_i / T) / Σ exp(l_j / T)`.
    Temperature {
        inv_temperature: f32,
        rng: Rng,
        /// `exp((logit - max) / T)` per token, and their sums per chunk of `LANES`.
        weights: Vec<f32>,
        chunk_sums: Vec<f32>,
    },
    /// Nucleus sampling as llama.cpp's chain does it (`top_p` over the softmax at
    /// temperature 1, then the temperature over what is kept). Used where the
    /// tournament watermark must reweight the nucleus before the draw; unwatermarked
    /// `top_p` requests keep llama.cpp's chain.
    Nucleus {
        top_p: f32,
        inv_temperature: f32,
        rng: Rng,
        /// (logit, token) of the tokens near the top, sorted by logit, highest first.
        candidates: Vec<(f32, i32)>,
        tokens: Vec<i32>,
        weights: Vec<f32>,
    },
}

/// What a watermark does to the sampling weights before the draw: `weights[i]` is the
/// weight of token `tokens[i]`, or of token `i` when `tokens` is `None`.
pub type Reweight<'a> = &'a mut dyn FnMut(&mut [f32], Option<&[i32]>);

impl Direct {
    pub fn temperature(temperature: f32, seed: u64) -> Direct {
        Direct::Temperature {
            inv_temperature: 1.0 / temperature,
            rng: Rng::new(seed),
            weights: Vec::new(),
            chunk_sums: Vec::new(),
        }
    }

    pub fn nucleus(top_p: f32, temperature: f32, seed: u64) -> Direct {
        Direct::Nucleus {
            top_p: top_p.clamp(0.0, 1.0),
            inv_temperature: 1.0 / temperature,
            rng: Rng::new(seed),
            candidates: Vec::new(),
            tokens: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The index of the token drawn from `logits` (0 for an empty slice).
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        self.sample_with(logits, None)
    }

    /// The same, with `reweight` applied to the weights just before the draw (greedy
    /// ignores it: there is nothing to draw).
    pub fn sample_with(&mut self, logits: &[f32], reweight: Option<Reweight<'_>>) -> usize {
        match self {
            Direct::Greedy => argmax(logits),
            Direct::Temperature {
                inv_temperature,
                rng,
                weights,
                chunk_sums,
            } => {
                let max = max(logits);
                if !max.is_finite() {
                    return argmax(logits);
                }
                weights.clear();
                weights.resize(logits.len(), 0.0);
                exponentials(weights, logits, max, *inv_temperature);
                if let Some(reweight) = reweight {
                    reweight(weights, None);
                }
                chunk_sums.clear();
                let mut total = 0.0f64;
                for w in weights.chunks(LANES) {
                    let sum: f32 = w.iter().sum();
                    chunk_sums.push(sum);
                    total += f64::from(sum);
                }
                draw(weights, chunk_sums, rng.next_f64() * total).unwrap_or_else(|| argmax(logits))
            }
            Direct::Nucleus {
                top_p,
                inv_temperature,
                rng,
                candidates,
                tokens,
                weights,
            } => {
                let max = max(logits);
                if !max.is_finite() {
                    return argmax(logits);
                }
                nucleus(logits, max, *top_p, candidates);
                tokens.clear();
                tokens.extend(candidates.iter().map(|(_, t)| *t));
                weights.clear();
                weights.extend(
                    candidates
                        .iter()
                        .map(|(l, _)| exp_nonpositive((l - max) * *inv_temperature)),
                );
                if let Some(reweight) = reweight {
                    reweight(weights, Some(tokens));
                }
                let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
                let target = rng.next_f64() * total;
                let mut running = 0.0f64;
                for (w, t) in weights.iter().zip(tokens.iter()) {
                    running += f64::from(*w);
                    if running >= target && *w > 0.0 {
                        return *t as usize;
                    }
                }
                tokens
                    .first()
                    .map_or_else(|| argmax(logits), |t| *t as usize)
            }
        }
    }
}

/// Walk the chunks' sums (the same values that made the total), then the weights inside
/// the chunk where `target` falls. `None` when every weight is zero.
fn draw(weights: &[f32], chunk_sums: &[f32], target: f64) -> Option<usize> {
    let mut running = 0.0f64;
    let mut last = None;
    for (c, sum) in chunk_sums.iter().enumerate() {
        let after = running + f64::from(*sum);
        if after < target && c + 1 < chunk_sums.len() {
            running = after;
            continue;
        }
        let chunk = &weights[c * LANES..(c * LANES + LANES).min(weights.len())];
        for (i, w) in chunk.iter().enumerate() {
            if *w > 0.0 {
                running += f64::from(*w);
                last = Some(c * LANES + i);
                if running >= target {
                    return last;
                }
            }
        }
        if last.is_some() {
            return last;
        }
        running = after;
    }
    last
}

/// The nucleus of `logits` into `out`, highest logit first: the fewest tokens whose
/// softmax (temperature 1) mass reaches `top_p` (at least one). Only tokens within a
/// margin of the maximum are sorted; the margin widens until it holds the nucleus.
fn nucleus(logits: &[f32], max: f32, top_p: f32, out: &mut Vec<(f32, i32)>) {
    let total: f64 = logits
        .iter()
        .map(|l| f64::from(exp_nonpositive(l - max)))
        .sum();
    let want = f64::from(top_p) * total;
    let mut margin = 8.0f32;
    loop {
        out.clear();
        out.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| **l >= max - margin)
                .map(|(i, l)| (*l, i as i32)),
        );
        let mass: f64 = out
            .iter()
            .map(|(l, _)| f64::from(exp_nonpositive(l - max)))
            .sum();
        if mass >= want || margin > 88.0 {
            break;
        }
        margin *= 2.0;
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut running = 0.0f64;
    let mut keep = out.len();
    for (i, (l, _)) in out.iter().enumerate() {
        running += f64::from(exp_nonpositive(l - max));
        if running >= want {
            keep = i + 1;
            break;
        }
    }
    out.truncate(keep.max(1));
}

const LANES: usize = 16;

fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = if *v > *m { *v } else { *m };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in lanes.iter().chain(rest) {
        if *v > m {
            m = *v;
        }
    }
    m
}

/// `weights[i] = exp((logits[i] - max) * scale)`, in a loop of its own so that it is
/// compiled vectorised.
#[inline(never)]
fn exponentials(weights: &mut [f32], logits: &[f32], max: f32, scale: f32) {
    for (w, l) in weights.iter_mut().zip(logits) {
        *w = exp_nonpositive((l - max) * scale);
    }
}

fn argmax(values: &[f32]) -> usize {
    let m = max(values);
    values.iter().position(|v| *v == m).unwrap_or(0)
}

/// `e^x` for `x <= 0` (NaN and below -87 give 0), relative error below 5e-7: `x = n ln2 + r`
/// with |r| <= ln2/2, a degree-6 Taylor polynomial for `e^r`, `2^n` built from its bits.
/// Branch-free and without library calls (`n` is rounded by adding 1.5 x 2^23, which
/// also leaves it in the low bits), so loops over it vectorise.
#[inline]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let keep = x >= -87.0;
    let x = if keep { x } else { -87.0 };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if keep {
        p * scale
    } else {
        0.0
    }
}

/// xoshiro256** seeded through SplitMix64: fast, and the same draws for the same seed.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponential_is_accurate_over_the_range_that_matters() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (ours, libm) = (exp_nonpositive(x), x.exp());
            assert!(
                ((ours - libm) / libm).abs() < 5e-7,
                "e^{x}: {ours} vs {libm}"
            );
            x -= 0.013;
        }
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NAN), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn greedy_takes_the_first_highest_logit() {
        let mut logits = vec![0.0f32; 1000];
        logits[17] = 3.0;
        logits[900] = 3.0;
        logits[5] = f32::NEG_INFINITY;
        assert_eq!(Direct::Greedy.sample(&logits), 17);
        assert_eq!(Direct::Greedy.sample(&[]), 0);
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        // Four tokens with probabilities 0.1, 0.2, 0.3, 0.4 at temperature 0.5, among
        // 70 tokens the softmax gives (almost) nothing.
        let mut logits = vec![-1e4f32; 74];
        for (i, p) in [0.1f32, 0.2, 0.3, 0.4].iter().enumerate() {
            logits[10 + i * 20] = p.ln() * 0.5;
        }
        let mut sampler = Direct::temperature(0.5, 42);
        let mut counts = [0u32; 4];
        let n = 200_000;
        for _ in 0..n {
            let i = sampler.sample(&logits);
            assert!((i - 10).is_multiple_of(20), "drew token {i}");
            counts[(i - 10) / 20] += 1;
        }
        for (k, p) in [0.1f64, 0.2, 0.3, 0.4].iter().enumerate() {
            let seen = f64::from(counts[k]) / f64::from(n);
            assert!((seen - p).abs() < 0.005, "token {k}: {seen} vs {p}");
        }
        // A reweight that zeroes all but token 30 leaves only it.
        let mut only_30 = |w: &mut [f32], tokens: Option<&[i32]>| {
            assert!(tokens.is_none());
            for (i, w) in w.iter_mut().enumerate() {
                if i != 30 {
                    *w = 0.0;
                }
            }
        };
        assert_eq!(sampler.sample_with(&logits, Some(&mut only_30)), 30);
        // The same seed draws the same tokens.
        let (mut a, mut b) = (Direct::temperature(0.8, 7), Direct::temperature(0.8, 7));
        let drawn: Vec<usize> = (0..100).map(|_| a.sample(&logits)).collect();
        assert_eq!(
            drawn,
            (0..100).map(|_| b.sample(&logits)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nucleus_sampling_keeps_the_top_mass_then_applies_the_temperature() {
        // Softmax at temperature 1: 0.5, 0.3, 0.15, 0.05 (and 996 tokens of nothing).
        let mut logits = vec![-1e4f32; 1000];
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        for (i, p) in probs.iter().enumerate() {
            logits[100 * i + 1] = p.ln();
        }
        // top_p 0.75: the nucleus is {0.5, 0.3}; at temperature 1 they are drawn 5:3.
        let mut sampler = Direct::nucleus(0.75, 1.0, 3);
        let mut counts = std::collections::HashMap::new();
        let n = 100_000;
        for _ in 0..n {
            *counts.entry(sampler.sample(&logits)).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        let first = f64::from(counts[&1]) / f64::from(n);
        assert!((first - 0.625).abs() < 0.01, "{first}");
        // top_p tiny: the top token only; top_p 1: all four.
        let mut one = Direct::nucleus(0.01, 1.0, 3);
        assert!((0..100).all(|_| one.sample(&logits) == 1));
        let mut all = Direct::nucleus(1.0, 1.0, 3);
        let drawn: std::collections::HashSet<usize> =
            (0..10_000).map(|_| all.sample(&logits)).collect();
        assert_eq!(drawn.len(), 4);
        // The reweight sees the nucleus's tokens, highest first.
        let mut seen = Vec::new();
        let mut record = |w: &mut [f32], tokens: Option<&[i32]>| {
            seen = tokens.unwrap().to_vec();
            w[0] = 0.0;
        };
        assert_eq!(sampler.sample_with(&logits, Some(&mut record)), 101);
        assert_eq!(seen, [1, 101]);
    }
}
