//! serve, run and status: the node at work.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{exit, progress, LicensedModel, Outcome, RunArgs, ServeArgs, StatusArgs};
use crate::fsutil;
use crate::ledger::prompt_hash::PromptSalt;
use crate::ledger::record::Entry;
use crate::ledger::{CheckpointPolicy, Ledger, LedgerError, LEDGER_FILE};
use crate::license::verify::authenticate;
use crate::license::{TrustRoots, MAX_LICENSE_BYTES};
use crate::node::NodeIdentity;
use crate::protocol::LicenseRef;
use crate::runtime::admission::assess_here;
use crate::runtime::caps::{self, CapGate};
use crate::runtime::engine::{
    ChatMessage, Engine, EngineConfig, Event, FinishReason, GenerateError, GenerateRequest, Prompt,
    SamplingParams,
};
use crate::runtime::lifecycle::{Lifecycle, Phase, StartError, Transition};
use crate::runtime::renewal::{fetch_license, FetchError, Renewer, ServerClient};
use crate::runtime::weights::{self, PageBacking};
use crate::seal::SealedModel;
use crate::server::{self, validation::Limits, AppState};

/// Read a secrets file: one token per line, `#` comments and blank lines ignored.
pub(super) fn read_tokens(path: &Path, what: &'static str) -> anyhow::Result<Vec<String>> {
    let bytes = fsutil::read_limited(path, 1 << 20, what)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        bail!("{} holds no {what}", path.display());
    }
    Ok(tokens)
}

fn engine_config(ctx: u32, threads: Option<i32>, parallel: u32) -> anyhow::Result<EngineConfig> {
    if !(16..=1 << 20).contains(&ctx) {
        bail!("--ctx {ctx} is outside 16 to 1048576 tokens");
    }
    if !(1..=64).contains(&parallel) {
        bail!("--parallel {parallel} is outside 1 to 64");
    }
    let mut config = EngineConfig {
        ctx,
        parallel,
        ..EngineConfig::default()
    };
    if let Some(t) = threads {
        if !(1..=1024).contains(&t) {
            bail!("--threads {t} is outside 1 to 1024");
        }
        config.threads = t;
    }
    Ok(config)
}

/// Start the engine and the lifecycle; a refusal becomes its documented exit code.
async fn start(
    licensed: &LicensedModel,
    config: &mut EngineConfig,
) -> Result<(Arc<Lifecycle>, Engine), (u8, String)> {
    let LicensedModel {
        license,
        sealed,
        node_dir,
    } = licensed;
    let fail = |e: anyhow::Error| (exit::ERROR, format!("{e:#}"));
    let identity = NodeIdentity::load(node_dir).map_err(|e| fail(e.into()))?;
    let bytes =
        fsutil::read_limited(license, MAX_LICENSE_BYTES, "license").map_err(|e| fail(e.into()))?;
    // The license's context cap bounds the context the engine is built with.
    if let Ok(license) = authenticate(&bytes, &TrustRoots::compiled_in()) {
        if let Some(cap) = license.body.caps.context {
            let cap = u32::try_from(cap).unwrap_or(u32::MAX).max(16);
            if cap < config.ctx {
                tracing::warn!(
                    "the license caps the context at {cap} tokens: using {cap} instead of --ctx {}",
                    config.ctx
                );
                config.ctx = cap;
            }
        }
    }
    let engine = Engine::start(config.clone()).map_err(|e| fail(anyhow::anyhow!(e)))?;
    let size = std::fs::metadata(sealed).map(|m| m.len()).unwrap_or(0);
    let bar = progress::bytes(size, "decrypting");
    match Lifecycle::start(&bytes, identity, sealed, engine.clone(), Some(bar)).await {
        Ok((lifecycle, report)) => {
            tracing::info!(
                "weights in memory: {} MiB decrypted in {:.2} s, loaded in {:.2} s ({}; {}); {}",
                report.bytes >> 20,
                report.decrypt.as_secs_f64(),
                report.load.as_secs_f64(),
                match report.backing {
                    PageBacking::HugePagesAdvised => "huge pages advised",
                    PageBacking::Regular => "4 KiB pages",
                },
                if report.mlocked {
                    "locked in RAM"
                } else {
                    "not locked: raise RLIMIT_MEMLOCK"
                },
                report.model_description
            );
            // The plaintext is in this process now: no core dumps, no same-user ptrace.
            if let Err(e) = weights::forbid_dumps() {
                tracing::warn!(
                    "cannot disable core dumps and same-user ptrace (PR_SET_DUMPABLE): {e}"
                );
            }
            Ok((lifecycle, engine))
        }
        Err(StartError::Refused(refusal)) => {
            engine.shutdown();
            Err((
                exit::for_refusal(&refusal),
                format!("refusing to start: {refusal}"),
            ))
        }
        Err(StartError::Load(e)) => {
            engine.shutdown();
            Err((exit::ERROR, format!("cannot load the model: {e}")))
        }
    }
}

