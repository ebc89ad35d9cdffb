//! The inference engine: one thread that owns the llama.cpp backend, the model and its
//! context, fed by a channel. Several sequences decode together in one batch
//! (continuous batching, `--parallel` slots); requests beyond the slots wait in a queue.
//!
//! The engine never sees a license. The lifecycle tells it to load (decrypt into a
//! memfd and map it) and to unload (drop context, drop model, wipe the memfd), and
//! every request that is running when it unloads ends with `LicenseExpired`.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::output_filter::{FilterStream, Filtered};
use super::prefix_cache::PrefixCache;
use super::residency;
use super::safeguards::{Safeguards, Watermark};
use super::sampling::Direct;
use super::text::{StopMatcher, Utf8Collector};
use super::weights::{self, DecryptedWeights, LockPlan, PageBacking};
use crate::crypto::ContentKey;
use crate::seal::{Progress, SealedModel};
use crate::watermark::Params;

/// Engine settings, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context length per sequence, in tokens.
    pub ctx: u32,
    /// CPU threads for decoding.
    pub threads: i32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// Largest number of tokens in one decode call (llama.cpp's n_batch and n_ubatch).
    pub batch: u32,
    /// Most prompt tokens in one decode call while other sequences are generating: their
    /// next tokens wait for that call, so this bounds the pause a long prompt puts into
    /// the streams already running. With no sequence generating, a prompt takes `batch`.
    pub prompt_chunk: u32,
    /// How llama.cpp may hold the weights.
    pub repack: Repack,
}

/// What happens to the decrypted pages of tensors llama.cpp's CPU kernels copy (Q4_0,
/// Q4_K, IQ4_NL, … on x86) into repacked layouts that are faster to multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repack {
    /// Repack what the kernels can, then release the decrypted memfd pages the copies
    /// replace (runtime::residency): the weights are held once. While loading, both
    /// exist for a moment.
    #[default]
    Release,
    /// Repack, and keep the pages the copies replace (the weights are held twice; for
    /// tests and diagnosis).
    KeepPages,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ctx: 2048,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            parallel: 4,
            batch: 512,
            prompt_chunk: 128,
            repack: Repack::Release,
        }
    }
}

/// A chat message as the OpenAI API carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub enum Prompt {
    /// Messages rendered through the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text (completions).
    Text(String),
}

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u32>,
    pub stop: Vec<String>,
}

/// What a generation reports, in order: `Started`, any number of `Text`, then
/// `Finished` or `Failed` (`Failed` may also come first).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        prompt_tokens: u32,
    },
    Text(String),
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        /// With `ContentFilter`: the license's rule that matched.
        filter_rule: Option<String>,
    },
    Failed(GenerateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// The license's output filter matched: the matched text was never sent.
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// The usage ledger's outcome for an answer that finished this way: `filtered`
    /// when the license's output filter ended it, `ok` otherwise.
    pub fn ledger_outcome(self) -> &'static str {
        match self {
            FinishReason::ContentFilter => "filtered",
            FinishReason::Stop | FinishReason::Length => "ok",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "the license has lapsed: the model was unloaded and its weights wiped; renew the license"
    )]
    LicenseExpired,
    #[error("the prompt is {tokens} tokens, but the context holds {limit}; shorten it")]
    PromptTooLong { tokens: u32, limit: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the model has no usable chat template: {0}")]
    Template(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A request to generate; events go to `events` (dropping its receiver cancels).
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub events: tokio_mpsc::UnboundedSender<Event>,
}

/// What loading took.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub bytes: u64,
    /// Bytes of tensors llama.cpp reads in place from the memfd.
    pub in_place: u64,
    /// Bytes of tensors it copied (repacked) into its own buffers.
    pub copied: u64,
    /// Bytes of memfd pages released because their tensors were copied.
    pub released: u64,
    /// Time spent finding the copied tensors and releasing their pages.
    pub residency: Duration,
    pub decrypt: Duration,
    pub load: Duration,
    pub backing: PageBacking,
    pub mlocked: bool,
    pub model_description: String,
}

enum Command {
    Generate(GenerateRequest),
    Load {
        sealed: PathBuf,
        key: ContentKey,
        safeguards: Arc<Safeguards>,
        progress: Option<indicatif::ProgressBar>,
        reply: oneshot::Sender<Result<LoadReport, String>>,
    },
    /// A renewed license's safeguards, for requests admitted from now on.
    Safeguards(Arc<Safeguards>),
    Unload {
        reply: oneshot::Sender<()>,
    },
    Shutdown,
}

