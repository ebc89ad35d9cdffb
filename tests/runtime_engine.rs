//! The engine and the in-memory weights, on a tiny random-weight llama model sealed in
//! the test: loading through a memfd, batching, cancellation, unload and wipe.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gguf::{tiny_llama, tiny_llama_q4_0, tiny_sliding_window};
use leasehold::crypto::ContentKey;
use leasehold::runtime::engine::{
    ChatMessage, Engine, EngineConfig, Event, FinishReason, GenerateError, GenerateRequest,
    LoadReport, Prompt, Repack, SamplingParams,
};
use leasehold::runtime::safeguards::Safeguards;
use leasehold::runtime::weights::DecryptedWeights;
use leasehold::seal::{self, SealedModel};
use tempfile::TempDir;
use tokio::sync::mpsc;

struct Sealed {
    _dir: TempDir,
    path: std::path::PathBuf,
    key: ContentKey,
    plaintext: Vec<u8>,
}

fn sealed_tiny() -> Sealed {
    sealed_model(tiny_llama(1))
}

fn sealed_model(plaintext: Vec<u8>) -> Sealed {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, &plaintext).unwrap();
    let path = dir.path().join("tiny.sealed");
    let key = ContentKey::generate();
    seal::seal_file(
        &model,
        "tiny",
        &path,
        &key,
        4096,
        &seal::no_progress,
        || Ok(()),
    )
    .unwrap();
    std::fs::remove_file(&model).unwrap();
    Sealed {
        _dir: dir,
        path,
        key,
        plaintext,
    }
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: Some(1),
        stop: vec![],
    }
}

fn chat(text: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: text.into(),
    }])
}

/// Submit and collect: (text, finish reason, prompt tokens, completion tokens) or the error.
async fn complete(
    engine: &Engine,
    prompt: Prompt,
    params: SamplingParams,
) -> Result<(String, FinishReason, u32, u32), GenerateError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt,
            params,
            events: tx,
        })
        .unwrap();
    let mut text = String::new();
    let mut started = false;
    while let Some(e) = rx.recv().await {
        match e {
            Event::Started { .. } => started = true,
            Event::Text(t) => {
                assert!(started, "text before Started");
                text.push_str(&t)
            }
            Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                ..
            } => return Ok((text, reason, prompt_tokens, completion_tokens)),
            Event::Failed(e) => return Err(e),
        }
    }
    panic!("engine dropped the request");
}

async fn loaded_engine(sealed: &Sealed, parallel: u32) -> Engine {
    let config = EngineConfig {
        ctx: 256,
        threads: 2,
        parallel,
        batch: 128,
        ..EngineConfig::default()
    };
    engine_with(sealed, config).await.0
}

