//! Side by side with llama.cpp's own llama-server, one server at a time, alternating:
//! the same model (plain GGUF for llama-server, sealed for `leasehold serve`), threads,
//! total context and slots.
//!
//!     cargo run --example bench_parity -- LEASEHOLD LLAMA_SERVER MODEL.gguf \
//!         [THREADS] [ROUNDS] [PARALLEL] [CTX_PER_SLOT]
//!
//! Per server and round: ready (process start to /health 200, decryption included for
//! leasehold), prompt processing (three unique ~500-word prompts, 1 token out:
//! prompt tokens/s and time to first token), one stream (128 tokens streamed: tokens/s
//! between the first and the last token), a prompt during a stream (a ~500-word prompt
//! sent after a 128-token stream's 16th token: the stream's longest pause between two
//! tokens and the prompt's time to first token), 8 clients (16 completions of 64 tokens: total
//! tokens/s) and memory after the run (VmHWM, RssAnon, RssFile, RssShmem, and every page
//! of leasehold's weights memfd, mapped or not: reading it needs root). Prints
//! each round, then medians and the ratio leasehold / llama-server. scripts/bench.sh
//! runs it; the README has its figures. `BENCH_PARITY_ONLY=leasehold` (or `llama-server`)
//! measures one side only; `BENCH_PARITY_LEASEHOLD_ARGS="--prompt-chunk 512"` adds flags
//! to leasehold's command line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Peer,
    Leasehold,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Peer => "llama-server",
            Kind::Leasehold => "leasehold",
        }
    }
}

#[derive(Default, Clone)]
struct Round {
    ready: f64,
    prompt_tps: f64,
    ttft: f64,
    prompt_tokens: u64,
    stream_tps: f64,
    pause: f64,
    loaded_ttft: f64,
    clients_tps: f64,
    hwm_mb: f64,
    anon_mb: f64,
    file_mb: f64,
    shmem_mb: f64,
    memfd_mb: f64,
}

struct Setup {
    leasehold: PathBuf,
    peer: PathBuf,
    model: PathBuf,
    work: PathBuf,
    threads: u32,
    parallel: u32,
    ctx: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Enroll this machine, seal the model and issue a DEMO-root license, in `work`.
fn prepare(setup: &Setup) -> f64 {
    let lh = |args: &[&str]| {
        let mut c = Command::new(&setup.leasehold);
        c.current_dir(&setup.work).args(args);
        c
    };
    run_ok(&mut lh(&[
        "enroll",
        "--node-dir",
        "node",
        "--out",
        "node.enroll",
    ]));
    let started = Instant::now();
    run_ok(lh(&["seal"]).arg(&setup.model).args([
        "--model-id",
        "bench",
        "--out",
        "m.sealed",
        "--key-out",
        "m.key",
    ]));
    let seal = started.elapsed().as_secs_f64();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key");
    run_ok(lh(&["issue", "--key"]).arg(root).args([
        "--enrollment",
        "node.enroll",
        "--sealed",
        "m.sealed",
        "--content-key",
        "m.key",
        "--licensee",
        "Bench",
        "--expires",
        "+4h",
        "--out",
        "x.license",
    ]));
    seal
}

fn start(setup: &Setup, kind: Kind, port: u16, log: &Path) -> Child {
    let threads = setup.threads.to_string();
    let mut command = match kind {
        Kind::Peer => {
            let mut c = Command::new(&setup.peer);
            c.arg("-m")
                .arg(&setup.model)
                .args(["-t", &threads, "-tb", &threads])
                .args(["-c", &(setup.ctx * setup.parallel).to_string()])
                .args(["-np", &setup.parallel.to_string()])
                .args(["-b", "512", "-ub", "512", "--host", "127.0.0.1"])
                .args(["--port", &port.to_string(), "--no-webui"]);
            c
        }
        Kind::Leasehold => {
            let mut c = Command::new(&setup.leasehold);
            c.current_dir(&setup.work)
                .args(["serve", "--license", "x.license", "--sealed", "m.sealed"])
                .args(["--node-dir", "node", "--threads", &threads])
                .args(["--ctx", &setup.ctx.to_string()])
                .args(["--parallel", &setup.parallel.to_string()])
                .args(["--listen", &format!("127.0.0.1:{port}")]);
            // More flags for leasehold, to compare settings (`--prompt-chunk 512`).
            if let Ok(extra) = std::env::var("BENCH_PARITY_LEASEHOLD_ARGS") {
                c.args(extra.split_whitespace());
            }
            c
        }
    };
    let log = std::fs::File::create(log).unwrap();
    command
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Pages held by the server's weights memfds (leasehold), mapped or not: RssShmem counts
/// only the mapped ones. Reading another process's fds needs root (it is not dumpable).
fn memfd_mb(pid: u32) -> f64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0.0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:leasehold-weights"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.blocks() as f64 * 512.0 / (1024.0 * 1024.0))
        .fold(0.0, |a, b| a + b)
}

fn status_mb(pid: u32) -> [f64; 4] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    [
        kb("VmHWM:"),
        kb("RssAnon:"),
        kb("RssFile:"),
        kb("RssShmem:"),
    ]
}