/// Live counters of the engine thread (for `/metrics`).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Tokens generated since start.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens ingested since start.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens not decoded since start: a finished sequence's KV cells already
    /// held them (runtime::prefix_cache).
    pub cached_prompt_tokens: AtomicU64,
    /// Requests waiting for a sequence slot.
    pub waiting: AtomicU64,
    /// Sequences generating now.
    pub active: AtomicU64,
}

/// The handle the rest of the program holds.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    stats: Arc<EngineStats>,
}

/// The engine thread has exited (it failed to start, or was shut down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the inference engine is not running")]
pub struct EngineGone;

impl Engine {
    /// Start the engine thread (llama.cpp backend initialised there).
    pub fn start(config: EngineConfig) -> Result<Engine, String> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("leasehold-engine".into())
            .spawn(move || {
                let backend = match backend() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                engine_main(backend, &config, &rx, &thread_stats);
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the engine thread died while starting".to_string())??;
        Ok(Engine { tx, stats })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn submit(&self, request: GenerateRequest) -> Result<(), EngineGone> {
        self.tx
            .send(Command::Generate(request))
            .map_err(|_| EngineGone)
    }

    /// Decrypt `sealed` with `key` into memory and load it; every generation then
    /// applies `safeguards`. Blocks the caller only through the returned receiver.
    pub fn load(
        &self,
        sealed: PathBuf,
        key: ContentKey,
        safeguards: Arc<Safeguards>,
        progress: Option<indicatif::ProgressBar>,
    ) -> oneshot::Receiver<Result<LoadReport, String>> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Load {
            sealed,
            key,
            safeguards,
            progress,
            reply,
        };
        if let Err(mpsc::SendError(Command::Load { reply, .. })) = self.tx.send(command) {
            let _ = reply.send(Err(EngineGone.to_string()));
        }
        rx
    }

    /// Apply `safeguards` (a renewed license's) to requests admitted from now on.
    pub fn set_safeguards(&self, safeguards: Arc<Safeguards>) {
        let _ = self.tx.send(Command::Safeguards(safeguards));
    }

    /// End running requests, drop the model and wipe its weights.
    pub fn unload(&self) -> oneshot::Receiver<()> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Unload { reply });
        rx
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// Check llama.cpp's libraries, load the CPU kernels for this machine and initialise
/// llama.cpp (runtime::backends), once per process: `serve`, `run`, `check` and the
/// watermark detector call it before any key is unwrapped.
pub fn init_native() -> Result<(), String> {
    backend().map(|_| ())
}

/// llama.cpp's backend is process-global: initialised once, shared by every engine.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: std::sync::OnceLock<Result<LlamaBackend, String>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let kernels = super::backends::load().map_err(|e| e.to_string())?;
            tracing::info!(
                "CPU kernels: {} (score {}, from {})",
                kernels.variant,
                kernels.score,
                kernels.dir.display()
            );
            // llama.cpp's own logging is already silenced (backends::load).
            LlamaBackend::init().map_err(|e| format!("cannot initialise llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A model's vocabulary without its weights, for tokenizing outside the engine (the
/// watermark detector).
pub struct Vocabulary {
    model: LlamaModel,
}

impl Vocabulary {
    /// Load only the vocabulary of the GGUF at `path`.
    pub fn load(path: &std::path::Path) -> Result<Vocabulary, String> {
        let backend = backend()?;
        let params = LlamaModelParams::default()
            .with_vocab_only(true)
            .with_use_mmap(false);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| format!("llama.cpp could not read the model's vocabulary: {e}"))?;
        Ok(Vocabulary { model })
    }

    /// Load the vocabulary of a sealed model: decrypt it into memory (never to
    /// storage), read the vocabulary, wipe the plaintext.
    pub fn load_sealed(sealed: &std::path::Path, key: &ContentKey) -> Result<Vocabulary, String> {
        let opened = SealedModel::open(sealed).map_err(|e| e.to_string())?;
        let weights = DecryptedWeights::decrypt(&opened, key, &crate::seal::no_progress)
            .map_err(|e| e.to_string())?;
        let vocabulary = Vocabulary::load(&weights.path());
        weights.wipe();
        vocabulary
    }

    /// The tokens of `text` as generated text (no BOS, special tokens as text).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }
}

/// How a loaded session ended.
enum SessionEnd {
    Unloaded(oneshot::Sender<()>),
    Shutdown,
}

fn engine_main(
    backend: &LlamaBackend,
    config: &EngineConfig,
    rx: &mpsc::Receiver<Command>,
    stats: &EngineStats,
) {
    while let Ok(command) = rx.recv() {
        match command {
            Command::Generate(req) => {
                let _ = req
                    .events
                    .send(Event::Failed(GenerateError::LicenseExpired));
            }
            Command::Unload { reply } => {
                let _ = reply.send(());
            }
            // Nothing is loaded: the next Load brings its own.
            Command::Safeguards(_) => {}
            Command::Shutdown => return,
            Command::Load {
                sealed,
                key,
                safeguards,
                progress,
                reply,
            } => {
                let loaded = match &progress {
                    Some(bar) => load(backend, config, &sealed, &key, &|n| bar.inc(n)),
                    None => load(backend, config, &sealed, &key, &crate::seal::no_progress),
                };
                if let Some(bar) = progress {
                    bar.finish_and_clear();
                }
                drop(key);
                let (weights, model, report) = match loaded {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                let end = match new_context(backend, &model, config) {
                    Ok(mut ctx) => {
                        let _ = reply.send(Ok(report));
                        let end = serve(&mut ctx, &model, config, rx, stats, safeguards);
                        stats.active.store(0, Ordering::Relaxed);
                        stats.waiting.store(0, Ordering::Relaxed);
                        end
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        SessionEnd::Unloaded(oneshot::channel().0)
                    }
                };
                // Wipe order: context (dropped above) → model → memfd.
                drop(model);
                weights.wipe();
                match end {
                    SessionEnd::Unloaded(reply) => {
                        let _ = reply.send(());
                    }
                    SessionEnd::Shutdown => return,
                }
            }
        }
    }
}

fn load(
    backend: &LlamaBackend,
    config: &EngineConfig,
    sealed_path: &std::path::Path,
    key: &ContentKey,
    progress: Progress,
) -> Result<(DecryptedWeights, LlamaModel, LoadReport), String> {
    let started = crate::node::clock::monotonic_now();
    let sealed = SealedModel::open(sealed_path).map_err(|e| e.to_string())?;
    // Decide before any plaintext exists whether it can be kept out of swap.
    let len = sealed.header().plaintext_len;
    let plan = weights::lock_plan(len, weights::mlock_limit(), weights::swap_active())?;
    match plan {
        LockPlan::Everything => weights::lock_everything().map_err(|e| {
            format!("swap is active and locking this process in RAM (mlockall) failed: {e}; turn swap off (`swapoff -a`) or check LimitMEMLOCK")
        })?,
        LockPlan::Unlocked => tracing::warn!(
            "the weights ({} MiB) will not be locked in RAM: RLIMIT_MEMLOCK is {} KiB. No swap is active now; if swap is ever turned on, raise the limit first (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in the systemd unit)",
            len >> 20,
            weights::mlock_limit().unwrap_or(0) >> 10
        ),
        LockPlan::Weights => {}
    }
    let mlock = plan != LockPlan::Unlocked;
    let weights = DecryptedWeights::decrypt(&sealed, key, progress).map_err(|e| e.to_string())?;
    drop(sealed);
    let decrypt = started.elapsed();
    let params = LlamaModelParams::default()
        .with_use_mmap(true)
        .with_use_mlock(mlock);
    let load_started = crate::node::clock::monotonic_now();
    // llama.cpp opens the path (twice) while loading; `weights` keeps the fd open.
    let model = LlamaModel::load_from_file(backend, weights.path(), &params)
        .map_err(|e| format!("llama.cpp could not load the decrypted model: {e}"))?;
    let load = load_started.elapsed();
    let residency_started = crate::node::clock::monotonic_now();
    let residency = match config.repack {
        Repack::Release => release_copied(&weights, &model, config.threads, true),
        Repack::KeepPages => release_copied(&weights, &model, config.threads, false),
    };
    let residency = residency.unwrap_or_else(|e| {
        tracing::warn!("the weights llama.cpp copied could not be found ({e}); their memfd pages are kept, so those weights are held twice");
        residency::Placement::default()
    });
    let report = LoadReport {
        in_place: residency.in_place,
        copied: residency.copied,
        released: residency.releasable_bytes(),
        bytes: weights.len(),
        decrypt,
        load,
        residency: residency_started.elapsed(),
        backing: weights.backing(),
        mlocked: mlock,
        model_description: format!(
            "{} parameters, {} layers",
            model.n_params(),
            model.n_layer()
        ),
    };
    Ok((weights, model, report))
}

fn new_context<'m>(
    backend: &LlamaBackend,
    model: &'m LlamaModel,
    config: &EngineConfig,
) -> Result<LlamaContext<'m>, String> {
    let mut params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.ctx.saturating_mul(config.parallel)))
        .with_n_seq_max(config.parallel)
        .with_n_batch(config.batch)
        .with_n_ubatch(config.batch)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads);
    // Sliding-window layers (Gemma 3: five in six) keep only their window in the KV
    // cache, as llama-server does, instead of the whole context (llama.cpp's library
    // default): less memory and less attention work per token. A finished sequence's
    // prefix is then reused only while its window is whole (runtime::prefix_cache).
    crate::sys::raw_context_params(&mut params).swa_full = false;
    model
        .new_context(backend, params)
        .map_err(|e| format!("cannot create a llama.cpp context: {e}"))
}

