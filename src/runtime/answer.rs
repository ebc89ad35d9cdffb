//! Answering one request: the one path every answer takes, whether it goes out as
//! server-sent events, as a JSON body, or to `run`'s terminal.
//!
//! license phase → caps → queue bound → the engine → a durable `admitted` record before
//! any of the answer leaves (write-ahead) → the answer's pieces → a durable `completed`
//! record before its end leaves. A request dropped unfinished (the client went away) is
//! recorded `cancelled` from the drop itself, so no path escapes its record; one cut by
//! `kill -9` keeps its `admitted` record (an *interrupted* request in `audit report`).
//! Requests turned down before admission get one `request` record with the refusal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::caps::{CapExceeded, CapGate, Permit};
use super::engine::SamplingParams;
use super::engine::{Engine, Event, FinishReason, GenerateError, GenerateRequest, Prompt};
use super::lifecycle::Lifecycle;
use crate::format::encoding::Digest;
use crate::ledger::record::{Entry, Outcome, RefusalCode};
use crate::ledger::Ledger;

/// One request to answer.
pub struct Question {
    /// The response's `id`, and the ledger's request id.
    pub request_id: String,
    /// Short id of the client's API key (`-` without keys, `cli` for `run`).
    pub client_key: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// With `--ledger-prompt-hash`: the salted prompt hash for the ledger.
    pub prompt_sha256: Option<Digest>,
}

/// Why a request was not answered, or not to its end. Each is recorded before it is
/// returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stopped {
    #[error("{}", GenerateError::LicenseExpired)]
    Lapsed,
    #[error("{0}")]
    Cap(CapExceeded),
    #[error("{waiting} requests already wait for a sequence slot (serve --queue {limit}); retry shortly")]
    QueueFull { waiting: usize, limit: usize },
    #[error("{0}")]
    Engine(GenerateError),
    #[error("the engine ended the request without a result")]
    EngineStopped,
    #[error("the usage ledger cannot record this request ({0}); the node answers nothing it cannot record")]
    Ledger(String),
}

impl Stopped {
    /// The ledger's refusal code (also the HTTP error's `code`).
    pub fn code(&self) -> RefusalCode {
        match self {
            Stopped::Lapsed => RefusalCode::LicenseExpired,
            Stopped::Cap(_) => RefusalCode::LicenseCapExceeded,
            Stopped::QueueFull { .. } => RefusalCode::QueueFull,
            Stopped::Engine(e) => refusal_code(e),
            Stopped::EngineStopped => RefusalCode::EngineStopped,
            Stopped::Ledger(_) => RefusalCode::EngineUnavailable,
        }
    }
}

/// The ledger's code for an engine error.
pub fn refusal_code(e: &GenerateError) -> RefusalCode {
    match e {
        GenerateError::LicenseExpired => RefusalCode::LicenseExpired,
        GenerateError::PromptTooLong { .. } => RefusalCode::ContextLengthExceeded,
        GenerateError::EmptyPrompt => RefusalCode::EmptyPrompt,
        GenerateError::ShuttingDown => RefusalCode::EngineUnavailable,
        GenerateError::Template(_) | GenerateError::Decode(_) => RefusalCode::EngineError,
    }
}

/// A piece of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// The end; its `completed` record is durable.
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        filter_rule: Option<String>,
    },
}

/// Requests, prompt tokens and completion tokens per outcome since start (`/metrics`).
#[derive(Debug, Default)]
pub struct UsageCounters(Mutex<BTreeMap<Outcome, [u64; 3]>>);

impl UsageCounters {
    fn count(&self, outcome: Outcome, prompt_tokens: u32, completion_tokens: u32) {
        let mut map = self.0.lock().unwrap();
        let c = map.entry(outcome).or_default();
        c[0] += 1;
        c[1] += u64::from(prompt_tokens);
        c[2] += u64::from(completion_tokens);
    }

    pub fn snapshot(&self) -> BTreeMap<Outcome, [u64; 3]> {
        self.0.lock().unwrap().clone()
    }
}

