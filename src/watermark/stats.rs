//! The detectors' null distribution: the binomial tail, computed exactly (to double
//! precision) rather than by a normal approximation, so that a p-value is right for
//! short texts and far in the tail.

/// ln C(n, k), summed term by term (n up to a few million: microseconds to a millisecond).
fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum()
}

/// P(X ≥ k) for X ~ Binomial(n, q), 0 < q < 1. 1 when k = 0, 0 when k > n. Tails below
/// about 1e-308 read 0.
pub fn binomial_upper_tail(n: u64, k: u64, q: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let ln_pmf = |j: u64| ln_choose(n, j) + j as f64 * q.ln() + (n - j) as f64 * (1.0 - q).ln();
    let odds = q / (1.0 - q);
    if k as f64 >= n as f64 * q {
        // At or above the mean: the terms fall from pmf(k) on; sum them relative to it.
        let (mut term, mut sum, mut j) = (1.0f64, 1.0f64, k);
        while j < n {
            term *= (n - j) as f64 / (j + 1) as f64 * odds;
            sum += term;
            j += 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (ln_pmf(k) + sum.ln()).exp().min(1.0)
    } else {
        // Below the mean: 1 − P(X ≤ k − 1), whose terms fall going down from k − 1.
        let (mut term, mut sum, mut j) = (1.0f64, 1.0f64, k - 1);
        while j > 0 {
            term *= j as f64 / (n - j + 1) as f64 / odds;
            sum += term;
            j -= 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (1.0 - (ln_pmf(k - 1) + sum.ln()).exp()).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail by brute force: every term, in f64.
    fn brute(n: u64, k: u64, q: f64) -> f64 {
        let mut pmf = vec![0f64; n as usize + 1];
        pmf[0] = (1.0 - q).powi(n as i32);
        for j in 1..=n as usize {
            pmf[j] = pmf[j - 1] * (n as usize - j + 1) as f64 / j as f64 * q / (1.0 - q);
        }
        pmf[k as usize..].iter().sum()
    }

    #[test]
    fn the_tail_matches_the_sum_of_its_terms() {
        for (n, q) in [(1u64, 0.5), (10, 0.5), (40, 0.25), (200, 0.5), (300, 0.25)] {
            for k in 0..=n + 1 {
                let (ours, expected) = (
                    binomial_upper_tail(n, k, q),
                    if k > n { 0.0 } else { brute(n, k, q) },
                );
                let tolerance = 1e-12 + 1e-9 * expected;
                assert!(
                    (ours - expected).abs() <= tolerance,
                    "n {n} k {k} q {q}: {ours} vs {expected}"
                );
            }
        }
        // Known values: P(Bin(10, ½) ≥ 8) = 56/1024; 8 heads of 8 is 2^-8.
        assert!((binomial_upper_tail(10, 8, 0.5) - 56.0 / 1024.0).abs() < 1e-15);
        assert!((binomial_upper_tail(8, 8, 0.5) - 1.0 / 256.0).abs() < 1e-15);
        // Far tails stay finite and positive: 1,600 of 2,000 fair coins is about 1e-172.
        let far = binomial_upper_tail(2000, 1600, 0.5);
        assert!(far > 0.0 && far < 1e-150, "{far}");
    }
}