/// One running sequence.
struct Slot {
    seq: i32,
    events: tokio_mpsc::UnboundedSender<Event>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded.
    ingested: usize,
    /// Tokens in this sequence's KV cache.
    n_past: u32,
    /// The token to feed next (after the prompt).
    next: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this slot.
    logits_at: Option<i32>,
    sampler: Sampler,
    max_tokens: u32,
    generated: u32,
    utf8: Utf8Collector,
    stop: StopMatcher,
    /// The license's safeguards when this request was admitted.
    safeguards: Arc<Safeguards>,
    filter: Option<FilterStream>,
    /// The last tokens of the sequence (prompt, then generated): they seed the
    /// watermark's next step.
    recent: Vec<i32>,
    /// Tournament watermark: the step seeds (contexts) this generation has drawn marked.
    marked_contexts: HashSet<u64>,
    /// The tokens this sequence's KV cells hold, in order (for the prefix cache).
    history: Vec<i32>,
}

impl Slot {
    fn prompt_tokens(&self) -> u32 {
        self.prompt.len() as u32
    }

    /// Send text through the output filter; `Some(rule)` when a rule matched (the
    /// text before the match was sent, the match and the rest never are).
    fn emit(&mut self, text: String) -> Option<String> {
        let (send, blocked) = match self.filter.as_mut() {
            None => (text, None),
            Some(filter) => match filter.push(&text) {
                Filtered::Pass(pass) => (pass, None),
                Filtered::Blocked { before, rule } => (before, Some(rule)),
            },
        };
        if !send.is_empty() {
            let _ = self.events.send(Event::Text(send));
        }
        blocked
    }

