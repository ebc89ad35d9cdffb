//! serve, run and status: the node at work.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::{exit, inspect, progress, LicensedModel, Outcome, RunArgs, ServeArgs};
use crate::fsutil;
use crate::http_auth::{read_admin_token, read_tokens};
use crate::ledger::prompt_hash::PromptSalt;
use crate::ledger::{CheckpointPolicy, Ledger, LedgerError, LEDGER_FILE};
use crate::license::verify::authenticate;
use crate::license::{TrustRoots, MAX_LICENSE_BYTES};
use crate::node::trusted_time::StateError;
use crate::node::NodeIdentity;
use crate::protocol::LicenseRef;
use crate::runtime::admission::{assess_here, NodeRecords, Refusal};
use crate::runtime::answer::{Answerer, Piece, Question};
use crate::runtime::engine::{
    ChatMessage, Engine, EngineConfig, FinishReason, Prompt, SamplingParams,
};
use crate::runtime::lifecycle::{Lifecycle, Phase, StartError, Transition};
use crate::runtime::renewal::{fetch_license, FetchError, ServerClient};
use crate::runtime::renewer::Renewer;
use crate::runtime::weights::PageBacking;
use crate::seal::SealedModel;
use crate::server::listener::{self, ConnectionLimits};
use crate::server::{self, validation::Limits, AppState};

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
    ledger: Option<&Path>,
    config: &mut EngineConfig,
) -> Result<(Arc<Lifecycle>, Engine), (u8, String)> {
    let LicensedModel {
        license,
        sealed,
        node_dir,
    } = licensed;
    let fail = |e: anyhow::Error| (exit::for_error(&e), format!("{e:#}"));
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
    let ledger = ledger.map(Path::to_path_buf);
    match Lifecycle::start(&bytes, identity, ledger, sealed, engine.clone(), Some(bar)).await {
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
            tracing::info!(
                "weights held once: {} MiB used in place from memory, {} MiB repacked by the CPU kernels (their {} MiB of decrypted pages released, in {:.2} s)",
                report.in_place >> 20,
                report.copied >> 20,
                report.released >> 20,
                report.residency.as_secs_f64()
            );
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
    ledger: Option<&Path>,
) -> Result<(), (u8, String)> {
    let fail = |e: anyhow::Error| (exit::for_error(&e), format!("{e:#}"));
    let identity = NodeIdentity::load(&licensed.node_dir).map_err(|e| fail(e.into()))?;
    let sealed = SealedModel::open(&licensed.sealed).map_err(|e| fail(e.into()))?;
    let model_id = sealed.header().model_id.clone();
    drop(sealed);
    let mut current = None;
    if licensed.license.exists() {
        let bytes = fsutil::read_limited(&licensed.license, MAX_LICENSE_BYTES, "license")
            .map_err(|e| fail(e.into()))?;
        let records = NodeRecords {
            identity: &identity,
            ledger,
        };
        let mut state_removed = false;
        let assessment = match assess_here(&bytes, Some(records)) {
            Ok(assessment) => assessment,
            // A TPM node's removed state comes back only from the license server's time.
            Err(Refusal::State(e @ StateError::RemovedFromTpmNode { .. })) => {
                tracing::warn!("{e}; asking {} for a license", client.url());
                state_removed = true;
                assess_here(&bytes, None).map_err(|e| (exit::for_refusal(&e), format!("{e:#}")))?
            }
            Err(e) => return Err((exit::for_refusal(&e), format!("{e:#}"))),
        };
        if assessment.verdict.allows_serving() && !state_removed {
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

/// Connections are file descriptors: let `--max-connections` of them open, up to the
/// hard limit the system allows.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
    }
}

pub fn serve(args: ServeArgs) -> Outcome {
    inspect::forbid_dumps()?;
    if let Err(code) = inspect::check_native() {
        return Ok(code);
    }
    let mut config = engine_config(args.ctx, args.threads, args.parallel)?;
    if args.batch < args.parallel {
        super::report_error(&format!(
            "--batch {} is below --parallel {}: every generating sequence puts one token into each decode call. Give --batch {} or more",
            args.batch, args.parallel, args.parallel
        ));
        return Ok(exit::USAGE);
    }
    config.batch = args.batch;
    config.prompt_chunk = args.prompt_chunk;
    let api_keys = match &args.api_key_file {
        Some(p) => read_tokens(p, "API key")?,
        None => Vec::new(),
    };
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(read_admin_token)
        .transpose()?;
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen '{}' is not an address like 127.0.0.1:8080",
            args.listen
        )
    })?;
    if !listen.ip().is_loopback() && api_keys.is_empty() && !args.allow_unauthenticated {
        super::report_error(&format!(
            "--listen {listen} is reachable from other machines and no --api-key-file is given: anyone who reaches it could use the model under your license. Give --api-key-file, or --allow-unauthenticated when a proxy in front authenticates clients"
        ));
        return Ok(exit::USAGE);
    }
    raise_open_files_limit();
    let limits = ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let client = args
            .license_server
            .as_deref()
            .map(ServerClient::new)
            .transpose()?;
        if let Some(client) = &client {
            if let Err((code, message)) = obtain_license(client, &args.licensed, args.ledger.as_deref()).await {
                super::report_error(&message);
                return Ok(code);
            }
        }
        let (lifecycle, engine) = match start(&args.licensed, args.ledger.as_deref(), &mut config).await {
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
        let answerer = Answerer::new(
            lifecycle.clone(),
            engine.clone(),
            ledger.clone(),
            &ledger_bytes,
            args.queue as usize,
        );
        let renewer = client.map(|client| {
            let renewer = Renewer::new(
                client,
                lifecycle.clone(),
                args.licensed.license.clone(),
                ledger.clone(),
            );
            tokio::spawn(renewer.clone().run());
            renewer.report_checkpoints(args.checkpoint_interval);
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
            answerer,
            prompt_salt,
            metrics: Default::default(),
            body_timeout: limits.header_timeout * 4,
            connections: Default::default(),
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
        let connections = state.connections.clone();
        let renewer = state.renewal.clone();
        listener::serve(listener, server::router(state), limits, connections, shutdown)
            .await
            .context("the HTTP server failed")?;
        if let Some(renewer) = &renewer {
            renewer.finish_reports().await;
        }
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
    inspect::forbid_dumps()?;
    if let Err(code) = inspect::check_native() {
        return Ok(code);
    }
    let mut config = engine_config(args.ctx, args.threads, 1)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let (lifecycle, engine) =
            match start(&args.licensed, args.ledger.as_deref(), &mut config).await {
                Ok(v) => v,
                Err((code, message)) => {
                    super::report_error(&message);
                    return Ok(code);
                }
            };
        let answerer = match open_ledger(
            args.ledger.as_deref(),
            false,
            &args.licensed.node_dir,
            &lifecycle,
        ) {
            Ok((ledger, bytes)) => {
                Answerer::new(lifecycle.clone(), engine.clone(), ledger, &bytes, 1)
            }
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
                answer_to_stdout(&answerer, prompt, params.clone())
                    .await
                    .map(|_| ())
            }
            None => chat_loop(&answerer, &lifecycle, params).await,
        };
        if let Some(ledger) = answerer.ledger() {
            ledger.close().await;
        }
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

/// Answer one prompt, printing tokens as they come (the same path, caps and usage
/// ledger records as `serve`); returns the text.
async fn answer_to_stdout(
    answerer: &Arc<Answerer>,
    prompt: Prompt,
    params: SamplingParams,
) -> anyhow::Result<String> {
    let question = Question {
        request_id: format!("run-{}", hex::encode(crate::crypto::random::bytes::<12>())),
        client_key: "cli".into(),
        prompt,
        params,
        prompt_sha256: None,
    };
    let mut answer = answerer.begin(question).await?;
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    while let Some(piece) = answer.next().await? {
        match piece {
            Piece::Text(t) => {
                print!("{t}");
                let _ = stdout.flush();
                text.push_str(&t);
            }
            Piece::Finished {
                reason,
                filter_rule,
                ..
            } => {
                println!();
                if reason == FinishReason::ContentFilter {
                    eprintln!(
                        "[the license's output filter ({}) ended this answer; the matched text was not shown]",
                        filter_rule.as_deref().unwrap_or("a rule")
                    );
                }
            }
        }
    }
    Ok(text)
}

async fn chat_loop(
    answerer: &Arc<Answerer>,
    lifecycle: &Lifecycle,
    params: SamplingParams,
) -> anyhow::Result<()> {
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
        let answer = answer_to_stdout(answerer, prompt, params.clone()).await?;
        history.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
    }
}
