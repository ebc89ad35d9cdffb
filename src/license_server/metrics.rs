//! The license server's `/metrics` (Prometheus text format): renewals by decision,
//! enrollments, ledger findings, errors, renewal latency, issuer certificate lifetime,
//! and requests rejected unanswered (replayed or time-skewed renewals, rate-limited
//! enrollments).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::Service;
use crate::metrics::{Exposition, Kind};
use crate::node::clock;

#[derive(Default)]
pub struct ServerMetrics {
    inner: Mutex<Counters>,
}

#[derive(Default, Clone)]
struct Counters {
    /// `renewed`, `pending`, `refused:<reason>`.
    renewals: BTreeMap<String, u64>,
    renewal_seconds: f64,
    renewal_count: u64,
    enrollments_new: u64,
    enrollments_repeated: u64,
    /// By finding kind.
    findings: BTreeMap<String, u64>,
    /// Requests answered with an error, by status class (`4xx`, `5xx`).
    errors: BTreeMap<String, u64>,
    /// Requests rejected before any decision, by (endpoint, reason).
    rejected: BTreeMap<(&'static str, &'static str), u64>,
}

impl ServerMetrics {
    pub fn renewal(&self, decision: &str, took: Duration) {
        let mut c = self.inner.lock().unwrap();
        *c.renewals.entry(decision.to_string()).or_default() += 1;
        c.renewal_seconds += took.as_secs_f64();
        c.renewal_count += 1;
    }

    pub fn enrollment(&self, new: bool) {
        let mut c = self.inner.lock().unwrap();
        if new {
            c.enrollments_new += 1;
        } else {
            c.enrollments_repeated += 1;
        }
    }

    pub fn finding(&self, kind: &str) {
        *self
            .inner
            .lock()
            .unwrap()
            .findings
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// A request rejected before any decision: `endpoint` (`renewals`, `enrollments`),
    /// `reason` (`replayed`, `time-skewed`, `rate-limited`).
    pub fn rejected(&self, endpoint: &'static str, reason: &'static str) {
        *self
            .inner
            .lock()
            .unwrap()
            .rejected
            .entry((endpoint, reason))
            .or_default() += 1;
    }

    pub fn error(&self, status: u16) {
        let class = format!("{}xx", status / 100);
        *self.inner.lock().unwrap().errors.entry(class).or_default() += 1;
    }
}

pub fn render(service: &Service) -> String {
    let c = service.metrics.inner.lock().unwrap().clone();
    let mut e = Exposition::new();
    e.family(
        "leasehold_server_info",
        Kind::Gauge,
        "This license server: version, issuer key and database (value 1).",
    )
    .sample(
        "leasehold_server_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("issuer", &service.issuer.key_id()),
            ("database", service.store.kind()),
        ],
        1.0,
    );
    e.single(
        "leasehold_server_issuer_certificate_seconds_left",
        Kind::Gauge,
        "Seconds until the issuer certificate expires (renewals stop then; certify the server again before).",
        (service.issuer.not_after() - clock::system_now()).num_seconds() as f64,
    );
    e.family(
        "leasehold_server_renewals_total",
        Kind::Counter,
        "Renewal requests answered since start, by decision (renewed, pending, refused) and refusal reason.",
    );
    for (decision, n) in &c.renewals {
        let (decision, reason) = decision.split_once(':').unwrap_or((decision, ""));
        e.sample(
            "leasehold_server_renewals_total",
            &[("decision", decision), ("reason", reason)],
            *n as f64,
        );
    }
    e.single(
        "leasehold_server_renewal_seconds_sum",
        Kind::Counter,
        "Time spent answering renewal requests since start (divide by the count for the mean).",
        c.renewal_seconds,
    );
    e.single(
        "leasehold_server_renewal_seconds_count",
        Kind::Counter,
        "Renewal requests timed since start.",
        c.renewal_count as f64,
    );
    e.family(
        "leasehold_server_enrollments_total",
        Kind::Counter,
        "Enrollments received since start: new ones, and repeats of one already stored.",
    );
    e.sample(
        "leasehold_server_enrollments_total",
        &[("result", "new")],
        c.enrollments_new as f64,
    );
    e.sample(
        "leasehold_server_enrollments_total",
        &[("result", "repeated")],
        c.enrollments_repeated as f64,
    );
    e.family(
        "leasehold_server_ledger_findings_total",
        Kind::Counter,
        "Usage ledgers found replaced, gone backwards, forked or unconfirmed at renewal since start.",
    );
    for (kind, n) in &c.findings {
        e.sample(
            "leasehold_server_ledger_findings_total",
            &[("kind", kind)],
            *n as f64,
        );
    }
    e.family(
        "leasehold_server_rejected_requests_total",
        Kind::Counter,
        "Requests rejected before any decision since start, by endpoint and reason: renewals replayed (a nonce seen before) or time-skewed (sent_at more than 5 minutes from the server's clock), enrollments rate-limited.",
    );
    for ((endpoint, reason), n) in &c.rejected {
        e.sample(
            "leasehold_server_rejected_requests_total",
            &[("endpoint", endpoint), ("reason", reason)],
            *n as f64,
        );
    }
    e.family(
        "leasehold_server_errors_total",
        Kind::Counter,
        "Requests answered with an HTTP error since start, by status class.",
    );
    for (class, n) in &c.errors {
        e.sample(
            "leasehold_server_errors_total",
            &[("class", class)],
            *n as f64,
        );
    }
    e.finish()
}