    fn remember(&mut self, token: LlamaToken) {
        let keep = self.safeguards.watermark_context();
        if keep > 0 {
            self.recent.push(token.0);
            if self.recent.len() > keep {
                self.recent.remove(0);
            }
        }
    }

    fn finish(&mut self, mut reason: FinishReason, mut filter_rule: Option<String>) {
        if filter_rule.is_none() {
            let mut tail = self.utf8.finish();
            tail.push_str(&self.stop.finish());
            filter_rule = self.emit(tail);
            if filter_rule.is_some() {
                reason = FinishReason::ContentFilter;
            } else if let Some(held) = self.filter.as_mut().map(FilterStream::finish) {
                if !held.is_empty() {
                    let _ = self.events.send(Event::Text(held));
                }
            }
        }
        let _ = self.events.send(Event::Finished {
            reason,
            prompt_tokens: self.prompt_tokens(),
            completion_tokens: self.generated,
            filter_rule,
        });
    }
}

/// Reused across sampling steps: the biased logits, the candidate array and the
/// tournament's g-values.
#[derive(Default)]
struct MarkBuffers {
    logits: Vec<f32>,
    candidates: Vec<LlamaTokenData>,
    tournament: crate::watermark::tournament::Scratch,
    /// End-of-generation tokens: never biased by KGW, so that watermark does not make
    /// answers end sooner (they never appear in text, so detection does not miss them).
    eog: Vec<usize>,
}