/// An engine with `config` that has loaded `sealed`, and its load report.
async fn engine_with(sealed: &Sealed, config: EngineConfig) -> (Engine, LoadReport) {
    let engine = Engine::start(config).unwrap();
    let report = engine
        .load(
            sealed.path.clone(),
            sealed.key.clone(),
            Arc::new(Safeguards::none()),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    (engine, report)
}

#[test]
fn weights_are_decrypted_into_an_anonymous_memfd_and_wiped() {
    let sealed = sealed_tiny();
    let opened = SealedModel::open(&sealed.path).unwrap();
    let weights = DecryptedWeights::decrypt(&opened, &sealed.key, &seal::no_progress).unwrap();
    let path = weights.path();
    assert!(path.starts_with("/proc/self/fd"));
    let link = std::fs::read_link(&path).unwrap();
    assert!(
        link.to_string_lossy()
            .starts_with("/memfd:leasehold-weights"),
        "{link:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), sealed.plaintext);
    weights.wipe();
    assert!(std::fs::read_link(&path)
        .map_or(true, |l| !l.to_string_lossy().contains("leasehold-weights")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_generates_with_usage_and_respects_max_tokens() {
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 2).await;
    let (text, reason, prompt_tokens, completion_tokens) =
        complete(&engine, chat("hello"), greedy(12)).await.unwrap();
    assert!(
        prompt_tokens > 5,
        "ChatML markers and the message: {prompt_tokens}"
    );
    assert!(completion_tokens <= 12);
    if reason == FinishReason::Length {
        assert_eq!(completion_tokens, 12);
    }
    assert!(!text.is_empty() || reason == FinishReason::Stop);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sequences_match_their_sequential_results() {
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 4).await;
    batched_equals_sequential(&engine).await;
}

/// Prompts that arrive while others generate are fed 2 tokens per decode call (and
/// 128 when nothing generates): the answers are still those of one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_fed_in_small_chunks_beside_running_streams_give_the_same_answers() {
    let sealed = sealed_tiny();
    let config = EngineConfig {
        ctx: 256,
        threads: 2,
        parallel: 4,
        batch: 128,
        prompt_chunk: 2,
        ..EngineConfig::default()
    };
    let (engine, _) = engine_with(&sealed, config).await;
    batched_equals_sequential(&engine).await;
}

/// A prompt that begins like an earlier one decodes only what differs: the finished
/// sequence's KV cells still hold the shared tokens (runtime::prefix_cache), generated
/// ones included (a chat's next turn). The answers are those of a fresh engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_decoded_once_and_the_answers_do_not_change() {
    use std::sync::atomic::Ordering;
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 2).await;
    let system = "the same system prompt, every time. ";
    let first_prompt = format!("{system}first question");
    let first = complete(&engine, Prompt::Text(first_prompt.clone()), greedy(8))
        .await
        .unwrap();
    let cached = || engine.stats().cached_prompt_tokens.load(Ordering::Relaxed);
    let before = cached();
    let prompts = [
        // The next turn: the first prompt, its answer, and more.
        format!("{first_prompt}{} and then?", first.0),
        format!("{system}second question"),
    ];
    // Nine tenths of the first prompt (its last tokens merge with what follows, and the
    // tiny model's answer is bytes that tokenize differently as text, so its own tokens
    // are not matched here), then at least the system prompt's tokens.
    let mut answers = Vec::new();
    for (p, least) in prompts.iter().zip([u64::from(first.2) * 9 / 10, 10]) {
        let before = cached();
        answers.push(
            complete(&engine, Prompt::Text(p.clone()), greedy(8))
                .await
                .unwrap(),
        );
        let reused = cached() - before;
        assert!(
            reused >= least,
            "{reused} prompt tokens reused for {p:?} (first prompt: {} tokens, this one {})",
            first.2,
            answers.last().unwrap().2
        );
    }
    assert!(cached() > before);
    engine.shutdown();
    for (p, cached_answer) in prompts.iter().zip(&answers) {
        let fresh = loaded_engine(&sealed, 2).await;
        let alone = complete(&fresh, Prompt::Text(p.clone()), greedy(8))
            .await
            .unwrap();
        assert_eq!(&alone, cached_answer, "{p:?}");
        fresh.shutdown();
    }
}

/// With sliding-window layers (Gemma 3's kind) a finished sequence's prefix is reused
/// while those layers still hold every cell the next token attends to, and decoded
/// afresh once the sequence has grown past its window cache and the cells it needs are
/// overwritten. The answers are a fresh engine's either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_model_reuses_a_prefix_only_while_its_window_is_held() {
    use std::sync::atomic::Ordering;
    let sealed = sealed_model(tiny_sliding_window(5, 16));
    // One sequence, 512 tokens; the windowed layers' cache has 256 cells (llama.cpp:
    // window + batch, rounded up to 256), so a sequence of 300 tokens overwrites its
    // oldest cells.
    let config = EngineConfig {
        ctx: 512,
        threads: 2,
        parallel: 1,
        batch: 128,
        ..EngineConfig::default()
    };
    let (engine, _) = engine_with(&sealed, config.clone()).await;
    let cached = || engine.stats().cached_prompt_tokens.load(Ordering::Relaxed);
    let long: String = (0..300)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let mut runs = Vec::new();
    for (prompt, reused) in [
        ("a short first prompt".to_string(), None),
        // Nothing has left the window cache yet: the shared tokens are reused.
        ("a short second prompt".to_string(), Some(10..=30)),
        (long.clone(), None),
        // After 300 tokens, going on at 290 needs the cells of 274..290: still held.
        (format!("{}and so on", &long[..290]), Some(250..=400)),
        // Going on at 40 needs 24..40, overwritten by then: decoded afresh.
        (format!("{}and so on", &long[..40]), Some(0..=0)),
    ] {
        let before = cached();
        let answer = complete(&engine, Prompt::Text(prompt.clone()), greedy(4))
            .await
            .unwrap();
        let got = cached() - before;
        if let Some(expected) = reused {
            assert!(
                expected.contains(&got),
                "{got} tokens reused for a prompt of {} ({} bytes), expected {expected:?}",
                answer.2,
                prompt.len()
            );
            runs.push((prompt, answer));
        }
    }
    engine.shutdown();
    for (prompt, answer) in runs {
        let (fresh, _) = engine_with(&sealed, config.clone()).await;
        let alone = complete(&fresh, Prompt::Text(prompt.clone()), greedy(4))
            .await
            .unwrap();
        assert_eq!(alone, answer, "{} bytes", prompt.len());
        fresh.shutdown();
    }
}

