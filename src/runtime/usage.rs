//! Usage counters of a running node, reported to the license server with each renewal
//! (the usage-ledger issue makes these durable, hash-chained records).

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::protocol::UsageCheckpoint;

/// Totals since the process started.
#[derive(Debug)]
pub struct UsageCounters {
    since: DateTime<Utc>,
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl UsageCounters {
    pub fn new(since: DateTime<Utc>) -> Self {
        UsageCounters {
            since: crate::format::time::whole_seconds(since),
            requests: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        }
    }

    /// Count one completed request.
    pub fn record(&self, prompt_tokens: u32, completion_tokens: u32) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(u64::from(prompt_tokens), Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(u64::from(completion_tokens), Ordering::Relaxed);
    }

    pub fn checkpoint(&self) -> UsageCheckpoint {
        UsageCheckpoint {
            since: Some(self.since),
            requests: self.requests.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }
}