/// Sample with the license's watermark. KGW: δ added to the green list's logits, then
/// the request's own sampler on the biased logits. Tournament: the request's own
/// distribution (temperature, `top_p`) reweighted by the tournament over this step's
/// g-values, then the request's own random draw; a context this generation already
/// used draws unmarked (watermark::tournament), and greedy requests have nothing to
/// draw (the argmax, unmarked).
fn sample_watermarked(
    ctx: &LlamaContext<'_>,
    at: i32,
    slot: &mut Slot,
    watermark: &Watermark,
    buffers: &mut MarkBuffers,
) -> LlamaToken {
    let MarkBuffers {
        logits,
        candidates,
        tournament: scratch,
        eog,
    } = buffers;
    let original = ctx.get_logits_ith(at);
    let seed = watermark.params.step_seed(&watermark.key, &slot.recent);
    match &watermark.params {
        Params::Kgw(kgw) => {
            logits.clear();
            logits.extend_from_slice(original);
            crate::watermark::kgw::bias(logits, seed, kgw);
            for &t in eog.iter().filter(|t| **t < original.len()) {
                logits[t] = original[t];
            }
            slot.sampler.sample_logits(logits, candidates)
        }
        Params::Tournament(tournament) => {
            let fresh = slot.marked_contexts.insert(seed);
            match &mut slot.sampler {
                Sampler::Direct(direct) if fresh => {
                    let mut reweight = |w: &mut [f32], tokens: Option<&[i32]>| {
                        crate::watermark::tournament::reweight(w, tokens, seed, tournament, scratch)
                    };
                    LlamaToken(direct.sample_with(original, Some(&mut reweight)) as i32)
                }
                _ => slot.sampler.sample(ctx, at),
            }
        }
    }
}

/// A request's sampler: greedy and plain temperature sampling read the logits directly
/// (runtime::sampling); nucleus sampling (`top_p` below 1) is llama.cpp's chain.
enum Sampler {
    Direct(Direct),
    Chain(LlamaSampler),
}

impl Sampler {
    /// The token drawn from the logits of batch index `at`.
    fn sample(&mut self, ctx: &LlamaContext<'_>, at: i32) -> LlamaToken {
        match self {
            Sampler::Direct(direct) => LlamaToken(direct.sample(ctx.get_logits_ith(at)) as i32),
            Sampler::Chain(chain) => chain.sample(ctx, at),
        }
    }

    /// The token drawn from `logits` (the watermark's biased copy); `candidates` is a
    /// reusable buffer for llama.cpp's chain.
    fn sample_logits(
        &mut self,
        logits: &[f32],
        candidates: &mut Vec<LlamaTokenData>,
    ) -> LlamaToken {
        match self {
            Sampler::Direct(direct) => LlamaToken(direct.sample(logits) as i32),
            Sampler::Chain(chain) => {
                candidates.clear();
                candidates.extend(
                    logits
                        .iter()
                        .enumerate()
                        .map(|(i, l)| LlamaTokenData::new(LlamaToken(i as i32), *l, 0.0)),
                );
                let mut array = LlamaTokenDataArray::new(std::mem::take(candidates), false);
                chain.apply(&mut array);
                // Every chain ends in a selecting sampler; fall back to the best logit.
                let token = array
                    .selected_token()
                    .unwrap_or_else(|| LlamaToken(Direct::Greedy.sample(logits) as i32));
                *candidates = array.data;
                token
            }
        }
    }
}

/// `direct_nucleus`: sample `top_p` below 1 in Rust too (the tournament watermark
/// reweights the nucleus, which llama.cpp's chain does not expose).
fn sampler_for(params: &SamplingParams, direct_nucleus: bool) -> Sampler {
    if params.temperature <= 0.0 {
        return Sampler::Direct(Direct::Greedy);
    }
    let seed = params
        .seed
        .unwrap_or_else(|| u32::from_le_bytes(crate::crypto::random::bytes::<4>()));
    if params.top_p >= 1.0 {
        return Sampler::Direct(Direct::temperature(params.temperature, u64::from(seed)));
    }
    if direct_nucleus {
        return Sampler::Direct(Direct::nucleus(
            params.top_p,
            params.temperature,
            u64::from(seed),
        ));
    }
    Sampler::Chain(LlamaSampler::chain_simple([
        LlamaSampler::top_p(params.top_p.clamp(0.0, 1.0), 1),
        LlamaSampler::temp(params.temperature),
        LlamaSampler::dist(seed),
    ]))
}

