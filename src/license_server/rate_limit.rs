//! Rate limits for what anyone may send without credentials: enrollment submissions,
//! per source address and per organization. A token bucket per key, `N` per minute
//! with bursts of up to `N`.
//!
//! Kept in memory, per replica: behind a load balancer that spreads requests over `R`
//! replicas, a sender gets up to `R` times the rate. The source address is the TCP peer:
//! behind a proxy every submission shares the proxy's address, so rate-limit at the proxy
//! too (or raise `--enrollments-per-address`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Most keys tracked at once. When full, keys whose bucket has refilled are forgotten
/// (they are as if new); if none has, new keys wait, so a sender with endless addresses
/// or organization names cannot grow the table without bound.
const MAX_KEYS: usize = 100_000;

/// One limit: `per_minute` submissions per key (0: no limit).
pub struct RateLimit {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A bucket's level in exact units: one submission is [`COST`]; each key regains
/// `per_minute` units per nanosecond, so a submission per `60 s / per_minute`.
#[derive(Clone, Copy)]
struct Bucket {
    units: u128,
    at: Instant,
}

const COST: u128 = 60_000_000_000;

/// Over the limit: retry after this many seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RateLimit {
    pub fn per_minute(per_minute: u32) -> RateLimit {
        RateLimit {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.per_minute
    }

    fn full(&self) -> u128 {
        u128::from(self.per_minute) * COST
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(bucket.at).as_nanos();
        bucket
            .units
            .saturating_add(elapsed.saturating_mul(u128::from(self.per_minute)))
            .min(self.full())
    }

    /// Whether `key` could submit now, without counting anything (for limits that
    /// count only failures: check, then `take` on a failure).
    pub fn check(&self, key: &str, now: Instant) -> Result<(), RetryAfter> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let buckets = self.buckets.lock().unwrap();
        let Some(bucket) = buckets.get(key) else {
            return Ok(());
        };
        let units = self.refilled(*bucket, now);
        if units >= COST {
            return Ok(());
        }
        let nanos = (COST - units).div_ceil(u128::from(self.per_minute));
        Err(RetryAfter(
            u64::try_from(nanos.div_ceil(1_000_000_000))
                .unwrap_or(60)
                .max(1),
        ))
    }

    /// Count one submission for `key` at `now` (a monotonic time).
    pub fn take(&self, key: &str, now: Instant) -> Result<(), RetryAfter> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let full = self.full();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| self.refilled(*b, now) < full);
            if buckets.len() >= MAX_KEYS {
                return Err(RetryAfter(60));
            }
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            units: full,
            at: now,
        });
        let units = self.refilled(*bucket, now);
        if units >= COST {
            *bucket = Bucket {
                units: units - COST,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { units, at: now };
            let nanos = (COST - units).div_ceil(u128::from(self.per_minute));
            Err(RetryAfter(
                u64::try_from(nanos.div_ceil(1_000_000_000))
                    .unwrap_or(60)
                    .max(1),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_n_then_one_more_per_refill() {
        let limit = RateLimit::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.take("a", t0), Ok(()));
        }
        assert_eq!(limit.take("a", t0), Err(RetryAfter(20)));
        // Other keys have their own bucket.
        assert_eq!(limit.take("b", t0), Ok(()));
        // One token comes back every 20 s.
        assert_eq!(
            limit.take("a", t0 + Duration::from_secs(15)),
            Err(RetryAfter(5))
        );
        assert_eq!(limit.take("a", t0 + Duration::from_secs(21)), Ok(()));
        assert!(limit.take("a", t0 + Duration::from_secs(21)).is_err());
        // `check` counts nothing.
        let c = RateLimit::per_minute(1);
        assert!((0..5).all(|_| c.check("k", t0).is_ok()));
        assert_eq!(c.take("k", t0), Ok(()));
        assert_eq!(c.check("k", t0), Err(RetryAfter(60)));
        // No limit.
        let none = RateLimit::per_minute(0);
        assert!((0..1000).all(|_| none.take("a", t0).is_ok()));
    }
}