/// With a license server: make sure the license file holds a license this node can
/// serve under, fetching one (and waiting for approval) when it does not.
async fn obtain_license(
    client: &ServerClient,
    licensed: &LicensedModel,
) -> Result<(), (u8, String)> {
    let fail = |e: anyhow::Error| (exit::ERROR, format!("{e:#}"));
    let identity = NodeIdentity::load(&licensed.node_dir).map_err(|e| fail(e.into()))?;
    let sealed = SealedModel::open(&licensed.sealed).map_err(|e| fail(e.into()))?;
    let model_id = sealed.header().model_id.clone();
    drop(sealed);
    let mut current = None;
    if licensed.license.exists() {
        let bytes = fsutil::read_limited(&licensed.license, MAX_LICENSE_BYTES, "license")
            .map_err(|e| fail(e.into()))?;
        let assessment = assess_here(&bytes, Some(&identity)).map_err(|e| fail(e.into()))?;
        if assessment.verdict.allows_serving() {
            return Ok(());
        }
        if let Some(l) = assessment.license {
            current = Some((
                LicenseRef {
                    license_id: l.body.license_id.clone(),
                    serial: l.body.serial,
                },
                l.body.licensee.clone(),
            ));
        }
        tracing::info!(
            "the license in {} cannot be served ({}); asking {} for a fresh one",
            licensed.license.display(),
            assessment.verdict.name(),
            client.url()
        );
    } else {
        tracing::info!(
            "no license at {}; asking {} for one",
            licensed.license.display(),
            client.url()
        );
    }
    fetch_license(
        client,
        &identity,
        &model_id,
        current,
        &licensed.license,
        std::time::Duration::from_secs(2),
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        FetchError::Refused { .. } => (exit::SERVER_REFUSED, e.to_string()),
        FetchError::Write { .. } => (exit::ERROR, e.to_string()),
    })
}

