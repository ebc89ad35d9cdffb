//! License caps enforced on the node: requests and tokens per UTC day and month, from
//! the usage ledger's records (so they survive restarts), and concurrent requests.
//! The context cap is applied when the engine starts (`serve`, `run`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

use crate::license::Caps;

/// Requests and tokens (prompt + completion) in the current UTC day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    day: NaiveDate,
    month: (i32, u32),
    pub day_requests: u64,
    pub day_tokens: u64,
    pub month_requests: u64,
    pub month_tokens: u64,
}

impl Windows {
    pub fn new(now: DateTime<Utc>) -> Windows {
        Windows {
            day: now.date_naive(),
            month: (now.year(), now.month()),
            day_requests: 0,
            day_tokens: 0,
            month_requests: 0,
            month_tokens: 0,
        }
    }

    /// Move to `now`'s day and month, clearing windows that ended.
    fn roll(&mut self, now: DateTime<Utc>) {
        if (now.year(), now.month()) != self.month {
            self.month = (now.year(), now.month());
            self.month_requests = 0;
            self.month_tokens = 0;
        }
        if now.date_naive() != self.day {
            self.day = now.date_naive();
            self.day_requests = 0;
            self.day_tokens = 0;
        }
    }

    /// Count a request made at `at` (ignored unless it falls in the current windows).
    pub fn add(&mut self, at: DateTime<Utc>, tokens: u64) {
        if (at.year(), at.month()) == self.month {
            self.month_requests += 1;
            self.month_tokens += tokens;
            if at.date_naive() == self.day {
                self.day_requests += 1;
                self.day_tokens += tokens;
            }
        }
    }

    fn next_day(&self) -> DateTime<Utc> {
        let next = self.day.succ_opt().unwrap_or(self.day);
        Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).expect("midnight exists"))
    }

    fn next_month(&self) -> DateTime<Utc> {
        let (y, m) = if self.month.1 == 12 {
            (self.month.0 + 1, 1)
        } else {
            (self.month.0, self.month.1 + 1)
        };
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
            .single()
            .unwrap_or_else(|| self.next_day())
    }
}

/// A request refused by a cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the license caps {cap} at {limit}{}; {}", used.map(|u| format!(" and {u} are used")).unwrap_or_default(), resets_at.map(|t| format!("it resets at {}", crate::format::time::rfc3339(t))).unwrap_or_else(|| "retry when a running request finishes".into()))]
pub struct CapExceeded {
    pub cap: &'static str,
    pub limit: u64,
    pub used: Option<u64>,
    /// When the window resets (`None` for the concurrency cap).
    pub resets_at: Option<DateTime<Utc>>,
}

/// The node's cap state.
#[derive(Debug)]
pub struct CapGate {
    windows: Mutex<Windows>,
    in_flight: Arc<AtomicU64>,
}

/// Holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU64>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CapGate {
    pub fn new(windows: Windows) -> CapGate {
        CapGate {
            windows: Mutex::new(windows),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// May a new request start now under `caps`?
    pub fn admit(&self, caps: &Caps, now: DateTime<Utc>) -> Result<Permit, CapExceeded> {
        {
            let mut w = self.windows.lock().unwrap();
            w.roll(now);
            let checks = [
                (
                    "requests-per-day",
                    caps.requests_per_day,
                    w.day_requests,
                    w.next_day(),
                ),
                (
                    "tokens-per-day",
                    caps.tokens_per_day,
                    w.day_tokens,
                    w.next_day(),
                ),
                (
                    "requests-per-month",
                    caps.requests_per_month,
                    w.month_requests,
                    w.next_month(),
                ),
                (
                    "tokens-per-month",
                    caps.tokens_per_month,
                    w.month_tokens,
                    w.next_month(),
                ),
            ];
            for (cap, limit, used, resets) in checks {
                if let Some(limit) = limit {
                    if used >= limit {
                        return Err(CapExceeded {
                            cap,
                            limit,
                            used: Some(used),
                            resets_at: Some(resets),
                        });
                    }
                }
            }
        }
        let running = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = Permit(self.in_flight.clone());
        if let Some(limit) = caps.concurrent {
            if running >= limit {
                return Err(CapExceeded {
                    cap: "concurrent",
                    limit,
                    used: None,
                    resets_at: None,
                });
            }
        }
        Ok(permit)
    }

    /// Count a request that ran (answered or cancelled).
    pub fn record(&self, at: DateTime<Utc>, tokens: u64) {
        let mut w = self.windows.lock().unwrap();
        w.roll(at);
        w.add(at, tokens);
    }

    pub fn windows(&self, now: DateTime<Utc>) -> Windows {
        let mut w = self.windows.lock().unwrap();
        w.roll(now);
        *w
    }
}

/// Does a request with this ledger outcome count against the caps? Answered, filtered
/// and cancelled ones do (the model worked for them); refused ones do not.
pub fn counts(outcome: &str) -> bool {
    matches!(outcome, "ok" | "cancelled" | "filtered")
}

/// The current windows, counted from a ledger file's request records (answered or
/// cancelled), so caps hold across restarts.
pub fn windows_from_ledger(bytes: &[u8], now: DateTime<Utc>) -> Windows {
    use crate::ledger::record::{self, Entry};
    let mut windows = Windows::new(now);
    for parsed in record::each(bytes).flatten() {
        if let Entry::Request {
            prompt_tokens,
            completion_tokens,
            outcome,
            ..
        } = &parsed.body.entry
        {
            if counts(outcome) {
                windows.add(parsed.body.at, prompt_tokens + completion_tokens);
            }
        }
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn day_and_month_windows_reset_at_utc_boundaries() {
        let gate = CapGate::new(Windows::new(at("2026-11-30T10:00:00Z")));
        let caps = Caps {
            requests_per_day: Some(2),
            tokens_per_month: Some(100),
            ..Caps::default()
        };
        gate.record(at("2026-11-30T10:00:00Z"), 10);
        gate.record(at("2026-11-30T11:00:00Z"), 10);
        let e = gate.admit(&caps, at("2026-11-30T12:00:00Z")).unwrap_err();
        assert_eq!(e.cap, "requests-per-day");
        assert_eq!(e.resets_at, Some(at("2026-12-01T00:00:00Z")));
        // A new day (and month) starts fresh.
        assert!(gate.admit(&caps, at("2026-12-01T00:00:01Z")).is_ok());
        gate.record(at("2026-12-01T00:00:02Z"), 100);
        let e = gate.admit(&caps, at("2026-12-01T00:00:03Z")).unwrap_err();
        assert_eq!(e.cap, "tokens-per-month");
        assert_eq!(e.resets_at, Some(at("2027-01-01T00:00:00Z")));
    }

    #[test]
    fn concurrency_slots_are_returned_on_drop() {
        let gate = CapGate::new(Windows::new(at("2026-11-30T10:00:00Z")));
        let caps = Caps {
            concurrent: Some(1),
            ..Caps::default()
        };
        let now = at("2026-11-30T10:00:00Z");
        let first = gate.admit(&caps, now).unwrap();
        assert_eq!(gate.admit(&caps, now).unwrap_err().cap, "concurrent");
        drop(first);
        assert!(gate.admit(&caps, now).is_ok());
    }
}