/// A prompt of about `words` words, unique by `tag` from its first token (so no server
/// can reuse a cached prefix).
fn prompt(tag: &str, words: usize) -> String {
    const TEXT: &str = "the keeper climbed the stairs of the old lighthouse while the storm \
        pushed grey waves against the rocks and the lamp turned slowly above the harbour \
        where fishing boats waited for the morning tide to carry them out to sea";
    let w: Vec<&str> = TEXT.split(' ').filter(|s| !s.is_empty()).collect();
    let mut out = format!("{tag}:");
    for i in 0..words {
        out.push(' ');
        out.push_str(w[(i * 7 + tag.len()) % w.len()]);
    }
    out
}

async fn complete(http: &reqwest::Client, base: &str, body: Value) -> (f64, Value) {
    let t = Instant::now();
    let v: Value = http
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}: the server did not answer (crashed?): {e}"))
        .json()
        .await
        .unwrap();
    assert!(v["usage"].is_object(), "no usage in {v}");
    (t.elapsed().as_secs_f64(), v)
}

/// Streamed completion of 128 tokens: when each content chunk arrived. After the
/// `signal.0`-th chunk, `signal.1` fires.
async fn stream_times(
    http: &reqwest::Client,
    base: &str,
    tag: &str,
    mut signal: Option<(usize, tokio::sync::oneshot::Sender<()>)>,
) -> Vec<Instant> {
    let body = json!({"model": "bench", "prompt": format!("{tag}: Once upon a time, in a lighthouse by the sea,"),
        "max_tokens": 128, "temperature": 0.8, "seed": 7, "stream": true});
    let mut response = http
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}: the server did not answer (crashed?): {e}"));
    let mut times = Vec::new();
    let mut pending = String::new();
    while let Some(bytes) = response
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("{base}: the stream broke off (crashed?): {e}"))
    {
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                times.push(Instant::now());
                if signal.as_ref().is_some_and(|(n, _)| times.len() == *n) {
                    let _ = signal.take().unwrap().1.send(());
                }
            }
        }
    }
    assert!(times.len() > 1, "{base}: fewer than 2 streamed chunks");
    times
}

/// Streamed completion: tokens per second between the first and the last content chunk.
async fn stream_tps(http: &reqwest::Client, base: &str, tag: &str) -> f64 {
    let times = stream_times(http, base, tag, None).await;
    (times.len() - 1) as f64 / (times[times.len() - 1] - times[0]).as_secs_f64()
}

/// A ~500-word prompt (1 token out) sent while a stream of 128 tokens runs, after its
/// 16th token: the stream's longest pause between two tokens, and the prompt's time to
/// its first token.
async fn prompt_under_load(http: &reqwest::Client, base: &str, tag: &str) -> (f64, f64) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stream = {
        let (http, base, tag) = (http.clone(), base.to_string(), format!("{tag}s"));
        tokio::spawn(async move { stream_times(&http, &base, &tag, Some((16, tx))).await })
    };
    rx.await.expect("the stream ended before its 16th token");
    let (ttft, _) = complete(
        http,
        base,
        json!({"model": "bench", "prompt": prompt(&format!("{tag}p"), 500), "max_tokens": 1, "temperature": 0}),
    )
    .await;
    let times = stream.await.unwrap();
    let pause = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    (pause, ttft)
}

