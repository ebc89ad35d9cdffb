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