/// Apply the license deadlines (grace, then lapse and wipe) for as long as the process
/// runs. With `stop`, a lapse also asks the process to exit with the expired code.
fn watch_deadlines(lifecycle: Arc<Lifecycle>, stop: Option<mpsc::UnboundedSender<u8>>) {
    tokio::spawn(async move {
        loop {
            if let Some(Transition::Lapsed) = lifecycle.next_transition().await {
                lifecycle.wipe().await;
                if let Some(stop) = &stop {
                    let _ = stop.send(exit::EXPIRED);
                    return;
                }
            }
        }
    });
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The ledger `serve` records into, and its bytes as read at start (for the caps).
type OpenedLedger = (Option<Arc<Ledger>>, Vec<u8>);

/// Open the usage ledger `serve` records into (none with `--no-ledger`, which only a
/// demo-root license allows).
fn open_ledger(
    path: Option<&Path>,
    no_ledger: bool,
    node_dir: &Path,
    lifecycle: &Lifecycle,
) -> Result<OpenedLedger, (u8, String)> {
    if no_ledger {
        if !lifecycle.status().license.authority.is_demo() {
            return Err((
                exit::USAGE,
                "--no-ledger is for benchmarks with DEMO-root licenses only; this license comes from a vendor who requires the usage ledger".into(),
            ));
        }
        tracing::warn!("--no-ledger: requests are not recorded (benchmark mode)");
        return Ok((None, Vec::new()));
    }
    let path = path.map_or_else(|| node_dir.join(LEDGER_FILE), Path::to_path_buf);
    match Ledger::open(&path, lifecycle.identity(), CheckpointPolicy::default()) {
        Ok((ledger, opened)) => {
            tracing::info!(
                "usage ledger {}: {} records, {} requests so far",
                path.display(),
                opened.records,
                opened.totals.requests
            );
            Ok((Some(Arc::new(ledger)), opened.bytes))
        }
        Err(e) => {
            let code = match e {
                LedgerError::Damaged { .. } | LedgerError::RolledBack { .. } => {
                    exit::LEDGER_DAMAGED
                }
                _ => exit::ERROR,
            };
            Err((code, e.to_string()))
        }
    }
}

pub fn serve(args: ServeArgs) -> Outcome {
    let mut config = engine_config(args.ctx, args.threads, args.parallel)?;
    let api_keys = match &args.api_key_file {
        Some(p) => read_tokens(p, "API key")?,
        None => Vec::new(),
    };
    let admin_token = match &args.admin_token_file {
        Some(p) => Some(read_tokens(p, "admin token")?.remove(0)),
        None => None,
    };
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen '{}' is not an address like 127.0.0.1:8080",
            args.listen
        )
    })?;
    let rt = runtime()?;
    rt.block_on(async move {
        let client = args
            .license_server
            .as_deref()
            .map(ServerClient::new)
            .transpose()?;
        if let Some(client) = &client {
            if let Err((code, message)) = obtain_license(client, &args.licensed).await {
                super::report_error(&message);
                return Ok(code);
            }
        }
        let (lifecycle, engine) = match start(&args.licensed, &mut config).await {
            Ok(v) => v,
            Err((code, message)) => {
                super::report_error(&message);
                return Ok(code);
            }
        };
        let opened = open_ledger(
            args.ledger.as_deref(),
            args.no_ledger,
            &args.licensed.node_dir,
            &lifecycle,
        );
        let (ledger, ledger_bytes) = match opened {
            Ok(v) => v,
            Err((code, message)) => {
                engine.shutdown();
                super::report_error(&message);
                return Ok(code);
            }
        };
        let prompt_salt = if args.ledger_prompt_hash {
            Some(PromptSalt::load_or_create(&args.licensed.node_dir)?)
        } else {
            None
        };
        let caps = CapGate::new(caps::windows_from_ledger(
            &ledger_bytes,
            crate::node::clock::system_now(),
        ));
        let renewer = client.map(|client| {
            let renewer = Renewer::new(
                client,
                lifecycle.clone(),
                args.licensed.license.clone(),
                ledger.clone(),
            );
            tokio::spawn(renewer.clone().run());
            renewer
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let state = Arc::new(AppState {
            lifecycle: lifecycle.clone(),
            engine: engine.clone(),
            limits: Limits { ctx: config.ctx },
            api_keys,
            admin_token,
            renewal: renewer,
            ledger: ledger.clone(),
            prompt_salt,
            caps,
            metrics: Default::default(),
        });
        // Sample the engine's token counter each second for the decode rate.
        {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let generated = state.engine.stats().generated_tokens.load(std::sync::atomic::Ordering::Relaxed);
                    state.metrics.decode.observe(generated);
                }
            });
        }
        let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<u8>();
        watch_deadlines(lifecycle.clone(), args.exit_on_lapse.then(|| stop_tx.clone()));
        // SIGHUP: read the license file again and take it over if it is a valid renewal.
        {
            let lifecycle = lifecycle.clone();
            let path = args.licensed.license.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match fsutil::read_limited(&path, MAX_LICENSE_BYTES, "license") {
                        Ok(bytes) => match lifecycle.renew(&bytes).await {
                            Ok(l) => tracing::debug!("SIGHUP: license serial {} taken in", l.body.serial),
                            Err(e) => tracing::error!("SIGHUP: renewal refused, the current license stays in force: {e}"),
                        },
                        Err(e) => tracing::error!("SIGHUP: cannot read {}: {e}", path.display()),
                    }
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let code = Arc::new(std::sync::atomic::AtomicU8::new(exit::OK));
        let code_in = code.clone();
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
                Some(c) = stop_rx.recv() => { code_in.store(c, std::sync::atomic::Ordering::SeqCst); }
            }
        };
        // Announced only now: every signal handler is in place, so a stop right after
        // start still closes the ledger with a final checkpoint.
        let status = lifecycle.status();
        println!(
            "serving model '{}' on http://{} for '{}' (license {}, serial {}, {}, {} s left)",
            status.license.body.model.model_id,
            listener.local_addr().unwrap_or(listen),
            status.license.body.licensee,
            status.license.body.license_id,
            status.license.body.serial,
            status.phase.as_str(),
            status.seconds_left
        );
        if status.license.authority.is_demo() {
            tracing::warn!("this license chains to the DEMO root, whose secret key is public; it protects nothing");
        }
        let safeguards = status.license.body.safeguards_summary();
        if safeguards != "none" {
            tracing::info!("the license mandates: {safeguards}; applied to every answer");
        }
        axum::serve(listener, server::router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")?;
        if let Some(ledger) = &ledger {
            ledger.close().await;
        }
        let _ = engine.unload().await;
        engine.shutdown();
        let code = code.load(std::sync::atomic::Ordering::SeqCst);
        if code == exit::EXPIRED {
            tracing::warn!("license lapsed; exiting as --exit-on-lapse asks");
        }
        Ok(code)
    })
}