/// A cap refusal as logged: which cap, and when its window resets.
type LoggedCap = (&'static str, Option<DateTime<Utc>>);

/// Answers requests for one node: its license, engine, ledger and caps.
pub struct Answerer {
    lifecycle: Arc<Lifecycle>,
    engine: Engine,
    /// `None` only with `serve --no-ledger` (demo-root benchmarks).
    ledger: Option<Arc<Ledger>>,
    caps: CapGate,
    /// Requests submitted and not yet given a sequence slot, and the most allowed.
    waiting: Arc<AtomicUsize>,
    queue_limit: usize,
    counters: UsageCounters,
    /// The last cap refusal logged (cap, reset), so each is logged once per window.
    last_cap: Mutex<Option<LoggedCap>>,
}

impl Answerer {
    /// `ledger_bytes` is the ledger as opened (empty without one): the caps' counts
    /// so far are taken from it, at trusted time.
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        engine: Engine,
        ledger: Option<Arc<Ledger>>,
        ledger_bytes: &[u8],
        queue_limit: usize,
    ) -> Arc<Answerer> {
        let caps = CapGate::new(super::caps::windows_from_ledger(
            ledger_bytes,
            lifecycle.clock().now(),
        ));
        Arc::new(Answerer {
            lifecycle,
            engine,
            ledger,
            caps,
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_limit,
            counters: UsageCounters::default(),
            last_cap: Mutex::new(None),
        })
    }

    pub fn caps(&self) -> &CapGate {
        &self.caps
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    pub fn counters(&self) -> &UsageCounters {
        &self.counters
    }

    /// Requests waiting for a sequence slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn now(&self) -> DateTime<Utc> {
        self.lifecycle.clock().now()
    }

    async fn append(&self, entry: Entry) -> Result<(), Stopped> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        ledger
            .append(entry)
            .await
            .map(|_| ())
            .map_err(|e| Stopped::Ledger(e.to_string()))
    }

    /// Record a request turned down before admission and return why.
    async fn refuse(&self, question: &Question, why: Stopped) -> Stopped {
        let outcome = Outcome::Refused(why.code());
        self.counters.count(outcome, 0, 0);
        let license = self.lifecycle.status().license.body;
        let entry = Entry::Request {
            request_id: question.request_id.clone(),
            license_id: license.license_id,
            model_id: license.model.model_id,
            prompt_tokens: 0,
            completion_tokens: 0,
            outcome,
            client_key: question.client_key.clone(),
            prompt_sha256: question.prompt_sha256,
            filter_rule: None,
        };
        match self.append(entry).await {
            Ok(()) => why,
            Err(ledger) => ledger,
        }
    }

    fn log_cap(&self, e: &CapExceeded) {
        let key = (e.cap, e.resets_at);
        let mut last = self.last_cap.lock().unwrap();
        if last.as_ref() != Some(&key) {
            tracing::warn!(
                cap = e.cap,
                limit = e.limit,
                resets_at = ?e.resets_at,
                "license cap reached: {e}; requests over it are refused with 429 until it resets"
            );
            *last = Some(key);
        }
    }

    /// Admit `question` and start its answer. Returns once the engine has admitted it
    /// and its `admitted` record is durable, or with the recorded refusal.
    pub async fn begin(self: &Arc<Self>, question: Question) -> Result<Answer, Stopped> {
        if !self.lifecycle.phase().serves() {
            return Err(self.refuse(&question, Stopped::Lapsed).await);
        }
        let caps = self.lifecycle.status().license.body.caps;
        let permit = match self.caps.admit(&caps, self.now()) {
            Ok(permit) => permit,
            Err(exceeded) => {
                self.log_cap(&exceeded);
                return Err(self.refuse(&question, Stopped::Cap(exceeded)).await);
            }
        };
        let Some(queued) = QueueSlot::take(&self.waiting, self.queue_limit) else {
            let why = Stopped::QueueFull {
                waiting: self.waiting(),
                limit: self.queue_limit,
            };
            return Err(self.refuse(&question, why).await);
        };
        let (events, mut rx) = mpsc::unbounded_channel();
        let request = GenerateRequest {
            prompt: question.prompt.clone(),
            params: question.params.clone(),
            events,
        };
        if let Err(e) = self.engine.submit(request) {
            let why = Stopped::Engine(GenerateError::ShuttingDown);
            tracing::error!("{e}");
            return Err(self.refuse(&question, why).await);
        }
        // The engine answers Started (a slot, the prompt tokenized) or Failed first.
        let prompt_tokens = match rx.recv().await {
            Some(Event::Started { prompt_tokens }) => prompt_tokens,
            Some(Event::Failed(e)) => return Err(self.refuse(&question, Stopped::Engine(e)).await),
            _ => return Err(self.refuse(&question, Stopped::EngineStopped).await),
        };
        drop(queued);
        let license = self.lifecycle.status().license.body;
        let record = Record {
            answerer: self.clone(),
            request_id: question.request_id,
            prompt_tokens,
            completion_tokens: 0,
            done: false,
            _permit: permit,
        };
        self.caps.record(self.now(), u64::from(prompt_tokens));
        // Write-ahead: nothing of the answer leaves before this record is on disk.
        let admitted = self
            .append(Entry::Admitted {
                request_id: record.request_id.clone(),
                license_id: license.license_id,
                model_id: license.model.model_id,
                prompt_tokens: u64::from(prompt_tokens),
                client_key: question.client_key,
                prompt_sha256: question.prompt_sha256,
            })
            .await;
        match admitted {
            Ok(()) => Ok(Answer { rx, record }),
            Err(e) => {
                let mut record = record;
                record.done = true; // nothing to complete: the ledger took nothing
                Err(e)
            }
        }
    }
}

