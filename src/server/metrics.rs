//! The node's `/metrics` (Prometheus text format): license state, requests and tokens by
//! outcome, engine throughput and queue, renewals, ledger, caps. Values come from the
//! same sources as `/v1/license`, so the two always agree.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::AppState;
use crate::metrics::{Exposition, Kind, Rate};
use crate::runtime::lifecycle::Phase;

/// What the HTTP layer measures itself (request counters live with the answerer).
pub struct NodeMetrics {
    /// Engine tokens generated per second over the last 10 s.
    pub decode: Rate,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            decode: Rate::new(Duration::from_secs(10)),
        }
    }
}

/// Render the page. Without `identify` (a client without the node's API key, when
/// it has keys) the licensee, model, license and node ids are left out.
pub fn render(state: &AppState, identify: bool) -> String {
    let mut e = Exposition::new();
    let status = state.lifecycle.status();
    let b = &status.license.body;
    let mut info = vec![("version", env!("CARGO_PKG_VERSION"))];
    if identify {
        info.extend([
            ("model_id", b.model.model_id.as_str()),
            ("license_id", b.license_id.as_str()),
            ("licensee", b.licensee.as_str()),
            ("node_id", b.node.node_id.as_str()),
        ]);
    }
    e.family(
        "leasehold_info",
        Kind::Gauge,
        "This node: version, model, license and licensee (value 1; names only to clients with an API key).",
    )
    .sample("leasehold_info", &info, 1.0);
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

    let outcomes: Vec<(String, [u64; 3])> = state
        .answerer
        .counters()
        .snapshot()
        .into_iter()
        .map(|(o, c)| (o.as_string(), c))
        .collect();
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
        "leasehold_cached_prompt_tokens_total",
        Kind::Counter,
        "Prompt tokens not decoded again: a finished sequence's KV cache already held them (the prompt prefix cache).",
        stats.cached_prompt_tokens.load(Ordering::Relaxed) as f64,
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
        state.answerer.waiting() as f64,
    );
    e.single(
        "leasehold_active_sequences",
        Kind::Gauge,
        "Sequences generating now.",
        stats.active.load(Ordering::Relaxed) as f64,
    );

    e.single(
        "leasehold_http_connections",
        Kind::Gauge,
        "Client connections open now.",
        state.connections.open.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "leasehold_http_connections_refused_total",
        Kind::Counter,
        "Connections closed at accept because --max-connections were open.",
        state.connections.refused.load(Ordering::Relaxed) as f64,
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

    if let Some(ledger) = state.answerer.ledger() {
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

    let w = state.answerer.caps().windows(state.lifecycle.clock().now());
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