async fn batched_equals_sequential(engine: &Engine) {
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("request number {i} says {}", "x".repeat(i)))
        .collect();
    let mut sequential = Vec::new();
    for p in &prompts {
        sequential.push(complete(engine, chat(p), greedy(16)).await.unwrap());
    }
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let engine = engine.clone();
            let p = p.clone();
            tokio::spawn(async move { complete(&engine, chat(&p), greedy(16)).await.unwrap() })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let concurrent = h.await.unwrap();
        assert_eq!(
            concurrent, sequential[i],
            "request {i} differs when batched with others"
        );
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_does_not_stall_the_others() {
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 2).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt: chat("long one"),
            params: greedy(200),
            events: tx,
        })
        .unwrap();
    // Wait for it to start, then walk away.
    assert!(matches!(rx.recv().await, Some(Event::Started { .. })));
    drop(rx);
    let others: Vec<_> = (0..3)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(
                async move { complete(&engine, chat(&format!("other {i}")), greedy(8)).await },
            )
        })
        .collect();
    for h in others {
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_ends_running_requests_and_a_reload_serves_again() {
    let sealed = sealed_tiny();
    // A long context and answer, so the request is mid-generation when the unload comes.
    let engine = Engine::start(EngineConfig {
        ctx: 2048,
        threads: 2,
        parallel: 2,
        batch: 128,
        ..EngineConfig::default()
    })
    .unwrap();
    let load = |engine: &Engine| {
        engine.load(
            sealed.path.clone(),
            sealed.key.clone(),
            Arc::new(Safeguards::none()),
            None,
        )
    };
    load(&engine).await.unwrap().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt: Prompt::Text("keep going".into()),
            params: greedy(1800),
            events: tx,
        })
        .unwrap();
    assert!(matches!(rx.recv().await, Some(Event::Started { .. })));
    assert!(
        matches!(rx.recv().await, Some(Event::Text(_))),
        "generating"
    );
    engine.unload().await.unwrap();
    let mut texts = 1;
    let mut last = None;
    while let Some(e) = rx.recv().await {
        texts += usize::from(matches!(e, Event::Text(_)));
        last = Some(e);
    }
    assert_eq!(
        last,
        Some(Event::Failed(GenerateError::LicenseExpired)),
        "the running request is ended by the unload, after {texts} pieces"
    );
    assert!(texts < 1800);
    assert_eq!(
        complete(&engine, chat("after"), greedy(4))
            .await
            .unwrap_err(),
        GenerateError::LicenseExpired
    );
    load(&engine).await.unwrap().unwrap();
    complete(&engine, chat("again"), greedy(4)).await.unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_longer_than_the_context_is_refused_before_starting() {
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 1).await;
    let long = "word ".repeat(400);
    let err = complete(&engine, Prompt::Text(long), greedy(4))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GenerateError::PromptTooLong { limit: 256, .. }),
        "{err:?}"
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_end_generation_without_emitting_the_stop() {
    let sealed = sealed_tiny();
    let engine = loaded_engine(&sealed, 1).await;
    let (free, _, _, _) = complete(&engine, Prompt::Text("abc".into()), greedy(40))
        .await
        .unwrap();
    // Stop at a piece of what greedy decoding produces anyway.
    let chars: Vec<char> = free.chars().collect();
    assert!(
        chars.len() >= 6,
        "greedy decoding of the tiny model must give some text to stop in: {free:?}"
    );
    let stop: String = chars[3..5].iter().collect();
    let mut params = greedy(40);
    params.stop = vec![stop.clone()];
    let (text, reason, _, _) = complete(&engine, Prompt::Text("abc".into()), params)
        .await
        .unwrap();
    assert_eq!(reason, FinishReason::Stop);
    assert!(!text.contains(&stop));
    assert!(free.starts_with(&text));
    engine.shutdown();
}

/// llama.cpp's x86 CPU kernels copy Q4_0 matrices into repacked layouts while loading; the
/// decrypted memfd pages they replace are released, so the weights are held once, and
/// the answers are the same as with those pages kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repacked_weights_are_held_once_and_the_answers_do_not_change() {
    let sealed = sealed_model(tiny_llama_q4_0(3));
    let mut answers = Vec::new();
    for repack in [Repack::KeepPages, Repack::Release] {
        let config = EngineConfig {
            ctx: 256,
            threads: 1,
            parallel: 1,
            batch: 64,
            repack,
            ..EngineConfig::default()
        };
        let (engine, report) = engine_with(&sealed, config).await;
        // The layers' matrices (2 x 368,640 bytes) are repacked; the embeddings and the
        // output matrix (263 rows) are used in place.
        assert!(report.copied >= 700_000, "{repack:?}: {}", report.copied);
        assert!(report.in_place >= 2 * 263 * 8 * 18, "{}", report.in_place);
        if repack == Repack::Release {
            // Whole pages inside the one run of repacked matrices.
            assert!(
                report.released + 2 * 4096 >= report.copied && report.released <= report.copied,
                "released {} of {} copied",
                report.released,
                report.copied
            );
        } else {
            assert_eq!(report.released, 0);
        }
        let (text, ..) = complete(&engine, Prompt::Text("hello world".into()), greedy(24))
            .await
            .unwrap();
        answers.push(text);
        engine.unload().await.unwrap();
        engine.shutdown();
    }
    assert!(!answers[0].is_empty());
    assert_eq!(
        answers[0], answers[1],
        "releasing the pages changed the answer"
    );
}