/// A place in the queue of requests waiting for a sequence slot; given back on drop.
struct QueueSlot(Arc<AtomicUsize>);

impl QueueSlot {
    fn take(waiting: &Arc<AtomicUsize>, limit: usize) -> Option<QueueSlot> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot(waiting.clone()))
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `completed` record of an admitted request, written once: from the answer's end,
/// or from the drop (`cancelled`) when the answer is abandoned.
struct Record {
    answerer: Arc<Answerer>,
    request_id: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    done: bool,
    /// The concurrency slot, held until the record is written.
    _permit: Permit,
}

impl Record {
    fn entry(&mut self, outcome: Outcome, filter_rule: Option<String>) -> Entry {
        self.done = true;
        let a = &self.answerer;
        a.counters
            .count(outcome, self.prompt_tokens, self.completion_tokens);
        a.caps
            .record_tokens(a.now(), u64::from(self.completion_tokens));
        Entry::Completed {
            request_id: self.request_id.clone(),
            completion_tokens: u64::from(self.completion_tokens),
            outcome,
            filter_rule,
        }
    }

    async fn complete(
        &mut self,
        outcome: Outcome,
        filter_rule: Option<String>,
    ) -> Result<(), Stopped> {
        let entry = self.entry(outcome, filter_rule);
        self.answerer.append(entry).await
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let entry = self.entry(Outcome::Cancelled, None);
        let answerer = self.answerer.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = answerer.append(entry).await {
                    tracing::error!("cannot record a cancelled request in the usage ledger: {e}");
                }
            });
        }
    }
}

/// An admitted request's answer, piece by piece. Dropping it unfinished cancels the
/// generation and records the request `cancelled`.
pub struct Answer {
    rx: mpsc::UnboundedReceiver<Event>,
    record: Record,
}

impl Answer {
    pub fn prompt_tokens(&self) -> u32 {
        self.record.prompt_tokens
    }

    /// The next piece; `Ok(None)` after `Finished`. An `Err` ended the answer and is
    /// recorded.
    pub async fn next(&mut self) -> Result<Option<Piece>, Stopped> {
        if self.record.done {
            return Ok(None);
        }
        loop {
            match self.rx.recv().await {
                Some(Event::Text(t)) => {
                    self.record.completion_tokens += 1;
                    return Ok(Some(Piece::Text(t)));
                }
                Some(Event::Started { .. }) => {}
                Some(Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    filter_rule,
                }) => {
                    self.record.completion_tokens = completion_tokens;
                    let outcome = match reason {
                        FinishReason::ContentFilter => {
                            tracing::warn!(
                                "request {}: the license's output filter ({}) ended the answer; the matched text was not sent",
                                self.record.request_id,
                                filter_rule.as_deref().unwrap_or("a rule")
                            );
                            Outcome::Filtered
                        }
                        FinishReason::Stop | FinishReason::Length => Outcome::Ok,
                    };
                    // The end of the answer goes out only once its record is durable.
                    self.record.complete(outcome, filter_rule.clone()).await?;
                    return Ok(Some(Piece::Finished {
                        reason,
                        prompt_tokens,
                        completion_tokens,
                        filter_rule,
                    }));
                }
                Some(Event::Failed(e)) => {
                    let why = Stopped::Engine(e);
                    self.record
                        .complete(Outcome::Refused(why.code()), None)
                        .await?;
                    return Err(why);
                }
                None => {
                    self.record
                        .complete(Outcome::Refused(RefusalCode::EngineStopped), None)
                        .await?;
                    return Err(Stopped::EngineStopped);
                }
            }
        }
    }
}