async fn measure(setup: &Setup, kind: Kind, round: usize) -> Round {
    let port = free_port();
    let log = setup.work.join(format!("{}-{round}.log", kind.name()));
    let started = Instant::now();
    let mut child = start(setup, kind, port, &log);
    let base = format!("http://127.0.0.1:{port}");
    // A fresh connection per request: a pooled keep-alive connection that the server
    // closes just as it is reused fails the request ("error sending request"), which
    // llama-server's HTTP library did here after some requests (and looked like a hang).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1200))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ready = loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                break started.elapsed().as_secs_f64();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited ({status}) before it was ready: {}",
                kind.name(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut r = Round {
        ready,
        ..Round::default()
    };
    // Warm-up, not measured.
    complete(
        &http,
        &base,
        json!({"model": "bench", "prompt": "Hello", "max_tokens": 4}),
    )
    .await;

    let (mut tps, mut ttft) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let tag = format!("r{round}p{i}{}", kind.name());
        let (secs, v) = complete(
            &http,
            &base,
            json!({"model": "bench", "prompt": prompt(&tag, 500), "max_tokens": 1, "temperature": 0}),
        )
        .await;
        let n = v["usage"]["prompt_tokens"].as_u64().unwrap();
        r.prompt_tokens = n;
        tps.push(n as f64 / secs);
        ttft.push(secs);
    }
    r.prompt_tps = median(tps);
    r.ttft = median(ttft);

    let mut s = Vec::new();
    for i in 0..2 {
        s.push(stream_tps(&http, &base, &format!("r{round}s{i}{}", kind.name())).await);
    }
    r.stream_tps = median(s);

    let (mut pauses, mut ttfts) = (Vec::new(), Vec::new());
    for i in 0..2 {
        let (pause, ttft) =
            prompt_under_load(&http, &base, &format!("r{round}u{i}{}", kind.name())).await;
        pauses.push(pause);
        ttfts.push(ttft);
    }
    r.pause = median(pauses);
    r.loaded_ttft = median(ttfts);

    let wall = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let http = http.clone();
            let base = base.clone();
            let kind = kind.name();
            tokio::spawn(async move {
                let mut tokens = 0;
                for k in 0..2 {
                    let body = json!({"model": "bench", "max_tokens": 64, "temperature": 0.8, "seed": c * 10 + k,
                        "prompt": format!("{kind} round {round} client {c} request {k}: Tell me a story about a lighthouse.")});
                    let (_, v) = complete(&http, &base, body).await;
                    tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
                }
                tokens
            })
        })
        .collect();
    let mut tokens = 0;
    for t in tasks {
        tokens += t.await.unwrap();
    }
    r.clients_tps = tokens as f64 / wall.elapsed().as_secs_f64();

    [r.hwm_mb, r.anon_mb, r.file_mb, r.shmem_mb] = status_mb(child.id());
    r.memfd_mb = memfd_mb(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    r
}

fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let wanted = [
        "avx",
        "f16c",
        "fma",
        "avx2",
        "avx512f",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
    ];
    let have: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| flags.contains(w))
        .collect();
    format!("{model}; {} cores; {}", num_cpus(), have.join(" "))
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A line of the first log of `kind` that contains `needle`.
fn log_line(work: &Path, kind: Kind, needle: &str) -> String {
    std::fs::read_to_string(work.join(format!("{}-0.log", kind.name())))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().chars().take(300).collect())
        .unwrap_or_else(|| format!("(no '{needle}' line)"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench_parity LEASEHOLD LLAMA_SERVER MODEL.gguf [THREADS] [ROUNDS] [PARALLEL] [CTX_PER_SLOT]");
        std::process::exit(2);
    }
    let work = tempfile::Builder::new()
        .prefix("bench-parity-")
        .tempdir()
        .unwrap();
    // Kept afterwards, with both servers' logs (the path is printed at the end).
    let work = work.keep();
    let arg = |i: usize, default: u32| args.get(i).map_or(default, |v| v.parse().unwrap());
    let setup = Setup {
        leasehold: std::fs::canonicalize(&args[1]).unwrap(),
        peer: std::fs::canonicalize(&args[2]).unwrap(),
        model: std::fs::canonicalize(&args[3]).unwrap(),
        work: work.clone(),
        threads: arg(4, 2),
        parallel: arg(6, 8),
        ctx: arg(7, 1024),
    };
    let rounds = arg(5, 2) as usize;
    let model_mb = std::fs::metadata(&setup.model).unwrap().len() as f64 / 1048576.0;
    println!(
        "model {} ({model_mb:.0} MiB); {} threads, {} slots x {} tokens of context; {rounds} rounds, alternating",
        setup.model.display(),
        setup.threads,
        setup.parallel,
        setup.ctx
    );
    println!("machine: {}", cpu_flags());
    let seal = prepare(&setup);
    println!("seal: {seal:.2} s");

    let mut results: Vec<(Kind, Round)> = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Kind::Peer, Kind::Leasehold]
        } else {
            [Kind::Leasehold, Kind::Peer]
        };
        // BENCH_PARITY_ONLY=leasehold|llama-server measures one side (to finish a run
        // in which the other stopped answering; the summary then has no ratios).
        let only = std::env::var("BENCH_PARITY_ONLY").ok();
        for kind in order {
            if only.as_deref().is_some_and(|o| o != kind.name()) {
                continue;
            }
            let r = measure(&setup, kind, round).await;
            println!(
                "round {round} {:>12}: ready {:.2} s | prompt {} tokens: {:.0} tokens/s, first token {:.3} s | 1 stream {:.1} tokens/s | prompt during a stream: pause {:.3} s, first token {:.3} s | 8 clients {:.1} tokens/s | VmHWM {:.0} MiB, RssAnon {:.0}, RssFile {:.0}, RssShmem {:.0}, memfd {:.0}",
                kind.name(), r.ready, r.prompt_tokens, r.prompt_tps, r.ttft, r.stream_tps, r.pause, r.loaded_ttft, r.clients_tps,
                r.hwm_mb, r.anon_mb, r.file_mb, r.shmem_mb, r.memfd_mb
            );
            results.push((kind, r));
        }
    }
    let version = Command::new(&setup.peer).arg("--version").output().unwrap();
    println!(
        "llama-server: {} (scripts/llama-server.sh: CMake Release, GGML_NATIVE=ON, AMX off)",
        String::from_utf8_lossy(&version.stderr)
            .trim()
            .replace('\n', "; ")
    );
    println!(
        "leasehold: {}",
        log_line(&setup.work, Kind::Leasehold, "CPU kernels")
    );
    println!("logs: {}", setup.work.display());
    let of = |kind: Kind, f: fn(&Round) -> f64| {
        median(
            results
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, r)| f(r))
                .collect(),
        )
    };
    type Metric = (&'static str, fn(&Round) -> f64, &'static str);
    let metrics: [Metric; 12] = [
        ("ready (s)", |r| r.ready, "<= 1.5 (SmolLM2), 1.15 (others)"),
        ("prompt tokens/s", |r| r.prompt_tps, ">= 0.97"),
        ("time to first token (s)", |r| r.ttft, ""),
        ("1-stream tokens/s", |r| r.stream_tps, ">= 0.97"),
        (
            "prompt during a stream: the stream's longest pause (s)",
            |r| r.pause,
            "",
        ),
        (
            "prompt during a stream: its first token (s)",
            |r| r.loaded_ttft,
            "",
        ),
        ("8-client tokens/s", |r| r.clients_tps, ">= 1.0"),
        ("peak RSS, VmHWM (MiB)", |r| r.hwm_mb, ""),
        ("RssAnon (MiB)", |r| r.anon_mb, ""),
        ("RssShmem (MiB)", |r| r.shmem_mb, ""),
        ("weights memfd, all pages (MiB)", |r| r.memfd_mb, ""),
        (
            "held: RssAnon + RssFile + memfd (MiB)",
            |r| r.anon_mb + r.file_mb + r.memfd_mb,
            "",
        ),
    ];
    println!(
        "\n| median of {rounds} | llama-server | leasehold | ratio | target |\n|---|---|---|---|---|"
    );
    for (name, f, target) in metrics {
        let (p, l) = (of(Kind::Peer, f), of(Kind::Leasehold, f));
        let ratio = if p > 0.0 && l.is_finite() {
            format!("{:.2}", l / p)
        } else {
            "-".into()
        };
        println!("| {name} | {p:.2} | {l:.2} | {ratio} | {target} |");
    }
}
