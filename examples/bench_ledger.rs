//! Cost of the usage ledger per request: concurrent appenders (as concurrent HTTP
//! requests would be), each append returning only once its record is durable
//! (group commit + fdatasync), on this machine's disk.
//!
//!     cargo run --example bench_ledger -- [APPENDERS] [RECORDS_PER_APPENDER]

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold::ledger::record::Entry;
use leasehold::ledger::{CheckpointPolicy, Ledger};
use leasehold::node::NodeIdentity;

#[path = "support/load.rs"]
mod load;
use load::percentile;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let appenders: usize = args.get(1).map_or(8, |v| v.parse().unwrap());
    let per: usize = args.get(2).map_or(2000, |v| v.parse().unwrap());
    let dir = tempfile::TempDir::new().unwrap();
    let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
    let (ledger, _) = Ledger::open(
        &dir.path().join("usage.ledger"),
        &identity,
        CheckpointPolicy {
            every_records: 100,
            every: Duration::from_secs(60),
        },
    )
    .unwrap();
    let ledger = Arc::new(ledger);
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    ledger
                        .append(Entry::Request {
                            request_id: format!("chatcmpl-{a}-{i}"),
                            license_id: "0123456789abcdef0123456789abcdef".into(),
                            model_id: "smollm2".into(),
                            prompt_tokens: 42,
                            completion_tokens: 128,
                            outcome: leasehold::ledger::record::Outcome::Ok,
                            client_key: "1a2b3c4d".into(),
                            prompt_sha256: None,
                            filter_rule: None,
                        })
                        .await
                        .unwrap();
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    ledger.close().await;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let size = std::fs::metadata(dir.path().join("usage.ledger"))
        .unwrap()
        .len();
    println!(
        "{appenders} appenders x {per} records: {:.0} records/s, latency p50 {:.2} ms, p99 {:.2} ms; {:.0} bytes/record",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        size as f64 / latencies.len() as f64
    );
}
