//! The node's `/metrics` (Prometheus text format): license state, requests and tokens by
//! outcome, engine throughput and queue, renewals, ledger, caps. Values come from the
//! same sources as `/v1/license`, so the two always agree.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use super::AppState;
use crate::metrics::{Exposition, Kind, Rate};
use crate::node::clock;
use crate::runtime::caps::CapExceeded;
use crate::runtime::lifecycle::Phase;

/// Counters the HTTP layer keeps.
pub struct NodeMetrics {
    /// Per outcome: requests, prompt tokens, completion tokens.
    outcomes: Mutex<BTreeMap<String, [u64; 3]>>,
    /// Engine tokens generated per second over the last 10 s.
    pub decode: Rate,
    /// The last cap event logged: (cap, reset time), so each is logged once.
    last_cap: Mutex<Option<(String, Option<chrono::DateTime<chrono::Utc>>)>>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            outcomes: Mutex::new(BTreeMap::new()),
            decode: Rate::new(Duration::from_secs(10)),
            last_cap: Mutex::new(None),
        }
    }
}

impl NodeMetrics {
    /// Count a finished request.
    pub fn request(&self, outcome: &str, prompt_tokens: u32, completion_tokens: u32) {
        let mut o = self.outcomes.lock().unwrap();
        let c = o.entry(outcome.to_string()).or_default();
        c[0] += 1;
        c[1] += u64::from(prompt_tokens);
        c[2] += u64::from(completion_tokens);
    }

    /// Log a cap refusal once per cap and window (the rest are counted, not logged).
    pub fn cap_refused(&self, e: &CapExceeded) {
        let key = (e.cap.to_string(), e.resets_at);
        let mut last = self.last_cap.lock().unwrap();
        if last.as_ref() != Some(&key) {
            tracing::warn!(
                cap = e.cap,
                limit = e.limit,
                resets_at = ?e.resets_at,
                "license cap reached: {e}; requests over it are refused with 429 until it resets"
            );
            *last = Some(key);
        }
    }
}

