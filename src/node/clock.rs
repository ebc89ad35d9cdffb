//! The one place that reads the system clock. Everything else takes `now` as an
//! argument, so tests can set it and reviews can find every use of wall-clock time.

use chrono::{DateTime, Utc};

/// The system's wall-clock time. Not trusted on its own: see [`super::trusted_time`].
pub fn system_now() -> DateTime<Utc> {
    Utc::now()
}

/// The monotonic clock: what lapse deadlines are scheduled on, so that changing the
/// system clock while running neither extends nor shortens a license.
pub fn monotonic_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Trusted time while a node runs: the wall clock, but never behind the high-water mark
/// the node started from plus the monotonic time elapsed since. Winding the wall clock
/// back (or freezing it) therefore does not slow this clock down.
#[derive(Debug, Clone, Copy)]
pub struct TrustedClock {
    base: DateTime<Utc>,
    started: std::time::Instant,
}

impl TrustedClock {
    /// Start from `floor` (the node's high-water mark and other trusted times), or the
    /// wall clock when it is ahead.
    pub fn start(floor: Option<DateTime<Utc>>) -> TrustedClock {
        let now = system_now();
        TrustedClock {
            base: floor.map_or(now, |f| f.max(now)),
            started: monotonic_now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed =
            chrono::Duration::from_std(self.started.elapsed()).unwrap_or(chrono::Duration::MAX);
        let served = self
            .base
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        served.max(system_now())
    }
}
