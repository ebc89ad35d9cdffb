//! What the usage ledger costs a serving node: the same HTTP load (8 concurrent chat
//! clients) against `leasehold serve` with its ledger and with `--no-ledger`, in
//! alternating rounds (ledger first in odd rounds, last in even ones, so drift in the
//! machine's speed falls on both alike). Prints each round, then the means and the
//! throughput lost to the ledger.
//!
//!     cargo run --example bench_ledger_http -- LEASEHOLD_BIN WORKDIR MODEL_ID \
//!         [MAX_TOKENS] [REQUESTS_PER_CLIENT] [ROUNDS] [THREADS]
//!
//! WORKDIR holds `x.license` (from the DEMO root: `--no-ledger` is refused otherwise),
//! `m.sealed` and the node directory `node/`; scripts/bench.sh prepares it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

#[path = "support/load.rs"]
mod load;

const CLIENTS: usize = 8;

struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(bin: &str, work: &str, threads: &str, ledger: bool) -> Node {
        let mut args = vec![
            "serve",
            "--license",
            "x.license",
            "--sealed",
            "m.sealed",
            "--node-dir",
            "node",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            threads,
            "--parallel",
            "8",
        ];
        if !ledger {
            args.push("--no-ledger");
        }
        let mut child = Command::new(bin)
            .args(&args)
            .current_dir(work)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start leasehold serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("serve exited before it listened")
                .unwrap();
            if let Some(rest) = line.split(" on http://").nth(1) {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        };
        // Keep draining stdout so the node never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Node { child, base }
    }

    /// CPU time (ns) of the whole node and of its ledger writer thread so far.
    fn cpu_ns(&self) -> (u64, u64) {
        let (mut total, mut ledger) = (0, 0);
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).unwrap().flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let ns: u64 = read("schedstat")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            total += ns;
            if read("comm").trim() == "leasehold-ledge" {
                ledger += ns;
            }
        }
        (total, ledger)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_ledger_http LEASEHOLD_BIN WORKDIR MODEL_ID [MAX_TOKENS] [REQUESTS_PER_CLIENT] [ROUNDS] [THREADS]";
    let bin = std::fs::canonicalize(args.get(1).expect(usage)).expect("LEASEHOLD_BIN not found");
    let bin = bin.to_str().unwrap();
    let work = args.get(2).expect(usage);
    let model = args.get(3).expect(usage);
    let max_tokens: u64 = args.get(4).map_or(32, |v| v.parse().unwrap());
    let per_client: usize = args.get(5).map_or(8, |v| v.parse().unwrap());
    let rounds: usize = args.get(6).map_or(3, |v| v.parse().unwrap());
    let threads = args.get(7).map_or("2", |v| v.as_str());
    let http = load::http_client();
    println!(
        "{CLIENTS} clients x {per_client} chat completions (max_tokens {max_tokens}), {rounds} rounds, --threads {threads}"
    );
    // Tokens/s and requests/s per mode.
    let mut results: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    // With the ledger: node CPU ns, ledger thread CPU ns, requests.
    let mut ledger_cpu = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for ledger in order {
            let node = Node::start(bin, work, threads, ledger);
            // Warm-up: one request, not counted.
            load::chat_clients(&http, &node.base, model, 1, 1, 4).await;
            let before = node.cpu_ns();
            let l =
                load::chat_clients(&http, &node.base, model, CLIENTS, per_client, max_tokens).await;
            let after = node.cpu_ns();
            node.stop();
            if ledger {
                ledger_cpu.0 += after.0 - before.0;
                ledger_cpu.1 += after.1 - before.1;
                ledger_cpu.2 += l.requests as u64;
            }
            println!(
                "round {} {:9}: {} requests, {} tokens in {:.2} s = {:.1} tokens/s, {:.2} requests/s; p50 {:.3} s, p99 {:.3} s",
                round + 1,
                if ledger { "ledger" } else { "no ledger" },
                l.requests,
                l.tokens,
                l.wall,
                l.tokens_per_s(),
                l.requests_per_s(),
                l.p(0.5),
                l.p(0.99)
            );
            results[usize::from(!ledger)].push((l.tokens_per_s(), l.requests_per_s(), l.p(0.5)));
        }
    }
    let mean = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len() as f64
    };
    let (with, without) = (&results[0], &results[1]);
    let (tw, tn) = (mean(with, |r| r.0), mean(without, |r| r.0));
    let (rw, rn) = (mean(with, |r| r.1), mean(without, |r| r.1));
    let (lw, ln) = (mean(with, |r| r.2), mean(without, |r| r.2));
    println!(
        "mean: ledger {tw:.1} tokens/s {rw:.2} req/s p50 {lw:.3} s; no ledger {tn:.1} tokens/s {rn:.2} req/s p50 {ln:.3} s"
    );
    println!(
        "throughput lost to the ledger: {:.2} % (tokens/s), {:.2} % (requests/s); p50 latency {:+.1} ms per request",
        100.0 * (1.0 - tw / tn),
        100.0 * (1.0 - rw / rn),
        1e3 * (lw - ln)
    );
    let spread = |v: &[(f64, f64, f64)]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r.0), hi.max(r.0)));
        format!("{lo:.1}..{hi:.1}")
    };
    println!(
        "tokens/s range over rounds: ledger {}, no ledger {}",
        spread(with),
        spread(without)
    );
    println!(
        "ledger writer thread: {:.1} us CPU per request, {:.3} % of the node's CPU time",
        ledger_cpu.1 as f64 / 1e3 / ledger_cpu.2.max(1) as f64,
        100.0 * ledger_cpu.1 as f64 / ledger_cpu.0.max(1) as f64
    );
}
