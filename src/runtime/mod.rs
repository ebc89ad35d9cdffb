//! The runtime: everything between a verified license and tokens leaving the node.
//!
//! - [`backends`]: llama.cpp's libraries checked against this build, and the CPU
//!   kernels for this machine.
//! - [`maps`]: lines of /proc/self/maps, for the library check and the residency.
//! - [`weights`]: decrypted weights in an anonymous memfd, and their wipe.
//! - [`residency`]: the weights held once: memfd pages of tensors llama.cpp copied
//!   (repacked) are released after loading.
//! - [`engine`]: the one thread that owns llama.cpp (model, context, batching).
//! - [`lifecycle`]: the license state machine (serving, grace, lapsed) on the
//!   monotonic clock, renewal without restart.
//! - [`renewal`]: the node's side of the license server protocol: first license,
//!   renewal requests, verified answers.
//! - `renewer`: automatic renewal while serving, with backoff, obeying revocations.
//! - [`checkpoints`]: the usage ledger's position reported to the license server every
//!   checkpoint interval between renewals, so a restored backup is seen online.
//! - [`answer`]: the one path every answer takes: phase, caps, queue, engine, and the
//!   usage ledger's write-ahead `admitted` and `completed` records.
//! - [`caps`]: license caps (per day, per month, concurrent) enforced from the ledger.
//! - [`sampling`]: greedy, temperature and (for the tournament watermark) nucleus sampling
//!   straight from the logits.
//! - [`prefix_cache`]: prompt prefixes kept in the KV cache across requests.
//! - [`text`]: UTF-8 and stop-sequence handling of generated text.
//! - [`output_filter`]: the streaming-safe output filter (terms and bounded patterns).
//! - [`safeguards`]: the watermark and output filter a license mandates, for the engine.
//!
//! The runtime never writes plaintext weights to storage.
//!
//! Without the `inference` feature (no llama.cpp) only what the vendor's, the
//! auditor's and the node's offline commands need is built: admission, caps, renewal
//! requests, the output filter, text and the memfd weights.

pub mod admission;
#[cfg(feature = "inference")]
pub mod answer;
#[cfg(feature = "inference")]
pub mod backends;
pub mod caps;
#[cfg(feature = "inference")]
pub mod checkpoints;
#[cfg(feature = "inference")]
pub mod engine;
#[cfg(feature = "inference")]
pub mod lifecycle;
pub mod maps;
pub mod output_filter;
pub mod prefix_cache;
pub mod renewal;
#[cfg(feature = "inference")]
pub mod renewer;
#[cfg(feature = "inference")]
pub mod residency;
pub mod safeguards;
#[cfg(feature = "inference")]
pub mod sampling;
pub mod text;
pub mod weights;