pub fn run(args: RunArgs) -> Outcome {
    let mut config = engine_config(args.ctx, args.threads, 1)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let (lifecycle, engine) = match start(&args.licensed, &mut config).await {
            Ok(v) => v,
            Err((code, message)) => {
                super::report_error(&message);
                return Ok(code);
            }
        };
        let recorder = match open_ledger(
            args.ledger.as_deref(),
            false,
            &args.licensed.node_dir,
            &lifecycle,
        ) {
            Ok((ledger, bytes)) => Recorder {
                ledger: ledger.expect("run always opens its ledger"),
                caps: CapGate::new(caps::windows_from_ledger(
                    &bytes,
                    crate::node::clock::system_now(),
                )),
                lifecycle: lifecycle.clone(),
            },
            Err((code, message)) => {
                engine.shutdown();
                super::report_error(&message);
                return Ok(code);
            }
        };
        watch_deadlines(lifecycle.clone(), None);
        let params = SamplingParams {
            max_tokens: args.max_tokens.min(config.ctx),
            temperature: args.temperature,
            top_p: 1.0,
            seed: args.seed,
            stop: Vec::new(),
        };
        let result = match &args.prompt {
            Some(text) => {
                let prompt = Prompt::Chat(vec![user(text)]);
                generate_to_stdout(&engine, &recorder, prompt, params.clone())
                    .await
                    .map(|_| ())
            }
            None => chat_loop(&engine, &recorder, params).await,
        };
        recorder.ledger.close().await;
        let _ = engine.unload().await;
        engine.shutdown();
        match result {
            Ok(()) => Ok(exit::OK),
            Err(e) if lifecycle.phase() == Phase::Lapsed => {
                eprintln!("\nerror: {e}");
                Ok(exit::EXPIRED)
            }
            Err(e) => Err(e),
        }
    })
}

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        content: text.to_string(),
    }
}

/// `run` records each answer in the usage ledger and obeys the license's caps, as
/// `serve` does for each request.
struct Recorder {
    ledger: Arc<Ledger>,
    caps: CapGate,
    lifecycle: Arc<Lifecycle>,
}

impl Recorder {
    async fn record(
        &self,
        prompt_tokens: u32,
        completion_tokens: u32,
        outcome: &str,
        filter_rule: Option<String>,
    ) -> anyhow::Result<()> {
        let license = self.lifecycle.status().license.body;
        let now = crate::node::clock::system_now();
        if caps::counts(outcome) {
            self.caps
                .record(now, u64::from(prompt_tokens) + u64::from(completion_tokens));
        }
        let entry = Entry::Request {
            request_id: format!("run-{}", hex::encode(crate::crypto::random::bytes::<12>())),
            license_id: license.license_id,
            model_id: license.model.model_id,
            prompt_tokens: u64::from(prompt_tokens),
            completion_tokens: u64::from(completion_tokens),
            outcome: outcome.to_string(),
            client_key: "cli".into(),
            prompt_sha256: None,
            filter_rule,
        };
        self.ledger
            .append(entry)
            .await
            .map(|_| ())
            .context("the usage ledger cannot record this answer")
    }
}