fn render_prompt(model: &LlamaModel, prompt: &Prompt) -> Result<(String, bool), GenerateError> {
    match prompt {
        Prompt::Text(text) => Ok((text.clone(), false)),
        Prompt::Chat(messages) => {
            let template = model
                .chat_template(None)
                .map_err(|e| GenerateError::Template(e.to_string()))?;
            let messages = messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| GenerateError::Template(e.to_string()))?;
            let text = model
                .apply_chat_template(&template, &messages, true)
                .map_err(|e| GenerateError::Template(e.to_string()))?;
            Ok((text, true))
        }
    }
}

/// A request tokenized and checked, not yet given a sequence.
struct Prepared {
    req: GenerateRequest,
    prompt: Vec<LlamaToken>,
}

/// Tokenize and check a request; `None` when it failed (already reported to the client).
fn prepare(model: &LlamaModel, config: &EngineConfig, req: GenerateRequest) -> Option<Prepared> {
    let fail = |e: GenerateError| {
        let _ = req.events.send(Event::Failed(e));
        None
    };
    let (text, special) = match render_prompt(model, &req.prompt) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let prompt = model.vocab().tokenize(text.as_bytes(), true, special);
    if prompt.is_empty() {
        return fail(GenerateError::EmptyPrompt);
    }
    if prompt.len() as u32 >= config.ctx {
        return fail(GenerateError::PromptTooLong {
            tokens: prompt.len() as u32,
            limit: config.ctx,
        });
    }
    Some(Prepared { req, prompt })
}

/// Keep the first `shared` tokens `seq`'s KV cells hold and drop the rest; how many
/// were kept (0 when the cache cannot drop a tail: the sequence is cleared).
fn reuse_prefix(
    ctx: &mut LlamaContext<'_>,
    cache: &mut PrefixCache,
    seq: usize,
    shared: usize,
) -> usize {
    let held = cache.held(seq);
    if shared == held {
        return shared;
    }
    if shared > 0
        && cache.prefix_survives(shared, ctx.kv_cache_seq_pos_min(seq as i32))
        && ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(shared as u32), None)
            .unwrap_or(false)
    {
        cache.truncate(seq, shared);
        return shared;
    }
    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
    cache.forget(seq);
    0
}

/// Start a prepared request in sequence `seq`, whose KV cells already hold the first
/// `reused` prompt tokens.
fn admit(prepared: Prepared, seq: i32, reused: usize, safeguards: &Arc<Safeguards>) -> Slot {
    let Prepared { req, prompt } = prepared;
    let _ = req.events.send(Event::Started {
        prompt_tokens: prompt.len() as u32,
    });
    let context = safeguards.watermark_context();
    let recent = prompt[prompt.len().saturating_sub(context)..]
        .iter()
        .map(|t| t.0)
        .collect();
    Slot {
        seq,
        sampler: sampler_for(
            &req.params,
            safeguards
                .watermark
                .as_ref()
                .is_some_and(|w| matches!(w.params, Params::Tournament(_))),
        ),
        events: req.events,
        history: prompt[..reused].iter().map(|t| t.0).collect(),
        prompt,
        ingested: reused,
        n_past: reused as u32,
        next: None,
        logits_at: None,
        max_tokens: req.params.max_tokens,
        generated: 0,
        utf8: Utf8Collector::default(),
        stop: StopMatcher::new(req.params.stop),
        filter: safeguards.filter.as_ref().map(|f| f.stream()),
        safeguards: safeguards.clone(),
        recent,
        marked_contexts: HashSet::new(),
    }
}

/// Waking from idle, the engine takes further requests until none has come for this
/// long (each costs a lone request at most this much before its prompt is decoded)…
const GATHER_GAP: Duration = Duration::from_millis(2);
/// …or this long has passed.
const GATHER_AT_MOST: Duration = Duration::from_millis(10);
/// How often the gathering looks for more.
const GATHER_POLL: Duration = Duration::from_micros(250);