/// Render the page.
pub fn render(state: &AppState) -> String {
    let mut e = Exposition::new();
    let status = state.lifecycle.status();
    let b = &status.license.body;
    e.family(
        "leasehold_info",
        Kind::Gauge,
        "This node: version, model, license and licensee (value 1).",
    )
    .sample(
        "leasehold_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("model_id", &b.model.model_id),
            ("license_id", &b.license_id),
            ("licensee", &b.licensee),
            ("node_id", &b.node.node_id),
        ],
        1.0,
    );
    e.single(
        "leasehold_license_seconds_left",
        Kind::Gauge,
        "Seconds until the license expires (negative: in grace or lapsed).",
        status.seconds_left as f64,
    );
    e.single(
        "leasehold_license_seconds_to_lapse",
        Kind::Gauge,
        "Seconds until the grace period ends and the node stops serving.",
        status.seconds_to_lapse as f64,
    );
    e.single(
        "leasehold_license_expires_timestamp_seconds",
        Kind::Gauge,
        "When the license expires (Unix time).",
        b.expires_at.timestamp() as f64,
    );
    e.single(
        "leasehold_license_serial",
        Kind::Gauge,
        "Serial of the license in force.",
        b.serial as f64,
    );
    e.family(
        "leasehold_license_phase",
        Kind::Gauge,
        "1 for the phase the license is in (serving, grace, lapsed), 0 for the others.",
    );
    for phase in [Phase::Serving, Phase::Grace, Phase::Lapsed] {
        let value = f64::from(u8::from(status.phase == phase));
        e.sample(
            "leasehold_license_phase",
            &[("phase", phase.as_str())],
            value,
        );
    }
    e.single(
        "leasehold_license_revoked",
        Kind::Gauge,
        "1 once the license server revoked this node's license.",
        f64::from(u8::from(state.lifecycle.revoked().is_some())),
    );

    let outcomes = state.metrics.outcomes.lock().unwrap().clone();
    e.family(
        "leasehold_requests_total",
        Kind::Counter,
        "Inference requests since start, by outcome (ok, cancelled, refused:<code>).",
    );
    for (outcome, c) in &outcomes {
        e.sample(
            "leasehold_requests_total",
            &[("outcome", outcome)],
            c[0] as f64,
        );
    }
    e.family(
        "leasehold_tokens_total",
        Kind::Counter,
        "Prompt and completion tokens since start, by outcome.",
    );
    for (outcome, c) in &outcomes {
        for (kind, v) in [("prompt", c[1]), ("completion", c[2])] {
            e.sample(
                "leasehold_tokens_total",
                &[("kind", kind), ("outcome", outcome)],
                v as f64,
            );
        }
    }

    let stats = state.engine.stats();
    let generated = stats.generated_tokens.load(Ordering::Relaxed);
    e.single(
        "leasehold_generated_tokens_total",
        Kind::Counter,
        "Tokens the engine generated since start (all sequences).",
        generated as f64,
    );
    e.single(
        "leasehold_decode_tokens_per_second",
        Kind::Gauge,
        "Tokens generated per second over the last 10 seconds (all sequences together).",
        state.metrics.decode.per_second(generated),
    );
    e.single(
        "leasehold_queue_depth",
        Kind::Gauge,
        "Requests waiting for a sequence slot.",
        stats.waiting.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "leasehold_active_sequences",
        Kind::Gauge,
        "Sequences generating now.",
        stats.active.load(Ordering::Relaxed) as f64,
    );

    if let Some(renewer) = &state.renewal {
        let r = renewer.status();
        e.family(
            "leasehold_renewals_total",
            Kind::Counter,
            "Renewal attempts with the license server since start, by result (ok, failed, refused).",
        );
        for (result, v) in [
            ("ok", r.renewals),
            ("failed", r.failures),
            ("refused", r.refusals),
        ] {
            e.sample("leasehold_renewals_total", &[("result", result)], v as f64);
        }
        e.single(
            "leasehold_renewal_consecutive_failures",
            Kind::Gauge,
            "Renewal attempts that failed in a row (0 after a success).",
            f64::from(r.consecutive_failures),
        );
    }

    if let Some(ledger) = &state.ledger {
        let head = ledger.head();
        e.single(
            "leasehold_ledger_seq",
            Kind::Gauge,
            "Sequence number of the last usage ledger record on disk.",
            head.seq as f64,
        );
        e.single(
            "leasehold_ledger_lag_records",
            Kind::Gauge,
            "Ledger records submitted but not yet durable (their responses wait for them).",
            ledger.pending() as f64,
        );
    }

    let w = state.caps.windows(clock::system_now());
    e.family(
        "leasehold_usage",
        Kind::Gauge,
        "Requests and tokens counted against the license caps in the current UTC day and month.",
    );
    for (window, kind, v) in [
        ("day", "requests", w.day_requests),
        ("day", "tokens", w.day_tokens),
        ("month", "requests", w.month_requests),
        ("month", "tokens", w.month_tokens),
    ] {
        e.sample(
            "leasehold_usage",
            &[("window", window), ("kind", kind)],
            v as f64,
        );
    }
    let caps = &b.caps;
    e.family(
        "leasehold_cap_limit",
        Kind::Gauge,
        "The license's caps (only those it sets).",
    );
    for (cap, v) in [
        ("requests-per-day", caps.requests_per_day),
        ("requests-per-month", caps.requests_per_month),
        ("tokens-per-day", caps.tokens_per_day),
        ("tokens-per-month", caps.tokens_per_month),
        ("concurrent", caps.concurrent),
        ("context", caps.context),
    ] {
        if let Some(v) = v {
            e.sample("leasehold_cap_limit", &[("cap", cap)], v as f64);
        }
    }
    e.finish()
}
