//! HTTP load on a running node: 1, 4 and 8 concurrent clients, each sending chat
//! completions back to back. Prints total generated tokens/s and p50/p99 latency.
//!
//!     cargo run --example bench_http -- BASE_URL MODEL [MAX_TOKENS] [REQUESTS_PER_CLIENT]
//!
//! scripts/bench.sh starts `leasehold serve` and runs this against it.

#[path = "support/load.rs"]
mod load;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .expect("usage: bench_http BASE_URL MODEL [MAX_TOKENS] [REQUESTS]")
        .clone();
    let model = args.get(2).expect("model id").clone();
    let max_tokens: u64 = args.get(3).map_or(128, |v| v.parse().unwrap());
    let per_client: usize = args.get(4).map_or(4, |v| v.parse().unwrap());
    let http = load::http_client();
    println!("{base} model {model}, max_tokens {max_tokens}, {per_client} requests per client");
    for clients in [1usize, 4, 8] {
        let l = load::chat_clients(&http, &base, &model, clients, per_client, max_tokens).await;
        println!(
            "{clients} client(s): {} requests, {} tokens in {:.1} s = {:.1} tokens/s total; latency p50 {:.2} s, p99 {:.2} s",
            l.requests,
            l.tokens,
            l.wall,
            l.tokens_per_s(),
            l.p(0.5),
            l.p(0.99)
        );
    }
}
