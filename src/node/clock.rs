//! The one place that reads the system clock. Everything else takes `now` as an
//! argument, so tests can set it and reviews can find every use of wall-clock time.

use chrono::{DateTime, Utc};

/// The system's wall-clock time. Not trusted on its own: see [`super::trusted_time`].
pub fn system_now() -> DateTime<Utc> {
    Utc::now()
}

/// The monotonic clock: what lapse deadlines are scheduled on, so that changing the
/// system clock while running neither extends nor shortens a license.
///
/// Read from the kernel without going through the C library (`rustix` calls the vDSO or
/// the system call itself), so a library preloaded into the process to fake time
/// (`LD_PRELOAD=libfaketime`, as Debian's `faketime` does, which also slows or stops
/// the C library's monotonic clock) cannot slow it down. The result is an `Instant`
/// anchored at the first call, comparable with every other value of this function.
pub fn monotonic_now() -> std::time::Instant {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, std::time::Duration)> =
        std::sync::OnceLock::new();
    let (instant, kernel) = *ANCHOR.get_or_init(|| (std::time::Instant::now(), kernel_monotonic()));
    instant + kernel_monotonic().saturating_sub(kernel)
}

/// CLOCK_MONOTONIC as the kernel keeps it.
fn kernel_monotonic() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    std::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
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
        let elapsed = chrono::Duration::from_std(monotonic_now().duration_since(self.started))
            .unwrap_or(chrono::Duration::MAX);
        let served = self
            .base
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        served.max(system_now())
    }
}