fn serve(
    ctx: &mut LlamaContext<'_>,
    model: &LlamaModel,
    config: &EngineConfig,
    rx: &mpsc::Receiver<Command>,
    stats: &EngineStats,
    mut safeguards: Arc<Safeguards>,
) -> SessionEnd {
    let mut slots: Vec<Option<Slot>> = (0..config.parallel).map(|_| None).collect();
    let mut buffers = MarkBuffers {
        eog: (0..model.n_vocab())
            .filter(|t| model.vocab().is_eog(LlamaToken(*t)))
            .map(|t| t as usize)
            .collect(),
        ..MarkBuffers::default()
    };
    let mut waiting: VecDeque<GenerateRequest> = VecDeque::new();
    let mut batch = LlamaBatch::new(config.batch as usize, 1);
    let vocab = model.vocab();
    let mut cache = PrefixCache::new(
        slots.len(),
        crate::sys::sequences_can_drop_their_tail(model),
        crate::sys::sliding_window(model),
    );

    loop {
        // 1. Take commands: block when idle, otherwise only drain.
        let idle = slots.iter().all(Option::is_none) && waiting.is_empty();
        let mut incoming = Vec::new();
        if idle {
            match rx.recv() {
                Ok(c) => incoming.push(c),
                Err(_) => {
                    return end_all(
                        &mut slots,
                        waiting,
                        GenerateError::ShuttingDown,
                        SessionEnd::Shutdown,
                    )
                }
            }
            // Requests come in bursts (clients whose answers ended together send their
            // next ones together): gather the burst into the first decode call rather
            // than decode the first prompt alone and make the others wait a whole call.
            // Polled on the kernel's monotonic clock (node::clock), not with a timed
            // wait: a time-faking preload would stretch or skip those.
            let clock = crate::node::clock::monotonic_now;
            let (started, mut last) = (clock(), clock());
            loop {
                std::thread::sleep(GATHER_POLL);
                let now = clock();
                let before = incoming.len();
                incoming.extend(rx.try_iter());
                if incoming.len() > before {
                    last = now;
                }
                if now - last >= GATHER_GAP || now - started >= GATHER_AT_MOST {
                    break;
                }
            }
        }
        incoming.extend(rx.try_iter());
        for command in incoming {
            match command {
                Command::Generate(req) => waiting.push_back(req),
                Command::Safeguards(new) => safeguards = new,
                Command::Load { reply, .. } => {
                    let _ = reply.send(Err("a model is already loaded".into()));
                }
                Command::Unload { reply } => {
                    return end_all(
                        &mut slots,
                        waiting,
                        GenerateError::LicenseExpired,
                        SessionEnd::Unloaded(reply),
                    )
                }
                Command::Shutdown => {
                    return end_all(
                        &mut slots,
                        waiting,
                        GenerateError::ShuttingDown,
                        SessionEnd::Shutdown,
                    )
                }
            }
        }

        // 2. Drop cancelled sequences (the client went away) and admit waiting requests.
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.events.is_closed()) {
                let s = slot.take().unwrap();
                if !cache.keep(s.seq as usize, s.history) {
                    let _ = ctx.clear_kv_cache_seq(Some(s.seq as u32), None, None);
                }
            }
        }
        waiting.retain(|r| !r.events.is_closed());
        loop {
            let free: Vec<usize> = (0..slots.len()).filter(|i| slots[*i].is_none()).collect();
            if free.is_empty() {
                break;
            }
            let Some(req) = waiting.pop_front() else {
                break;
            };
            let Some(prepared) = prepare(model, config, req) else {
                continue;
            };
            let ids: Vec<i32> = prepared.prompt.iter().map(|t| t.0).collect();
            let (seq, shared) = cache.choose(&free, &ids);
            let reused = reuse_prefix(ctx, &mut cache, seq, shared);
            stats
                .cached_prompt_tokens
                .fetch_add(reused as u64, Ordering::Relaxed);
            slots[seq] = Some(admit(prepared, seq as i32, reused, &safeguards));
        }

        let active = slots.iter().flatten().count();
        stats.active.store(active as u64, Ordering::Relaxed);
        stats.waiting.store(waiting.len() as u64, Ordering::Relaxed);

        // 3. Build one batch: the next token of each generating sequence, then prompt
        // chunks (fewer while sequences are generating, so their streams do not stall).
        batch.clear();
        for slot in slots.iter_mut().flatten() {
            slot.logits_at = None;
            if let Some(token) = slot.next.take() {
                slot.logits_at = Some(batch.n_tokens());
                batch
                    .add(token, slot.n_past as i32, &[slot.seq], true)
                    .expect("one token per slot fits the batch");
                slot.n_past += 1;
                slot.history.push(token.0);
            }
        }
        let generating = batch.n_tokens() as usize;
        let capacity = if generating == 0 {
            config.batch as usize
        } else {
            (generating + config.prompt_chunk as usize).min(config.batch as usize)
        };
        for slot in slots.iter_mut().flatten() {
            while slot.ingested < slot.prompt.len() && (batch.n_tokens() as usize) < capacity {
                let last = slot.ingested + 1 == slot.prompt.len();
                if last {
                    slot.logits_at = Some(batch.n_tokens());
                }
                batch
                    .add(
                        slot.prompt[slot.ingested],
                        slot.n_past as i32,
                        &[slot.seq],
                        last,
                    )
                    .expect("bounded by capacity");
                slot.history.push(slot.prompt[slot.ingested].0);
                slot.ingested += 1;
                slot.n_past += 1;
                stats.prompt_tokens.fetch_add(1, Ordering::Relaxed);
            }
        }
        if batch.n_tokens() == 0 {
            continue;
        }

        // 4. Decode.
        let started = std::time::Instant::now();
        let decoded = ctx.decode(&mut batch);
        tracing::debug!(
            tokens = batch.n_tokens(),
            generating,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "decode"
        );
        if let Err(e) = decoded {
            for slot in slots.iter_mut() {
                if let Some(s) = slot.take() {
                    let _ = s
                        .events
                        .send(Event::Failed(GenerateError::Decode(e.to_string())));
                    let _ = ctx.clear_kv_cache_seq(Some(s.seq as u32), None, None);
                    cache.forget(s.seq as usize);
                }
            }
            continue;
        }

        // 5. Sample for every sequence that has logits in this batch.
        for slot_ref in slots.iter_mut() {
            let Some(slot) = slot_ref.as_mut() else {
                continue;
            };
            let Some(at) = slot.logits_at else { continue };
            let guards = slot.safeguards.clone();
            let token = match &guards.watermark {
                Some(w) => sample_watermarked(ctx, at, slot, w, &mut buffers),
                None => slot.sampler.sample(ctx, at),
            };
            slot.remember(token);
            let finished = if vocab.is_eog(token) {
                Some((FinishReason::Stop, None))
            } else {
                slot.generated += 1;
                stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                let piece = vocab.token_to_piece(token, false, None);
                let text = slot.utf8.push(&piece);
                let outcome = slot.stop.push(&text);
                if let Some(rule) = slot.emit(outcome.emit) {
                    Some((FinishReason::ContentFilter, Some(rule)))
                } else if outcome.stopped {
                    Some((FinishReason::Stop, None))
                } else if slot.generated >= slot.max_tokens || slot.n_past + 1 >= config.ctx {
                    Some((FinishReason::Length, None))
                } else {
                    slot.next = Some(token);
                    None
                }
            };
            if let Some((reason, rule)) = finished {
                let mut s = slot_ref.take().unwrap();
                s.finish(reason, rule);
                if !cache.keep(s.seq as usize, std::mem::take(&mut s.history)) {
                    let _ = ctx.clear_kv_cache_seq(Some(s.seq as u32), None, None);
                }
            }
        }
    }
}