/// Generate and print tokens as they come, then record the answer; returns the text.
async fn generate_to_stdout(
    engine: &Engine,
    recorder: &Recorder,
    prompt: Prompt,
    params: SamplingParams,
) -> anyhow::Result<String> {
    let caps = recorder.lifecycle.status().license.body.caps;
    let _permit = match recorder.caps.admit(&caps, crate::node::clock::system_now()) {
        Ok(permit) => permit,
        Err(exceeded) => {
            recorder
                .record(0, 0, "refused:license_cap_exceeded", None)
                .await?;
            bail!("{exceeded}");
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine.submit(GenerateRequest {
        prompt,
        params,
        events: tx,
    })?;
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    let mut prompt_tokens = 0;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => {
                print!("{t}");
                let _ = stdout.flush();
                text.push_str(&t);
            }
            Event::Finished {
                prompt_tokens,
                completion_tokens,
                reason,
                filter_rule,
            } => {
                println!();
                if reason == FinishReason::ContentFilter {
                    eprintln!(
                        "[the license's output filter ({}) ended this answer; the matched text was not shown]",
                        filter_rule.as_deref().unwrap_or("a rule")
                    );
                }
                recorder
                    .record(
                        prompt_tokens,
                        completion_tokens,
                        reason.ledger_outcome(),
                        filter_rule,
                    )
                    .await?;
                return Ok(text);
            }
            Event::Failed(e) => {
                let outcome = match e {
                    GenerateError::LicenseExpired => "refused:license_expired",
                    GenerateError::PromptTooLong { .. } => "refused:context_length_exceeded",
                    _ => "refused:engine_error",
                };
                recorder.record(prompt_tokens, 0, outcome, None).await?;
                bail!("{e}")
            }
            Event::Started { prompt_tokens: n } => prompt_tokens = n,
        }
    }
    bail!("the engine stopped")
}

async fn chat_loop(
    engine: &Engine,
    recorder: &Recorder,
    params: SamplingParams,
) -> anyhow::Result<()> {
    let lifecycle = &recorder.lifecycle;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if line_tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let mut history: Vec<ChatMessage> = Vec::new();
    eprintln!(
        "chat with '{}'; an empty line or end of input quits",
        lifecycle.status().license.body.model.model_id
    );
    loop {
        eprint!("> ");
        let Some(line) = line_rx.recv().await else {
            return Ok(());
        };
        let line = line.trim().to_string();
        if line.is_empty() {
            return Ok(());
        }
        history.push(user(&line));
        let prompt = Prompt::Chat(history.clone());
        let answer = generate_to_stdout(engine, recorder, prompt, params.clone()).await?;
        history.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
    }
}

pub fn status(args: StatusArgs) -> Outcome {
    let url = format!("{}/v1/license", args.url.trim_end_matches('/'));
    let rt = runtime()?;
    let body: Value = rt.block_on(async {
        let response = reqwest::get(&url).await.with_context(|| {
            format!("cannot reach a leasehold node at {url}; is `leasehold serve` running there?")
        })?;
        if !response.status().is_success() {
            bail!("{url} answered HTTP {}", response.status());
        }
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer with license JSON"))
    })?;
    let phase = body["phase"].as_str().unwrap_or("unknown").to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!(
            "{phase}: model '{}' for '{}', license {} serial {}, expires {} ({} s left), grace ends {}",
            body["model_id"].as_str().unwrap_or("?"),
            body["licensee"].as_str().unwrap_or("?"),
            body["license_id"].as_str().unwrap_or("?"),
            body["serial"],
            body["expires_at"].as_str().unwrap_or("?"),
            body["seconds_left"],
            body["grace_ends"].as_str().unwrap_or("?"),
        );
    }
    Ok(match phase.as_str() {
        "serving" => exit::OK,
        "grace" => exit::IN_GRACE,
        "lapsed" => exit::EXPIRED,
        _ => exit::ERROR,
    })
}
