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

    /// Move forward to `now`'s day and month, clearing windows that ended. Windows
    /// only move forward: a clock set back keeps the current windows and their counts.
    fn roll(&mut self, now: DateTime<Utc>) {
        let month = (now.year(), now.month());
        if month > self.month {
            self.month = month;
            self.month_requests = 0;
            self.month_tokens = 0;
        }
        if now.date_naive() > self.day {
            self.day = now.date_naive();
            self.day_requests = 0;
            self.day_tokens = 0;
        }
    }

    /// The windows as they stand at `now` (moved forward if `now` is later).
    fn at(&self, now: DateTime<Utc>) -> Windows {
        let mut view = *self;
        view.roll(now);
        view
    }

    /// Count `requests` (0 or 1) and `tokens` of a request that ran at `at`. One from
    /// before the current windows (a clock set back while running) counts in the
    /// current ones, never in none.
    fn count(&mut self, at: DateTime<Utc>, requests: u64, tokens: u64) {
        self.roll(at);
        self.month_requests = self.month_requests.saturating_add(requests);
        self.month_tokens = self.month_tokens.saturating_add(tokens);
        self.day_requests = self.day_requests.saturating_add(requests);
        self.day_tokens = self.day_tokens.saturating_add(tokens);
    }

    /// Count `requests` and `tokens` recorded at `at` in the ledger, when recounting at
    /// start: only records in the current windows count (ledger times never go back).
    pub fn add(&mut self, at: DateTime<Utc>, requests: u64, tokens: u64) {
        if (at.year(), at.month()) == self.month {
            self.month_requests = self.month_requests.saturating_add(requests);
            self.month_tokens = self.month_tokens.saturating_add(tokens);
            if at.date_naive() == self.day {
                self.day_requests = self.day_requests.saturating_add(requests);
                self.day_tokens = self.day_tokens.saturating_add(tokens);
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
            // Judged without moving the windows: only counted requests move them.
            let w = self.windows.lock().unwrap().at(now);
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

    /// Count an admitted request and its prompt tokens.
    pub fn record(&self, at: DateTime<Utc>, tokens: u64) {
        self.windows.lock().unwrap().count(at, 1, tokens);
    }

    /// Count the completion tokens of a request already counted.
    pub fn record_tokens(&self, at: DateTime<Utc>, tokens: u64) {
        self.windows.lock().unwrap().count(at, 0, tokens);
    }

    pub fn windows(&self, now: DateTime<Utc>) -> Windows {
        self.windows.lock().unwrap().at(now)
    }
}

/// The current windows, counted from a ledger file's records, so caps hold across
/// restarts: each admitted request with its prompt tokens, the completion tokens of its
/// `completed` record, and single-record requests the model served (older ledgers).
pub fn windows_from_ledger(bytes: &[u8], now: DateTime<Utc>) -> Windows {
    use crate::ledger::record::{self, Entry};
    let mut windows = Windows::new(now);
    for parsed in record::each(bytes).flatten() {
        let at = parsed.body.at;
        match &parsed.body.entry {
            Entry::Request {
                prompt_tokens,
                completion_tokens,
                outcome,
                ..
            } if outcome.served() => {
                windows.add(at, 1, prompt_tokens.saturating_add(*completion_tokens))
            }
            Entry::Admitted { prompt_tokens, .. } => windows.add(at, 1, *prompt_tokens),
            Entry::Completed {
                completion_tokens, ..
            } => windows.add(at, 0, *completion_tokens),
            _ => {}
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
    fn a_clock_set_back_does_not_reset_the_windows() {
        let d = at("2026-11-30T10:00:00Z");
        let gate = CapGate::new(Windows::new(d));
        let caps = Caps {
            requests_per_day: Some(2),
            ..Caps::default()
        };
        gate.record(d, 1);
        gate.record(d, 1);
        // The next day admits (a new window) ...
        assert!(gate.admit(&caps, at("2026-12-01T10:00:00Z")).is_ok());
        // ... and going back to D finds D's two requests, not a fresh window.
        assert_eq!(
            gate.admit(&caps, d).unwrap_err().cap,
            "requests-per-day",
            "moving the clock back must not reset the day's count"
        );
    }

    #[test]
    fn requests_counted_under_a_clock_set_back_count_in_the_current_window() {
        let d1 = at("2026-12-01T10:00:00Z");
        let gate = CapGate::new(Windows::new(d1));
        let caps = Caps {
            requests_per_day: Some(2),
            ..Caps::default()
        };
        gate.record(d1, 1);
        // The clock is set back a day while running: the request still counts today.
        gate.record(at("2026-11-30T10:00:00Z"), 1);
        assert_eq!(gate.windows(d1).day_requests, 2);
        assert!(gate.admit(&caps, at("2026-11-30T10:00:00Z")).is_err());
        assert!(gate.admit(&caps, d1).is_err());
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
