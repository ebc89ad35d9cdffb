//! Renewals per second one license server sustains, and their latency, with 1,000
//! simulated nodes: each node is a real node identity with a real enrollment, approved
//! and holding a license; the load generator sends signed renewal requests from many
//! connections at once and checks that every answer is a renewal.
//!
//!     cargo run --example bench_renewals -- (sqlite | POSTGRES_URL) [NODES] [CONCURRENCY] [SECONDS]
//!
//! It starts `leasehold license-server` (the binary built next to this example) on
//! loopback as a separate process. Requests are signed before the timed phase so that
//! the generator's own signing does not compete with the server for the CPU; each one
//! still carries its own nonce and the server verifies and answers each.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use leasehold::crypto::signing::SecretKey;
use leasehold::crypto::{keyfile, ContentKey};
use leasehold::license::issue::certify;
use leasehold::license::IssuerCertBody;
use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse, LicenseRequest};
use leasehold::node::hardware::HardwareProfile;
use leasehold::node::{clock, NodeIdentity};
use leasehold::protocol::{self, LicenseRef, UsageCheckpoint};
use leasehold::seal::Header;
use serde_json::{json, Value};

#[path = "support/load.rs"]
mod load;
use load::percentile;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let db_arg = args
        .get(1)
        .expect("usage: bench_renewals (sqlite | POSTGRES_URL) [NODES] [CONCURRENCY] [SECONDS]")
        .clone();
    let nodes: usize = args.get(2).map_or(1000, |v| v.parse().unwrap());
    let concurrency: usize = args.get(3).map_or(64, |v| v.parse().unwrap());
    let seconds: u64 = args.get(4).map_or(10, |v| v.parse().unwrap());
    let dir = tempfile::TempDir::new().unwrap();
    let p = dir.path();
    let db = if db_arg == "sqlite" {
        format!("sqlite:{}", p.join("server.db").display())
    } else {
        db_arg.clone()
    };

    // Vendor: issuer certified by the demo root; a model header and its key.
    let root = keyfile::read_secret_key(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
    )
    .unwrap();
    let issuer = SecretKey::generate();
    let now = clock::system_now();
    let cert = certify(
        &root,
        &IssuerCertBody {
            version: 1,
            issuer_key: issuer.public_key().to_bytes(),
            orgs: vec!["Bench Org".into()],
            models: vec!["bench".into()],
            not_before: leasehold::format::time::whole_seconds(now),
            not_after: leasehold::format::time::whole_seconds(now + chrono::Duration::days(30)),
            max_lease_seconds: 3600,
        },
    )
    .unwrap();
    keyfile::write(
        &p.join("issuer.key"),
        keyfile::KeyKind::Ed25519Secret,
        &issuer.to_bytes(),
        "bench issuer",
    )
    .unwrap();
    std::fs::write(p.join("issuer.cert"), cert.render()).unwrap();
    let token = "bench-admin-token-0123456789abcdef";
    std::fs::write(p.join("admin.token"), token).unwrap();
    let key = ContentKey::generate();
    let header = Header {
        segment_size: leasehold::seal::header::DEFAULT_SEGMENT,
        plaintext_len: 4096,
        plaintext_sha256: [7; 32],
        key_id: key.key_id(),
        nonce_prefix: [1; 7],
        model_id: "bench".into(),
    };

    // The server, as its own process.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("leasehold");
    let mut server = Command::new(&bin)
        .args([
            "license-server",
            "--issuer-key",
            "issuer.key",
            "--issuer-cert",
            "issuer.cert",
            "--db",
            &db,
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            "admin.token",
            // Enrolls 1,000 nodes from one address at once.
            "--enrollments-per-address",
            "0",
            "--enrollments-per-org",
            "0",
        ])
        .current_dir(p)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; run `cargo build` first",
                bin.display()
            )
        });
    let line = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let base = format!(
        "http://{}",
        line.split(" on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = |path: &str, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.json::<Value>().await.unwrap()
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    admin(
        "/admin/models",
        json!({"header": b64.encode(header.encode()), "content_key": b64.encode(key.as_bytes())}),
    )
    .await;
    admin(
        "/admin/entitlements",
        json!({"org": "Bench Org", "models": ["bench"], "nodes": nodes, "term_end": now + chrono::Duration::days(1), "lease_seconds": 600, "grace_seconds": 60}),
    )
    .await;

    // 1,000 nodes: identity, enrollment, approval, first license.
    let setup = Instant::now();
    let profile = HardwareProfile::collect(None);
    let mut identities = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let (identity, _) = NodeIdentity::load_or_create(&p.join(format!("node{i}"))).unwrap();
        let doc = enrollment::create(
            &identity,
            &profile,
            &BindingChoice::default(),
            DeclaredUse::default(),
            Some(LicenseRequest {
                organization: "Bench Org".into(),
                model_id: "bench".into(),
            }),
            now,
        )
        .unwrap();
        let r = http
            .post(format!("{base}/v1/enrollments"))
            .body(doc.render())
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        admin(
            &format!(
                "/admin/enrollments/{}/approve",
                v["enrollment_id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
        identities.push(identity);
    }
    println!(
        "{} database, {nodes} nodes enrolled and approved in {:.1} s; {concurrency} connections for {seconds} s",
        if db_arg == "sqlite" { "sqlite" } else { "postgres" },
        setup.elapsed().as_secs_f64()
    );

    // Pre-signed requests, round-robin over the nodes; signed now, so they are within
    // the server's request window (5 minutes) when sent.
    let now = clock::system_now();
    let per_task = 4000usize;
    let mut pools: Vec<Vec<String>> = vec![Vec::with_capacity(per_task); concurrency];
    for (i, pool) in pools.iter_mut().enumerate() {
        for j in 0..per_task {
            let identity = &identities[(i * per_task + j) % nodes];
            let (request, _) = protocol::sign_request(
                identity,
                "bench",
                Some(LicenseRef {
                    license_id: "0".repeat(32),
                    serial: 0,
                }),
                UsageCheckpoint::default(),
                now,
            );
            pool.push(request.render());
        }
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = pools
        .into_iter()
        .map(|pool| {
            let http = http.clone();
            let url = format!("{base}/v1/renewals");
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for request in pool {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    let r = http.post(&url).body(request).send().await.unwrap();
                    assert!(r.status().is_success());
                    let body = r.bytes().await.unwrap();
                    assert!(
                        body.windows(18).any(|w| w == b"\"status\":\"renewed\""),
                        "not a renewal: {}",
                        String::from_utf8_lossy(&body)
                    );
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
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
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "renewals: {} in {elapsed:.1} s = {:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    let _ = server.kill();
    let _ = server.wait();
}