fn end_all(
    slots: &mut [Option<Slot>],
    waiting: VecDeque<GenerateRequest>,
    error: GenerateError,
    end: SessionEnd,
) -> SessionEnd {
    for slot in slots.iter_mut() {
        if let Some(s) = slot.take() {
            let _ = s.events.send(Event::Failed(error.clone()));
        }
    }
    for req in waiting {
        let _ = req.events.send(Event::Failed(error.clone()));
    }
    end
}

/// Find the tensors llama.cpp copied into its own buffers and, if `release`, punch their
/// memfd pages (runtime::residency).
fn release_copied(
    weights: &DecryptedWeights,
    model: &LlamaModel,
    threads: i32,
    release: bool,
) -> Result<residency::Placement, String> {
    let tensors = crate::sys::gguf_tensor_table(&weights.path())?;
    let reads = crate::sys::weights_read_by_one_decode(model, threads)?;
    let inode = weights.inode().map_err(|e| e.to_string())?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let mappings = residency::mappings_of(&maps, inode, "/memfd:leasehold-weights");
    let page = rustix::param::page_size() as u64;
    let mut placement = residency::placement(&tensors, &reads, &mappings, page);
    if !release {
        placement.releasable.clear();
        return Ok(placement);
    }
    weights
        .release(&placement.releasable)
        .map_err(|e| format!("punching the memfd failed: {e}"))?;
    Ok(placement)
}
